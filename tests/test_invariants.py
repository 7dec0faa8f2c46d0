"""check_invariants notices each kind of damage.

A healthy tiered cache is built (device and host copies, a host-only leaf, a node whose state
went to host only), then one field is broken behind the cache's back. Every case must be reported
under its invariant id (and, where the rule is about one node, that node's id). The same cases
run on the device-only cache where the rule exists there.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import make_cache, node_at, put

import himamba as hm
from himamba.core.key import RadixKey

A, B, C, D, E = [1, 2, 3], [1, 2, 3, 4, 5], [1, 2, 3, 6, 7], [8, 9], [8, 9, 10]


def healthy_tiered() -> hm.HiMambaRadixCache:
    """root → A[1,2,3] (KV on both tiers, state on device only) → B[4,5] (device leaf) and
    C[6,7] (host-only leaf); root → D[8,9] → E[10] (device leaf)."""
    cache = make_cache(hm.HiMambaRadixCache, write_policy="write_through", device_kv_tokens=64,
                       host_kv_tokens=128, device_mamba_slots=8, host_mamba_slots=8)
    for tokens in (A, B, C, B, D, E):
        put(cache, tokens)
    cache.check_hicache_events()
    cache.evict(2)
    cache.check_hicache_events()
    cache.evict_mamba_host(1)
    assert node_at(cache, C).kv_tier() == "H" and node_at(cache, A).state_tier() == "d"
    assert hm.check_invariants(cache, held_kv=0, held_states=0) == []
    return cache


def healthy_device() -> hm.MambaRadixCache:
    cache = make_cache(hm.MambaRadixCache, device_kv_tokens=64, device_mamba_slots=8)
    for tokens in (A, B, C, D, E):
        put(cache, tokens)
    assert hm.check_invariants(cache, held_kv=0, held_states=0) == []
    return cache


def _unlink(lru, node) -> None:
    link = lru.link(node)
    link.prev.next, link.next.prev = link.next, link.prev
    link.prev = link.next = None


def _link_at_head(lru, node) -> None:
    link, head = lru.link(node), lru.head
    link.prev, link.next = head, head.next
    head.next.prev = link
    head.next = link


def _swap_front(lru) -> None:
    """Swap the first two members' times so the list is no longer in time order."""
    first, second = lru.head.next.node, lru.head.next.next.node
    first.last_access_time, second.last_access_time = second.last_access_time - 1, first.last_access_time


def _refile(c, tokens, new_child_key) -> None:
    node = node_at(c, tokens)
    siblings = node.parent.children
    old = next(k for k, v in siblings.items() if v is node)
    siblings[new_child_key] = siblings.pop(old)


def _share_slot(c) -> None:
    b, e = node_at(c, B), node_at(c, E)
    e.value = b.value[:1].clone()


def _foreign_tensor(n) -> None:
    n.value = n.value.to(torch.int32)


