"""Bad input raises a clear error (a ValueError subclass) and leaves the cache exactly as it was.

Architecture principle 6. "Exactly as it was" is checked with :func:`fingerprint.fingerprint`,
which records the whole observable state (tree, nodes, lists, leaf sets, counters, clock, pools'
free lists, owners and bytes, host side and queues).
"""

from __future__ import annotations

import pytest
import torch
from fingerprint import assert_rejected, fingerprint
from helpers import alloc_kv, alloc_state, assert_healthy, make_cache, node_at, put

import himamba as hm
from himamba.memory.allocator import SlotAllocator


def test_fingerprint_sees_every_kind_of_change():
    """The helper itself must be able to fail: each mutation below changes the fingerprint."""
    cache = populated(1)
    node = node_at(cache, [1, 2, 3, 4])
    mutations = [
        lambda c: c.match_prefix([1, 2, 3, 4, 5, 6]),  # times and LRU order
        lambda c: c.inc_lock_ref(node),  # locks and counters
        lambda c: c.kv_pool.free(c.kv_pool.alloc(1)),  # free-list order only
        lambda c: c.kv_pool.alloc(1),  # pool usage
        lambda c: c.kv_pool.k_buffer.view(-1)[-1].add_(1),  # bytes of a free slot
        lambda c: c.mamba_pool.ssm.view(-1)[-1].add_(1),
        lambda c: c.evict(1),
        lambda c: setattr(node, "hit_count", node.hit_count + 1),
    ]
    for mutate in mutations:
        before = fingerprint(cache)
        mutate(cache)
        assert fingerprint(cache) != before


# -- a cache with some history ---------------------------------------------------------------------


def populated(page_size: int = 1):
    """A cache with shared prefixes, a split-created stateless node, a tombstone and a lock.

    With page size 4 every token list below is read as pages (each token repeated 4 times)."""
    cache = make_cache(page_size=page_size, device_kv_tokens=64 * page_size, device_mamba_slots=12)

    def seq(*tokens):
        return [t for t in tokens for _ in range(page_size)]

    put(cache, seq(1, 2, 3, 4))
    put(cache, seq(1, 2, 3, 4, 5, 6))
    put(cache, seq(1, 2, 7, 8))  # splits [1,2 | 3,4]: the upper node has no state
    put(cache, seq(9, 9, 9))
    put(cache, seq(9, 9, 9, 1))
    cache.match_prefix(seq(9, 1))  # splits [9 | 9,9]
    cache.inc_lock_ref(node_at(cache, seq(1, 2, 7, 8)))
    leaf = node_at(cache, seq(1, 2, 3, 4, 5, 6))
    cache.inc_lock_ref(leaf)  # keep the leaf while its parent loses its state
    assert cache.evict_mamba(1) == 1
    cache.dec_lock_ref(leaf)
    assert node_at(cache, seq(1, 2, 3, 4)).mamba_value is None, cache.tree_text()
    for path in (seq(1, 2), seq(1, 2, 7, 8), seq(9), seq(9, 9, 9), seq(9, 9, 9, 1)):
        node_at(cache, path)
    assert_healthy(cache)
    return cache


@pytest.fixture(params=[1, 4], ids=["ps1", "ps4"])
def cache(request):
    return populated(request.param)


def _seq(cache, *tokens):
    return [t for t in tokens for _ in range(cache.page_size)]


# -- insert ---------------------------------------------------------------------------------------


def test_insert_of_an_empty_key_is_a_no_op(cache):
    """Per the reference, (0, mamba_exist=True). Regression: the allocator's argument check used
    to raise RuntimeError (aminmax of an empty tensor)."""
    slot = alloc_state(cache, [])
    before = fingerprint(cache)
    for key in ([], hm.RadixKey([]), ()):
        result = cache.insert(key, torch.empty(0, dtype=torch.int64), slot)
        assert (result.prefix_len, result.mamba_exist) == (0, True)
    assert fingerprint(cache) == before
    cache.mamba_pool.free(slot)  # mamba_exist: the caller still owns its slot
    assert_healthy(cache)


