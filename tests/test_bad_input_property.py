"""Property: random bad arguments to random entry points on random caches change nothing.

A cache (device or tiered, page size 1 or 4, manual acks or not) gets a random history of
requests, matches, locks, evictions and (tiered) acks and load-backs. Then one entry point is
called with an argument that is wrong in a random way: a token id out of range or of the wrong
type, a count that is negative, a float, a bool or None, a node of another cache or not a node,
slots a tree node owns, a request with one field wrong, a lock that is not the caller's. The call
must raise a project ValueError, and the fingerprint of the whole state (pools' free lists, owners
and bytes, host side, queues, in-flight maps, counters, LRU lists), invariants and integrity
must be exactly as before.
"""

from __future__ import annotations

import torch
from fingerprint import assert_rejected
from helpers import alloc_kv, alloc_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import himamba as hm

BAD_TOKENS = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63, max_value=2**70),
                       st.sampled_from([1.0, None, "7", True, b"x"]))
BAD_COUNTS = st.one_of(st.integers(max_value=-1), st.floats(allow_nan=True), st.sampled_from([True, False, None, "3", [1]]))
NOT_NODES = st.sampled_from([None, 0, "node", object(), [1, 2]])


def _key(cache, data, bad: bool) -> list:
    ps = cache.page_size
    tokens = [t for t in data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=6)) for _ in range(ps)]
    if bad:
        i = data.draw(st.integers(0, len(tokens) - 1))
        tokens[i] = data.draw(BAD_TOKENS)
    return tokens


@st.composite
def caches(draw):
    tiered = draw(st.booleans())
    ps = draw(st.sampled_from([1, 4]))
    manual = tiered and draw(st.booleans())
    cfg = hm.CacheConfig(device="cpu", page_size=ps, device_kv_tokens=24 * ps, host_kv_tokens=64 * ps,
                         device_mamba_slots=6, host_mamba_slots=12, load_back_threshold=1,
                         write_policy=draw(st.sampled_from(["write_through", "write_through_selective"])))
    cache = hm.HiMambaRadixCache(cfg, manual_acks=manual) if tiered else hm.MambaRadixCache(cfg)
    locks = []
    for _ in range(draw(st.integers(2, 10))):
        tokens = [t for t in draw(st.lists(st.integers(0, 5), min_size=1, max_size=6)) for _ in range(ps)]
        step = draw(st.sampled_from(["serve", "serve", "match", "lock", "evict", "events", "load"]))
        if step == "serve":
            hm.serve(cache, tokens)
        elif step == "match":
            cache.match_prefix(tokens)
        elif step == "lock":
            node = cache.match_prefix(tokens).last_device_node
            cache.inc_lock_ref(node)
            locks.append(node)
        elif step == "evict":
            cache.evict(draw(st.integers(0, 8 * ps)))
        elif tiered and step == "events":
            if manual:
                for ack in cache.cache_controller.in_flight()[: draw(st.integers(0, 3))]:
                    cache.cache_controller.complete(ack)
            cache.ready_to_load_host_cache()
            cache.check_hicache_events()
        elif tiered and step == "load":
            cache.init_load_back(cache.match_prefix(tokens).best_match_node)
    return cache, locks


def _other_cache_node(cache):
    other = hm.MambaRadixCache(hm.CacheConfig(device="cpu", page_size=cache.page_size))
    hm.serve(other, [1] * cache.page_size)
    return next(n for n in other.nodes() if n is not other.root_node)


def _tree_node(cache, data):
    nodes = [n for n in cache.nodes() if n is not cache.root_node]
    return data.draw(st.sampled_from(nodes)) if nodes else None