# name -> (break it, invariant id, the node it is about (tokens) or None)
Damage = Callable[[hm.MambaRadixCache], None]
BOTH: dict[str, tuple[Damage, str, list[int] | None]] = {
    "parent link": (lambda c: setattr(node_at(c, B), "parent", node_at(c, D)), "I1", B),
    "wrong child key": (lambda c: _refile(c, D, 77), "I1", D),
    "cycle": (lambda c: node_at(c, E).children.__setitem__(1, node_at(c, A)), "I1", A),
    "empty key": (lambda c: setattr(node_at(c, E), "key", RadixKey([])), "I1", None),
    "value dtype": (lambda c: _foreign_tensor(node_at(c, B)), "I2", B),
    "value length": (lambda c: setattr(node_at(c, B), "value", node_at(c, B).value[:1]), "I2", B),
    "value rank": (lambda c: setattr(node_at(c, B), "value", node_at(c, B).value.reshape(-1, 1)), "I2", B),
    "state rank": (lambda c: setattr(node_at(c, E), "mamba_value", node_at(c, E).mamba_value.reshape(1, 1)), "I2", E),
    # these keep 8 bytes a slot, so only the pool check's concatenation can see them
    "value of 2x int32": (lambda c: setattr(node_at(c, B), "value", node_at(c, B).value.repeat(2).to(torch.int32)),
                          "I2", B),
    "value of 8x bool": (lambda c: setattr(node_at(c, B), "value", torch.ones(16, dtype=torch.bool)), "I2", B),
    "value of float64": (lambda c: setattr(node_at(c, B), "value", node_at(c, B).value.double()), "I2", B),
    "value of uint64": (lambda c: setattr(node_at(c, B), "value", node_at(c, B).value.to(torch.uint64)), "I2", B),
    "state of 0 dims": (lambda c: setattr(node_at(c, E), "mamba_value", node_at(c, E).mamba_value.reshape(())),
                        "I2", E),
    "slot outside the pool": (lambda c: setattr(node_at(c, E), "value", torch.tensor([10_000])), "POOL", None),
    "negative slot": (lambda c: setattr(node_at(c, E), "value", torch.tensor([-1])), "POOL", None),
    "state shape": (lambda c: setattr(node_at(c, B), "mamba_value", torch.tensor([0, 1])), "I2", B),
    "ancestor off device": (lambda c: setattr(node_at(c, D), "value", None), "I4", E),
    "state without KV": (lambda c: setattr(node_at(c, E), "value", None), "I5", E),
    "missing from full LRU": (lambda c: _unlink(c.full_lru_list, node_at(c, E)), "I7", E),
    "stranger in state LRU": (lambda c: (_unlink(c.mamba_lru_list, node_at(c, E)),
                                         setattr(node_at(c, E), "mamba_value", None),
                                         _link_at_head(c.mamba_lru_list, node_at(c, E))), "I7", E),
    "LRU size counter": (lambda c: setattr(c.full_lru_list, "size", c.full_lru_list.size + 1), "I7", None),
    "leaf set misses a leaf": (lambda c: c.evictable_full_device_leaves.discard(node_at(c, E)), "I8", E),
    "leaf set holds an inner node": (lambda c: c.evictable_full_device_leaves.add(node_at(c, D)), "I8", D),
    "LRU out of time order": (lambda c: _swap_front(c.full_lru_list), "I9", None),
    "size counter": (lambda c: setattr(c, "full_evictable_size_", c.full_evictable_size_ + 1), "I10", None),
    "state counter": (lambda c: setattr(c, "mamba_protected_size_", 1), "I10", None),
    "negative lock": (lambda c: setattr(node_at(c, E), "full_lock_ref", -1), "I11", E),
    "state lock above KV lock": (lambda c: setattr(node_at(c, E), "mamba_lock_ref", 1), "I11", E),
    "child locked more than parent": (lambda c: setattr(node_at(c, E), "full_lock_ref", 1), "I11", E),
    "root unlocked": (lambda c: setattr(c.root_node, "full_lock_ref", 0), "I11", None),
    "slot owned twice": (_share_slot, "POOL", None),
    # a tree that frees a slot it still names (the pools refuse a caller's free of the tree's slots)
    "owned slot freed": (lambda c: c.kv_pool.free_owned(node_at(c, B).value), "POOL", None),
    "state slot freed": (lambda c: c.mamba_pool.free_owned(node_at(c, B).mamba_value), "POOL", None),
}