def test_match_of_an_empty_key_finds_nothing_and_changes_nothing(cache):
    before = fingerprint(cache)
    res = cache.match_prefix([])
    assert res.prefix_len == 0 and res.last_device_node is cache.root_node
    assert fingerprint(cache) == before


def test_insert_empty_key_with_slots_or_without_state_is_rejected(cache):
    kv, slot = alloc_kv(cache, _seq(cache, 5), 0), alloc_state(cache, [5])
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert([], kv, slot), match="slots but the key has 0")
    empty = torch.empty(0, dtype=torch.int64)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert([], empty, None), match="mamba_value")


@pytest.mark.parametrize("delta", [-1, 1, 5])
def test_value_length_must_equal_key_length(cache, delta):
    key = _seq(cache, 1, 2, 3, 4, 11)
    n = len(key) + delta * cache.page_size
    kv, slot = cache.kv_pool.alloc(n), alloc_state(cache, key)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, kv, slot), match=f"value has {n} slots")


def test_unaligned_key_is_rejected_with_page_size_4():
    cache = populated(4)
    key = _seq(cache, 1, 2, 3, 4, 6) + [6, 6]  # 22 tokens
    kv = torch.cat((cache.kv_pool.alloc(20), cache.kv_pool.alloc(4)[:2]))
    slot = alloc_state(cache, key)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, kv, slot), match="not a multiple of the page size 4")


def test_match_truncates_an_unaligned_query_instead_of_failing():
    cache = populated(4)
    res = cache.match_prefix(_seq(cache, 1, 2, 7, 8) + [9, 9, 9])
    assert res.prefix_len == 16


@pytest.mark.parametrize(
    "bad",
    [1.0, 2.5, "3", None, True, False, b"x", [1], object()],
    ids=["float-int", "float", "str", "None", "True", "False", "bytes", "list", "object"],
)
def test_non_int_tokens_are_rejected(cache, bad):
    key = _seq(cache, 1, 2) + [bad] * cache.page_size
    kv, slot = alloc_kv(cache, _seq(cache, 1, 2, 3), 0), alloc_state(cache, [1])
    err = assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, kv, slot), match="token ids must be ints")
    assert type(bad).__name__ in str(err)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.match_prefix(key), match="token ids must be ints")


@pytest.mark.parametrize("key", ["abc", b"abc", 7, {1, 2}, torch.tensor([1, 2])], ids=["str", "bytes", "int", "set", "tensor"])
def test_a_key_must_be_a_list_of_ints(cache, key):
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.match_prefix(key), match="key must be a RadixKey or a list of ints")


@pytest.mark.parametrize("bad", ["a", 1.5, None, True])
def test_non_int_tokens_inside_a_radix_key_are_rejected(bad):
    """Regression: a RadixKey used to be taken unchecked."""
    cache = populated(1)
    kv, slot = alloc_kv(cache, [1, 2], 0), alloc_state(cache, [1, 2])
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(hm.RadixKey([bad, 2]), kv, slot))


@pytest.mark.parametrize(
    "make",
    [
        lambda c: None,
        lambda c: 3,
        lambda c: torch.cat((c.mamba_pool.alloc(1), c.mamba_pool.alloc(1))),
        lambda c: torch.empty(0, dtype=torch.int64),
        lambda c: c.mamba_pool.alloc(1).to(torch.int32),
        lambda c: c.mamba_pool.alloc(1).double(),
        lambda c: torch.tensor([c.mamba_pool.capacity]),
        lambda c: torch.tensor([-1]),
    ],
    ids=["None", "python-int", "two-slots", "no-slot", "int32", "float", "out-of-range", "negative"],
)
def test_mamba_value_must_be_one_allocated_slot(cache, make):
    key = _seq(cache, 1, 2, 3, 4, 12)
    kv, slot = alloc_kv(cache, key, 0), make(cache)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, kv, slot), match="mamba_value")


def test_mamba_value_that_was_freed_is_rejected(cache):
    key = _seq(cache, 1, 2, 3, 4, 12)
    kv, slot = alloc_kv(cache, key, 0), alloc_state(cache, key)
    cache.mamba_pool.free(slot)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, kv, slot), match="not allocated")