def _request(cache, data, n_tokens: int):
    """A valid request owning fresh slots (or None when the pools are short)."""
    ps = cache.page_size
    tokens = [100 + i // ps for i in range(n_tokens * ps)]
    if cache.kv_pool.available_size() < len(tokens) or cache.mamba_pool.available_size() < 2:
        return None
    return hm.Request(tokens, alloc_kv(cache, tokens, 0), alloc_state(cache, tokens))


# Each bad call: (cache, locks, data) -> (call, requests) or None when this cache cannot host it.
def bad_match(cache, locks, data):
    return (lambda: cache.match_prefix(_key(cache, data, True))), ()


def bad_serve(cache, locks, data):
    return (lambda: hm.serve(cache, _key(cache, data, True))), ()


def bad_evict(cache, locks, data):
    names = ["evict", "evict_mamba"] + (["evict_host", "evict_mamba_host"] if getattr(cache, "tiered", False) else [])
    method, n = getattr(cache, data.draw(st.sampled_from(names))), data.draw(BAD_COUNTS)
    return (lambda: method(n)), ()


def bad_lock_node(cache, locks, data):
    node = data.draw(st.one_of(NOT_NODES, st.just(_other_cache_node(cache))))
    method = getattr(cache, data.draw(st.sampled_from(["inc_lock_ref", "dec_lock_ref"])))
    return (lambda: method(node)), ()


def unlocked_release(cache, locks, data):
    node = _tree_node(cache, data)
    if node is None or node.full_lock_ref > 0 or node.evicted_lock_ref > 0 or node.value is None:
        return None
    return (lambda: cache.dec_lock_ref(node)), ()


def controller_lock_release(cache, locks, data):
    """Release a lock only a load or a write in flight holds."""
    if not getattr(cache, "tiered", False):
        return None
    holders = [*cache.ongoing_load_back.values(),
               *(cache.ongoing_write_through[i] for i in cache._locked_writes if i in cache.ongoing_write_through)]
    if not holders or any(n in holders for n in locks):
        return None
    node = data.draw(st.sampled_from(holders))
    if any(x is node or _is_ancestor(x, node) for x in locks):
        return None
    return (lambda: cache.dec_lock_ref(node)), ()


def _is_ancestor(x, node) -> bool:
    while x is not None:
        if x is node:
            return True
        x = x.parent
    return False


def bad_insert(cache, locks, data):
    ps = cache.page_size
    tokens = [200 + i // ps for i in range(2 * ps)]
    if cache.kv_pool.available_size() < len(tokens) or cache.mamba_pool.available_size() < 1:
        return None
    kv, slot = alloc_kv(cache, tokens, 0), alloc_state(cache, tokens)
    owned = [n for n in cache.nodes() if n is not cache.root_node and n.value is not None and len(n.value) >= 2 * ps]
    states = [n for n in cache.nodes() if n.mamba_value is not None]
    how = data.draw(st.sampled_from(["prev float", "prev range", "fresh as tree's", "owned kv", "owned state",
                                     "tree slots off the path", "token"]))
    prev, value, state, key = 0, kv, slot, tokens
    if how == "prev float":
        prev = data.draw(st.sampled_from([0.0, 1.5, "0", None]))
    elif how == "prev range":
        prev = data.draw(st.sampled_from([-1, len(tokens) + 1, 10**9]))
    elif how == "fresh as tree's":
        prev = len(tokens)
    elif how == "owned kv" and owned:
        value = data.draw(st.sampled_from(owned)).value[: 2 * ps]
    elif how == "tree slots off the path" and owned:  # claimed as the tree's, for a key the tree lacks
        value, prev = data.draw(st.sampled_from(owned)).value[: 2 * ps], 2 * ps
    elif how == "owned state" and states:
        state = data.draw(st.sampled_from(states)).mamba_value
    else:
        key = list(tokens)
        key[data.draw(st.integers(0, len(key) - 1))] = data.draw(BAD_TOKENS)
    return (lambda: cache.insert(key, value, state, prev_prefix_len=prev)), ()


def bad_request(cache, locks, data):
    req = _request(cache, data, data.draw(st.integers(1, 3)))
    if req is None:
        return None
    field = data.draw(st.sampled_from(["fill_len", "cache_protected_len", "mamba_pool_idx", "kv_indices",
                                        "token_ids", "last_node", "two slots", "owned state"]))
    if field == "fill_len":
        req.fill_len = data.draw(st.sampled_from([-1, len(req.token_ids) + 1, 1.5, "2"]))
    elif field == "cache_protected_len":
        req.cache_protected_len = data.draw(st.sampled_from([-1, len(req.kv_indices) + 1, 1.0, None, 1]))
    elif field == "mamba_pool_idx":
        req.mamba_pool_idx = data.draw(st.sampled_from([[0], "slot", torch.tensor([0.0])]))
    elif field == "kv_indices":
        req.kv_indices = data.draw(st.sampled_from([req.kv_indices.tolist(), req.kv_indices.float(), None]))
    elif field == "token_ids":
        req.token_ids = data.draw(st.sampled_from([None, "abc", [-1] * len(req.token_ids), [2**63] * len(req.token_ids)]))
    elif field == "last_node":
        req.last_node = data.draw(st.one_of(st.sampled_from(["node", 3]), st.just(_other_cache_node(cache))))
    elif field == "two slots":
        extra = cache.mamba_pool.alloc(1)
        req.mamba_pool_idx = torch.cat((req.mamba_pool_idx, extra))
    else:
        states = [n for n in cache.nodes() if n.mamba_value is not None]
        if not states:
            return None
        req.mamba_pool_idx = data.draw(st.sampled_from(states)).mamba_value.clone()
    if data.draw(st.booleans()):
        return (lambda: cache.cache_finished_req(req)), (req,)
    return (lambda: cache.cache_unfinished_req(req)), (req,)


def bad_pool_call(cache, locks, data):
    pool = data.draw(st.sampled_from([cache.kv_pool, cache.mamba_pool]))
    if data.draw(st.booleans()):
        n = data.draw(st.one_of(BAD_COUNTS, st.integers(1, cache.page_size - 1) if pool.page_size > 1 else st.just(-1)))
        return (lambda: pool.alloc(n)), ()
    owned = [n.value if pool is cache.kv_pool else n.mamba_value for n in cache.nodes()
             if n is not cache.root_node and (n.value if pool is cache.kv_pool else n.mamba_value) is not None]
    free_slot = torch.arange(pool.capacity - pool.page_size, pool.capacity)
    choices = [torch.tensor([pool.capacity]), torch.tensor([-1]), [0], torch.zeros(1)]
    if not bool(pool.allocator.is_allocated(free_slot).any()):
        choices.append(free_slot)
    if owned:  # a tree node's slots named twice
        choices.append(torch.cat((owned[0], owned[0])))
    indices = data.draw(st.sampled_from(choices))
    return (lambda: pool.free(indices)), ()


def bad_host_call(cache, locks, data):
    if not getattr(cache, "tiered", False):
        return None
    method = data.draw(st.sampled_from(["protect_host", "release_host", "init_load_back", "load_back", "write_backup"]))
    node = data.draw(st.one_of(NOT_NODES, st.just(_other_cache_node(cache))))
    if method == "protect_host" and data.draw(st.booleans()):
        candidates = [n for n in cache.nodes() if n.host_value is None or n is cache.root_node]
        node = data.draw(st.sampled_from(candidates))
    if method == "release_host" and data.draw(st.booleans()):
        candidates = [n for n in cache.nodes() if n.host_ref_counter == 0]
        node = data.draw(st.sampled_from(candidates))
    if method in ("init_load_back", "load_back") and data.draw(st.booleans()):
        node = _tree_node(cache, data) or cache.root_node
        quota = data.draw(st.sampled_from([float("nan"), -1, "10", [1]]))
        return (lambda: getattr(cache, method)(node, mem_quota=quota)), ()
    return (lambda: getattr(cache, method)(node)), ()


BAD_CALLS = [bad_match, bad_serve, bad_evict, bad_lock_node, unlocked_release, controller_lock_release,
             bad_insert, bad_request, bad_pool_call, bad_host_call]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(built=caches(), data=st.data())
def test_random_bad_arguments_change_nothing(built, data):
    cache, locks = built
    for _ in range(3):
        made = data.draw(st.sampled_from(BAD_CALLS))(cache, locks, data)
        if made is None:
            continue
        call, requests = made
        assert_rejected(cache, ValueError, call, *requests)