TIERED_ONLY: dict[str, tuple[Damage, str, list[int] | None]] = {
    "no KV on any tier": (lambda c: setattr(node_at(c, C), "host_value", None), "I3", C),
    "host value dtype": (lambda c: setattr(node_at(c, C), "host_value", node_at(c, C).host_value.float()), "I2", C),
    "host value of 4x int16": (lambda c: setattr(node_at(c, C), "host_value",
                                                 node_at(c, C).host_value.repeat(4).to(torch.int16)), "I2", C),
    "host state of 2x int32": (lambda c: setattr(node_at(c, B), "mamba_host_value",
                                                 node_at(c, B).mamba_host_value.repeat(2).to(torch.int32)), "I2", B),
    "host state without KV": (lambda c: (setattr(node_at(c, B), "host_value", None),
                                          setattr(node_at(c, B), "value", None)), "I3", B),
    "host-leaf set misses a leaf": (lambda c: c.evictable_full_host_leaves.discard(node_at(c, C)), "I8", C),
    "host-leaf set holds a device node": (lambda c: c.evictable_full_host_leaves.add(node_at(c, E)), "I8", E),
    "missing from host LRU": (lambda c: _unlink(c.mamba_host_lru_list, node_at(c, C)), "I7", C),
    "negative host pin": (lambda c: setattr(node_at(c, C), "host_ref_counter", -1), "I11", C),
    "unreachable tombstone": (lambda c: (c.evictable_full_host_leaves.discard(node_at(c, C)),
                                         _unlink(c.mamba_host_lru_list, node_at(c, C)),
                                         c.host_mamba_pool.free(node_at(c, C).mamba_host_value),
                                         setattr(node_at(c, C), "mamba_host_value", None),
                                         setattr(node_at(c, C), "host_ref_counter", 0)), "I6", C),
    "unprotected write-through": (lambda c: c.ongoing_write_through.__setitem__(node_at(c, E).id, node_at(c, E)),
                                  "I12", E),
    "unpinned backup": (lambda c: c.ongoing_backup.__setitem__(99, (node_at(c, C), False)), "I12", C),
    "gap in host copies": (lambda c: (setattr(node_at(c, D), "host_value", None)), "I13", E),
    "host slot freed": (lambda c: c.host_kv_pool.free(node_at(c, C).host_value), "POOL", None),
    "host state owned twice": (lambda c: setattr(node_at(c, E), "mamba_host_value",
                                                 node_at(c, B).mamba_host_value.clone()), "POOL", None),
}


def _assert_reported(cache, damage: Damage, invariant: str, about: list[int] | None) -> None:
    node_id = node_at(cache, about).id if about is not None else None
    damage(cache)
    found = hm.check_invariants(cache, held_kv=0, held_states=0)
    ids = {v.invariant for v in found}
    assert invariant in ids, f"expected {invariant}, got {[str(v) for v in found]}"
    if node_id is not None:
        assert any(v.invariant == invariant and v.node_id == node_id for v in found), [str(v) for v in found]


@pytest.mark.parametrize("name", sorted(BOTH))
def test_device_cache_reports(name):
    _assert_reported(healthy_device(), *BOTH[name])


@pytest.mark.parametrize("name", sorted(BOTH) + sorted(TIERED_ONLY))
def test_tiered_cache_reports(name):
    _assert_reported(healthy_tiered(), *{**BOTH, **TIERED_ONLY}[name])


def test_requests_holding_slots_must_be_declared():
    """Exact accounting: a slot allocated by a caller and not declared breaks POOL; declared, it
    balances."""
    cache = healthy_tiered()
    cache.kv_pool.alloc(3)
    assert {v.invariant for v in hm.check_invariants(cache, held_kv=0, held_states=0)} == {"POOL"}
    assert hm.check_invariants(cache, held_kv=3, held_states=0) == []
    assert hm.check_invariants(cache) == []


@pytest.mark.parametrize("cls", [hm.MambaRadixCache, hm.HiMambaRadixCache])
def test_a_slot_named_twice_inside_one_page_is_reported(cls):
    """With pages of 4 slots, a node that names one slot of its page twice (and another not at
    all) keeps every page count and every counter right; only the count per slot sees it."""
    cache = make_cache(cls, page_size=4, device_kv_tokens=32, device_mamba_slots=4)
    put(cache, [1, 2, 3, 4, 5, 6, 7, 8])
    assert hm.check_invariants(cache, held_kv=0, held_states=0) == []
    node = node_at(cache, [1, 2, 3, 4, 5, 6, 7, 8])
    node.value = torch.cat((node.value[:1], node.value[:1], node.value[2:]))
    found = [str(v) for v in hm.check_invariants(cache, held_kv=0, held_states=0)]
    assert found == ["POOL: device KV: a slot is owned twice"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda c: setattr(node_at(c, E), "value", torch.tensor([10_000])), "the tree owns slots outside the pool"),
    (_share_slot, "a slot is owned twice"),
    (lambda c: c.kv_pool.free_owned(node_at(c, B).value), "the tree owns slots the pool considers free"),
])
def test_pool_problems_are_named(damage, message):
    cache = healthy_device()
    damage(cache)
    pool_lines = [v.message for v in hm.check_invariants(cache, held_kv=0, held_states=0) if v.invariant == "POOL"]
    assert pool_lines[0] == f"device KV: {message}"