def test_mamba_value_never_allocated_is_rejected(cache):
    key = _seq(cache, 1, 2, 3, 4, 12)
    kv = alloc_kv(cache, key, 0)
    never = torch.tensor([cache.mamba_pool.capacity - 1])  # the pool hands out low slots first
    assert not cache.mamba_pool.allocator.is_allocated(never).any()
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, kv, never), match="not allocated")


@pytest.mark.parametrize(
    "make",
    [
        lambda c, n: torch.arange(c.kv_pool.capacity - n, c.kv_pool.capacity),  # free slots at the end
        lambda c, n: torch.full((n,), c.kv_pool.capacity, dtype=torch.int64),
        lambda c, n: torch.full((n,), -1, dtype=torch.int64),
        lambda c, n: c.kv_pool.alloc(n).float(),
        lambda c, n: c.kv_pool.alloc(n).view(-1, 1),
        lambda c, n: c.kv_pool.alloc(n).tolist(),
    ],
    ids=["never-allocated", "out-of-range", "negative", "float", "2-D", "list"],
)
def test_value_must_name_allocated_device_slots(cache, make):
    key = _seq(cache, 1, 2, 3, 4, 13)
    value, slot = make(cache, len(key)), alloc_state(cache, key)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, value, slot))


def test_value_with_freed_slots_is_rejected(cache):
    key = _seq(cache, 1, 2, 3, 4, 13)
    kv, slot = alloc_kv(cache, key, 0), alloc_state(cache, key)
    cache.kv_pool.free(kv[-cache.page_size :])
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert(key, kv, slot), match="not allocated")


def test_value_naming_a_slot_twice_is_rejected():
    """Regression: such a value used to be accepted, and the tree then owned the slot twice."""
    cache = populated(1)
    s = cache.kv_pool.alloc(1)
    slot = alloc_state(cache, [20, 21])
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.insert([20, 21], torch.cat((s, s)), slot))


@pytest.mark.parametrize("prev", [-1, "len+1", "len+ps"])
def test_prev_prefix_len_out_of_range(cache, prev):
    key = _seq(cache, 1, 2, 3, 4, 14)
    kv, slot = alloc_kv(cache, key, 0), alloc_state(cache, key)
    value = {"len+1": len(key) + 1, "len+ps": len(key) + cache.page_size}.get(prev, prev)
    assert_rejected(
        cache, hm.InvalidInputError, lambda: cache.insert(key, kv, slot, prev_prefix_len=value), match="prev_prefix_len"
    )


# -- locks ----------------------------------------------------------------------------------------


def test_dec_lock_ref_below_zero(cache):
    node = node_at(cache, _seq(cache, 1, 2, 3, 4, 5, 6))
    assert node.full_lock_ref == 0
    assert_rejected(cache, hm.LockError, lambda: cache.dec_lock_ref(node), match="full_lock_ref 0")
    cache.inc_lock_ref(node)
    cache.dec_lock_ref(node)
    assert_rejected(cache, hm.LockError, lambda: cache.dec_lock_ref(node), match="released more often than locked")


def test_dec_lock_ref_of_a_child_when_only_its_parent_is_locked(cache):
    parent = node_at(cache, _seq(cache, 9))
    child = node_at(cache, _seq(cache, 9, 9, 9))
    cache.inc_lock_ref(parent)
    assert parent.full_lock_ref == 1 and child.full_lock_ref == 0
    assert_rejected(cache, hm.LockError, lambda: cache.dec_lock_ref(child))
    cache.dec_lock_ref(parent)
    assert_healthy(cache)


def test_the_existing_lock_is_released_exactly_once(cache):
    node = node_at(cache, _seq(cache, 1, 2, 7, 8))
    assert node.full_lock_ref == 1
    cache.dec_lock_ref(node)
    assert_rejected(cache, hm.LockError, lambda: cache.dec_lock_ref(node))
    assert cache.full_protected_size() == 0 and cache.mamba_protected_size() == 0


def test_lock_calls_on_a_deleted_node(cache):
    leaf = node_at(cache, _seq(cache, 1, 2, 3, 4, 5, 6))
    cache.inc_lock_ref(leaf)
    cache.dec_lock_ref(leaf)
    while any(n is leaf for n in cache.nodes()):
        assert cache.evict(1) > 0
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.dec_lock_ref(leaf), match="not in this tree")
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.inc_lock_ref(leaf), match="not in this tree")


def test_lock_calls_on_a_node_of_another_cache_or_not_a_node(cache):
    other = populated(cache.page_size)
    foreign = node_at(other, _seq(other, 1, 2, 7, 8))
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.dec_lock_ref(foreign))
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.inc_lock_ref(foreign))
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.inc_lock_ref(other.root_node))
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.dec_lock_ref("node"), match="expected a TreeNode")
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.inc_lock_ref(None), match="expected a TreeNode")


def test_raw_host_release_below_zero():
    node = hm.TreeNode(1, hm.RadixKey([1]))
    with pytest.raises(hm.LockError):
        node.release_host()
    with pytest.raises(hm.LockError):
        node.release_host_mamba()
    assert (node.host_ref_counter, node.host_mamba_ref_counter) == (0, 0)
    node.protect_host()
    node.release_host()
    assert node.host_ref_counter == 0


# -- pools -----------------------------------------------------------------------------------------


def test_double_free_in_one_call(cache):
    ps = cache.page_size
    kv = cache.kv_pool.alloc(2 * ps)
    slot = cache.mamba_pool.alloc(1)
    twice = torch.cat((kv[:ps], kv[:ps]))
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(twice), match="double free")
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(torch.cat((kv, kv[ps:]))), match="double free")
    assert_rejected(cache, hm.PoolError, lambda: cache.mamba_pool.free(torch.cat((slot, slot))), match="double free")


def test_double_free_across_calls(cache):
    kv = cache.kv_pool.alloc(cache.page_size)
    slot = cache.mamba_pool.alloc(1)
    cache.kv_pool.free(kv)
    cache.mamba_pool.free(slot)
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(kv), match="double free")
    assert_rejected(cache, hm.PoolError, lambda: cache.mamba_pool.free(slot), match="double free")


def test_freeing_never_allocated_slots(cache):
    ps = cache.page_size
    cap = cache.kv_pool.capacity
    never = torch.arange(cap - ps, cap)  # the pool hands out low slots first
    assert not cache.kv_pool.allocator.is_allocated(never).any()
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(never))
    live = cache.kv_pool.alloc(ps)
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(torch.cat((live, never))))
    assert cache.kv_pool.allocator.is_allocated(live).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda cap, ps: torch.arange(cap, cap + ps),
        lambda cap, ps: torch.arange(-ps, 0),
        lambda cap, ps: torch.arange(10 * cap, 10 * cap + ps),
        lambda cap, ps: torch.zeros(ps, dtype=torch.float32),
        lambda cap, ps: torch.zeros(ps, dtype=torch.bool),
        lambda cap, ps: list(range(ps)),  # regression: used to be an AttributeError
    ],
    ids=["at-capacity", "negative", "far", "float", "bool", "list"],
)
def test_foreign_indices_are_refused_by_both_pools(cache, make):
    kv_bad = make(cache.kv_pool.capacity, cache.page_size)
    state_bad = make(cache.mamba_pool.capacity, 1)
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(kv_bad))
    assert_rejected(cache, hm.PoolError, lambda: cache.mamba_pool.free(state_bad))


def test_partial_and_unaligned_pages_are_refused():
    cache = populated(4)
    page = cache.kv_pool.alloc(8)
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(page[:3]), match="whole pages")
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(page[1:5]), match="aligned pages")
    assert_rejected(cache, hm.PoolError, lambda: cache.kv_pool.free(page[[4, 5, 6, 7, 3, 2, 1, 0]]), match="aligned pages")


@pytest.mark.parametrize("n", [-1, -4, 3, 5])
def test_alloc_of_a_bad_size(n):
    cache = populated(4)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.kv_pool.alloc(n), match="non-negative multiple of page size 4")
    if n < 0:
        assert_rejected(cache, hm.InvalidInputError, lambda: cache.mamba_pool.alloc(n), match="non-negative")


def test_alloc_beyond_capacity_returns_none_and_changes_nothing(cache):
    before = fingerprint(cache)
    assert cache.kv_pool.alloc(cache.kv_pool.available_size() + cache.page_size) is None
    assert cache.mamba_pool.alloc(cache.mamba_pool.available_size() + 1) is None
    assert fingerprint(cache) == before


# -- eviction sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [-1, -100, 1.5, "3", None])
def test_eviction_sizes_must_be_non_negative_ints(cache, n):
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.evict(n), match="non-negative int")
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.evict_mamba(n), match="non-negative int")


def test_evicting_zero_changes_nothing(cache):
    before = fingerprint(cache)
    assert cache.evict(0) == 0
    assert cache.evict_mamba(0) == 0
    assert fingerprint(cache) == before


# -- requests ---------------------------------------------------------------------------------------


def _request(cache, tokens, prefilled=None):
    n = len(tokens) if prefilled is None else prefilled
    return hm.Request(
        token_ids=list(tokens),
        kv_indices=alloc_kv(cache, tokens[:n], 0),
        mamba_pool_idx=alloc_state(cache, tokens[:n]),
        fill_len=prefilled,
    )


def test_unfinished_request_with_fewer_slots_than_prefilled_tokens():
    cache = populated(1)
    req = _request(cache, [30, 31, 32, 33], prefilled=2)
    req.fill_len = 3
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.cache_unfinished_req(req), req, match="2 KV slots for 3")


def test_unfinished_request_without_a_running_state():
    cache = populated(1)
    req = _request(cache, [30, 31, 32])
    cache.mamba_pool.free(req.mamba_pool_idx)
    req.mamba_pool_idx = None
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.cache_unfinished_req(req), req, match="mamba_pool_idx")


def test_finished_request_with_more_slots_than_tokens(cache):
    req = _request(cache, _seq(cache, 30, 31))
    req.token_ids = req.token_ids[: cache.page_size]
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.cache_finished_req(req), req, match="KV slots but only")


def test_finished_request_with_an_unaligned_track_length():
    cache = populated(4)
    req = _request(cache, _seq(cache, 30, 31, 32))
    req.mamba_track_idx = alloc_state(cache, req.token_ids[:6])
    req.mamba_last_track_seqlen = 6
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.cache_finished_req(req), req, match="not page aligned")


# Regressions: cache_unfinished_req used to allocate (and possibly evict) a state slot and swap
# req.mamba_track_idx before validating; cache_finished_req used to free the KV tail before insert
# validated the track slot, and to release the request's lock only after inserting.


def test_unfinished_request_with_an_unaligned_track_length():
    cache = populated(4)
    req = _request(cache, _seq(cache, 30, 31, 32))
    req.mamba_track_idx = alloc_state(cache, req.token_ids[:6])
    req.mamba_last_track_seqlen = 6
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.cache_unfinished_req(req), req, match="not page aligned")


def test_unfinished_request_with_freed_kv_slots():
    cache = populated(1)
    req = _request(cache, [30, 31, 32])
    cache.kv_pool.free(req.kv_indices[2:])
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.cache_unfinished_req(req), req, match="not allocated")


def test_finished_request_with_a_freed_track_slot():
    cache = populated(4)
    req = _request(cache, _seq(cache, 30, 31, 32))
    req.mamba_track_idx = alloc_state(cache, req.token_ids[:8])
    req.mamba_last_track_seqlen = 8
    cache.mamba_pool.free(req.mamba_track_idx)
    assert_rejected(cache, hm.InvalidInputError, lambda: cache.cache_finished_req(req), req, match="not allocated")


def test_finished_request_whose_last_node_is_not_locked():
    cache = populated(1)
    req = _request(cache, [1, 2, 3, 4, 5, 6, 40])
    req.last_node = node_at(cache, [1, 2, 3, 4, 5, 6])  # never locked by this request
    req.cache_protected_len = 0
    assert_rejected(cache, hm.LockError, lambda: cache.cache_finished_req(req), req)


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [{"B99"}, {"no_such_bug"}, {"B1", "bogus"}, "B999", {42}])
def test_unknown_legacy_switch(legacy):
    with pytest.raises(hm.InvalidInputError, match="legacy switch"):
        hm.CacheConfig(device="cpu", legacy=legacy)


def test_known_legacy_switches_by_id_and_alias():
    for bug_id, bug in hm.LEGACY_BUGS.items():
        assert hm.CacheConfig(device="cpu", legacy={bug_id}).legacy == {bug_id}
        assert hm.CacheConfig(device="cpu", legacy={bug.alias}).legacy == {bug_id}


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"page_size": 4, "device_kv_tokens": 2}, "smaller than one page"),
        ({"page_size": 4, "host_kv_tokens": 3}, "smaller than one page"),
        ({"device_kv_tokens": 0}, "smaller than one page"),
        ({"page_size": 4, "device_kv_tokens": 10}, "not a multiple of the page size 4"),
        ({"page_size": 4, "host_kv_tokens": 18}, "not a multiple of the page size 4"),
        ({"device_mamba_slots": 0}, "device_mamba_slots must be at least 1"),
        ({"host_mamba_slots": -1}, "host_mamba_slots must be at least 1"),
        ({"page_size": 0}, "page_size must be a positive int"),
        ({"page_size": 1.5}, "page_size must be a positive int"),
        ({"write_policy": "write_around"}, "write_policy"),
        ({"write_policy": None}, "write_policy"),
        ({"cascade_rule": "sometimes"}, "cascade_rule"),
        ({"model": "tiny"}, "model must be a ModelSpec"),
        ({"mamba_cache_chunk_size": 0}, "mamba_cache_chunk_size"),
    ],
)
def test_bad_cache_config(fields, words):
    with pytest.raises(hm.InvalidInputError, match=words):
        hm.CacheConfig(device="cpu", **fields)


@pytest.mark.parametrize("device", ["tpu", "nonsense", "meta", "gpu:0", ""])
def test_bad_device_name(device):
    with pytest.raises(hm.InvalidInputError, match="device"):
        make_cache(device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_requested_without_cuda(device):
    with pytest.raises(hm.InvalidInputError, match="CUDA is not available"):
        make_cache(device=device)


def test_auto_device_without_cuda_is_the_cpu():
    cache = make_cache(device="auto")
    assert cache.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_config_is_not_a_cache_config():
    with pytest.raises(hm.InvalidInputError, match="CacheConfig"):
        hm.MambaRadixCache({"device": "cpu"})


_TINY = dict(name="m", num_full_layers=2, kv_heads=1, head_dim=4, num_mamba_layers=2, conv_channels=4,
             conv_kernel=4, ssm_shape=(2, 2))


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_full_layers", 0),
        ("kv_heads", 0),
        ("head_dim", -4),
        ("num_mamba_layers", 0),
        ("conv_channels", -1),
        ("conv_kernel", 1),
        ("conv_kernel", 0),
        ("ssm_shape", ()),
        ("ssm_shape", (2, 0)),
        ("ssm_shape", (-2,)),
    ],
)
def test_model_spec_with_non_positive_sizes(field, value):
    hm.ModelSpec(**_TINY)  # the base is valid
    with pytest.raises(hm.InvalidInputError, match=field):
        hm.ModelSpec(**{**_TINY, field: value})


@pytest.mark.parametrize("capacity, page_size, words", [(2, 4, "smaller than one page"), (10, 4, "not a multiple"),
                                                         (4, 0, "page_size must be >= 1"), (0, 1, "smaller than one page")])
def test_slot_allocator_rejects_bad_geometry(capacity, page_size, words):
    with pytest.raises(hm.InvalidInputError, match=words):
        SlotAllocator(capacity, page_size)


def test_errors_are_value_errors():
    for error in (hm.InvalidInputError, hm.LockError, hm.PoolError):
        assert issubclass(error, ValueError) and issubclass(error, hm.HiMambaError)
    assert issubclass(hm.LockError, hm.InvalidInputError) and issubclass(hm.PoolError, hm.InvalidInputError)
    assert not issubclass(hm.CacheAssertionError, ValueError)
