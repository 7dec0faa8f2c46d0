"""Reference scenarios (docs/reference.md §6) on the tiered HiMambaRadixCache.

Each test replays one scenario with real slots on the CPU and checks, after every operation,
the tree shape, node tiers (``KV`` in D/H/DH, ``M`` in -/d/h/dh), counters, locks and pins, the
device and host leaf sets, the LRU orders (MRU→LRU node ids), pool usage and return values.
``assert_healthy`` (all invariants with exact pool accounting, plus byte integrity) runs after
every call, except right after a legacy bug fires.

Defaults as in the reference: page size 1 and policy ``write_back`` unless a scenario says
otherwise. All bugs are fixed by default; a scenario that the reference describes with the old
behaviour shows the new one and, where useful, the old one with its legacy switch.

Node ids are deterministic: the root is #0 and every new node (including the upper half of a
split) takes the next id. Pools: 64 device KV tokens, 8 device state slots, 256 host KV tokens
and 32 host state slots unless a test sets other sizes.
"""

from __future__ import annotations

import pytest
import torch
from helpers import alloc_kv, alloc_state, assert_healthy, node_at, put

import himamba as hm
from himamba.memory.content import kv_matches, state_matches, write_state

KV_CAP, STATE_CAP, HOST_KV_CAP, HOST_STATE_CAP = 64, 8, 256, 32
Hi = hm.HiMambaRadixCache


# -- small readers --------------------------------------------------------------------------------
def hi_cache(manual_acks: bool = False, **config) -> hm.HiMambaRadixCache:
    """A tiered cache on the CPU, ``write_back`` unless given; ``manual_acks`` keeps transfers
    (and storage operations) in flight until completed by hand."""
    config.setdefault("write_policy", "write_back")
    config.setdefault("device", "cpu")
    return Hi(hm.CacheConfig(**config), manual_acks=manual_acks)


def counters(cache) -> tuple[int, int, int, int]:
    """(full_evictable, full_protected, mamba_evictable, mamba_protected)."""
    return (cache.full_evictable_size_, cache.full_protected_size_,
            cache.mamba_evictable_size_, cache.mamba_protected_size_)


def orders(cache) -> tuple[list[int], list[int], list[int]]:
    """(full LRU, mamba LRU, host mamba LRU) node ids, most recently used first."""
    return cache.full_lru_list.order(), cache.mamba_lru_list.order(), cache.mamba_host_lru_list.order()


def ld(cache) -> set[int]:
    return {n.id for n in cache.evictable_full_device_leaves}


def lh(cache) -> set[int]:
    return {n.id for n in cache.evictable_full_host_leaves}


def tiers(node) -> tuple[str, str]:
    return node.kv_tier(), node.state_tier()


def locks(node) -> tuple[int, int, int, int]:
    """(full_lock_ref, mamba_lock_ref, host_ref_counter, host_mamba_ref_counter)."""
    return node.full_lock_ref, node.mamba_lock_ref, node.host_ref_counter, node.host_mamba_ref_counter


def children_of(node) -> dict:
    return {ck: c.id for ck, c in node.children.items()}


def in_tree(cache, node) -> bool:
    return any(n is node for n in cache.nodes())


def used(cache) -> tuple[int, int, int, int]:
    """Slots in use: (device KV, device states, host KV, host states)."""
    return (cache.kv_pool.capacity - cache.kv_pool.available_size(),
            cache.mamba_pool.capacity - cache.mamba_pool.available_size(),
            cache.host_kv_pool.capacity - cache.host_kv_pool.available_size(),
            cache.host_mamba_pool.capacity - cache.host_mamba_pool.available_size())


def record(cache, kinds) -> tuple[list, callable]:
    """Collect events of the given kinds; returns (list, unsubscribe)."""
    seen: list[hm.Event] = []
    stop = cache.events.subscribe(lambda ev: seen.append(ev) if ev.kind in kinds else None)
    return seen, stop


def build_a_b(cache):
    """A[1,2,3] (state) → B[4,5] (state), inserted the way requests do; under write_back
    nothing is backed up."""
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    a, b = node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])
    assert (a.id, b.id) == (1, 2) and b.parent is a
    return a, b


def demote_chain(cache):
    """Scenario 17's result: A[1,2,3] → B[4,5], both ``KV=H M=h`` (write_back)."""
    a, b = build_a_b(cache)
    assert cache.evict(5) == 5
    assert_healthy(cache)
    assert tiers(a) == tiers(b) == ("H", "h")
    return a, b


# -- scenario 10 -----------------------------------------------------------------------------------
def test_scenario_10_cascade_stopped_by_a_host_state():
    """Stopped by a host state: A ``KV=DH M=h`` whose only child is B; B is demoted and then
    host-evicted → the cascade stops at A because A holds a host state; A is a device leaf.
    A later evict_mamba_host drops A's host state and leaves A a childless full tombstone
    (tolerated I6c: it is in Ld), which then leaves through ordinary eviction."""
    cache = hi_cache()
    a, b = build_a_b(cache)
    assert cache.write_backup(a, write_back=True) == 3  # A gets a host copy (KV and state)
    assert_healthy(cache)
    assert cache.writing_check(write_back=True) == 1
    assert_healthy(cache)
    assert cache.ongoing_write_through == {}
    assert cache.evict_mamba(1) == 1  # A is the LRU state and has a child: tombstoned
    assert_healthy(cache)
    assert tiers(a) == ("DH", "h") and tiers(b) == ("D", "d")
    assert children_of(a) == {4: b.id}
    assert counters(cache) == (5, 0, 1, 0)
    assert orders(cache) == ([b.id, a.id], [b.id], [a.id])
    assert used(cache) == (5, 1, 3, 1)

    assert cache.evict(2) == 2  # B: written back and demoted
    assert_healthy(cache)
    assert tiers(b) == ("H", "h") and ld(cache) == {a.id} and lh(cache) == {b.id}
    assert orders(cache) == ([a.id], [], [b.id, a.id])
    assert counters(cache) == (3, 0, 0, 0)
    assert used(cache) == (3, 0, 5, 2)

    assert cache.evict_host(2) == 2  # B deleted; cascade stops at A (host state)
    assert_healthy(cache)
    assert not in_tree(cache, b) and in_tree(cache, a) and a.children == {}
    assert tiers(a) == ("DH", "h")
    assert ld(cache) == {a.id} and lh(cache) == set()
    assert orders(cache) == ([a.id], [], [a.id])
    assert used(cache) == (3, 0, 3, 1)

    assert cache.evict_mamba_host(1) == 1  # A is no host leaf: only its host state goes
    assert_healthy(cache)
    assert in_tree(cache, a) and tiers(a) == ("DH", "-") and a.children == {}
    assert a in cache.evictable_full_device_leaves, "a full tombstone that eviction can reach"
    assert orders(cache) == ([a.id], [], [])
    assert used(cache) == (3, 0, 3, 0)
    assert cache.match_prefix([1, 2, 3]).prefix_len == 0
    assert_healthy(cache)

    assert cache.evict(1) == 3  # backed up: demoted, then a host leaf
    assert_healthy(cache)
    assert tiers(a) == ("H", "-") and ld(cache) == set() and lh(cache) == {a.id}
    assert cache.evict_host(1) == 3
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and used(cache) == (0, 0, 0, 0)


# -- scenario 11 -----------------------------------------------------------------------------------
def storage_op_of(cache, node):
    """The storage backup operation in flight for ``node``."""
    ops = [op for op in cache.storage.ops if op.kind == "backup" and op.payload["node"] is node]
    assert len(ops) == 1
    return ops[0]


def build_pinned_stateless_parent(cache):
    """A[1,2,3] tombstoned, then evict(5): B[4,5] demoted with its state, A demoted without
    one. With storage on, each write ack starts a storage backup that pins the node."""
    a, b = build_a_b(cache)
    assert cache.evict_mamba(1) == 1
    assert_healthy(cache)
    assert tiers(a) == ("D", "-")
    assert cache.evict(5) == 5
    assert_healthy(cache)
    assert tiers(a) == ("H", "-") and tiers(b) == ("H", "h")
    assert locks(a) == (0, 0, 1, 0), "A archived without a state: only its KV is pinned"
    assert locks(b) == (0, 0, 1, 1)
    assert {node.id: pinned for node, pinned in cache.ongoing_backup.values()} == {a.id: False, b.id: True}
    assert lh(cache) == set() and orders(cache) == ([], [], [])
    return a, b


def test_scenario_11_cascade_stopped_by_a_host_pin():
    """Stopped by a host pin (NEW): A is backed up without a state and its storage backup is in
    flight (hr=1). Removing its only child B leaves A in the tree, childless, out of Lh. After
    A's storage ack A is an ordinary host leaf and evict_host takes it."""
    cache = hi_cache(manual_acks=True, enable_storage=True)
    a, b = build_pinned_stateless_parent(cache)

    cache.storage.complete(storage_op_of(cache, b))
    assert cache.check_storage_progress() == 1
    assert_healthy(cache)
    assert locks(b) == (0, 0, 0, 0) and lh(cache) == {b.id}
    assert orders(cache) == ([], [], [b.id])

    assert cache.evict_host(2) == 2
    assert_healthy(cache)
    assert not in_tree(cache, b)
    assert in_tree(cache, a) and a.children == {} and children_of(cache.root_node) == {1: a.id}
    assert tiers(a) == ("H", "-") and locks(a) == (0, 0, 1, 0)
    assert lh(cache) == set() and ld(cache) == set()
    assert cache.evict_host(HOST_KV_CAP) == 0, "pinned: nothing to evict"
    assert_healthy(cache)
    assert used(cache) == (0, 0, 3, 0)

    cache.storage.complete(storage_op_of(cache, a))
    assert cache.check_storage_progress() == 1
    assert_healthy(cache)
    assert locks(a) == (0, 0, 0, 0) and lh(cache) == {a.id}
    assert cache.ongoing_backup == {} and len(cache.storage.pages) == 5
    assert cache.evict_host(1) == 3
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and used(cache) == (0, 0, 0, 0)


def test_scenario_11_old_cascade_detaches_the_pinned_node():
    """Scenario 11 with legacy B1: the cascade deletes the pinned A (its pinned host KV stays
    allocated); the storage ack puts the detached A into Lh and evict_host asserts
    ``parent does not have child key``."""
    cache = hi_cache(manual_acks=True, enable_storage=True, legacy={"B1"})
    a, b = build_pinned_stateless_parent(cache)
    cache.storage.complete(storage_op_of(cache, b))
    cache.check_storage_progress()
    assert_healthy(cache)

    assert cache.evict_host(2) == 2
    assert not in_tree(cache, a) and cache.root_node.children == {}
    assert a.host_value is not None and a.host_ref_counter == 1
    cache.storage.complete(storage_op_of(cache, a))
    cache.check_storage_progress()
    assert a in cache.evictable_full_host_leaves
    with pytest.raises(hm.CacheAssertionError, match="parent does not have child key"):
        cache.evict_host(1)


# -- scenario 12 -----------------------------------------------------------------------------------
def build_host_chain_and_sibling(cache):
    """A[1,2,3] (tombstoned) → C[4,5], then D[7,8]; evict(5) demotes C (with state) and A
    (without), evict(2) demotes D: A ``KV=H M=-`` → C ``KV=H M=h``; D ``KV=H M=h``."""
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    put(cache, [7, 8])
    assert_healthy(cache)
    a, c, d = node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5]), node_at(cache, [7, 8])
    assert cache.evict_mamba(1) == 1
    assert_healthy(cache)
    assert tiers(a) == ("D", "-")
    assert cache.evict(5) == 5
    assert_healthy(cache)
    assert cache.evict(2) == 2
    assert_healthy(cache)
    assert (tiers(a), tiers(c), tiers(d)) == (("H", "-"), ("H", "h"), ("H", "h"))
    assert lh(cache) == {c.id, d.id} and ld(cache) == set()
    assert used(cache) == (0, 0, 7, 2)
    return a, c, d


def test_scenario_12_host_cascade_frees_both_but_counts_only_the_leaf():
    """Host cascade: A ``KV=H`` stateless → C ``KV=H M=h``; evict_host(len C) deletes C and
    the cascade deletes A: the host pool regains both (5 tokens, 1 state) while D stays.
    evict_host's internal count has only C's 2 tokens (cascaded host tokens are not counted,
    B11): asking for 3 tokens therefore also deletes D although 5 were already freed."""
    cache = hi_cache()
    a, c, d = build_host_chain_and_sibling(cache)
    assert c.last_access_time < d.last_access_time

    assert cache.evict_host(2) == 5
    assert_healthy(cache)
    assert not in_tree(cache, c) and not in_tree(cache, a)
    assert children_of(cache.root_node) == {7: d.id}
    assert lh(cache) == {d.id} and orders(cache) == ([], [], [d.id])
    assert used(cache) == (0, 0, 2, 1)

    cache = hi_cache()
    a, c, d = build_host_chain_and_sibling(cache)
    assert cache.evict_host(3) == 7
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and used(cache) == (0, 0, 0, 0)


# -- scenario 13 -----------------------------------------------------------------------------------
def test_scenario_13_write_through_backs_up_on_creation():
    """Write-through creation: the insert backs A up at once: A ``KV=DH M=dh`` and locked
    (fl=1, ml=1) while its write is in flight (A ∈ ongoing_write_through, ∈ LRUh, ∉ Ld). After
    the ack and writing_check A is unlocked and ∈ Ld. With storage, the ack starts a storage
    backup that pins A (hr=hmr=1, A ∉ LRUh) until the storage ack puts A back in LRUh."""
    cache = hi_cache(manual_acks=True, write_policy="write_through", enable_storage=True)
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    a = node_at(cache, [1, 2, 3])
    assert tiers(a) == ("DH", "dh") and a.hit_count == 1
    assert locks(a) == (1, 1, 0, 0)
    assert cache.ongoing_write_through == {a.id: a}
    assert counters(cache) == (0, 3, 0, 1)
    assert ld(cache) == set() and lh(cache) == set()
    assert orders(cache) == ([a.id], [a.id], [a.id])
    assert used(cache) == (3, 1, 3, 1)

    assert cache.writing_check() == 0, "the copy has not finished yet"
    assert_healthy(cache)
    assert locks(a) == (1, 1, 0, 0)

    cache.cache_controller.complete()
    assert cache.writing_check() == 1
    assert_healthy(cache)
    assert cache.ongoing_write_through == {}
    assert locks(a) == (0, 0, 1, 1)
    assert counters(cache) == (3, 0, 1, 0)
    assert ld(cache) == {a.id}
    assert orders(cache) == ([a.id], [a.id], [])
    assert [node.id for node, _ in cache.ongoing_backup.values()] == [a.id]

    assert cache.check_storage_progress() == 0
    cache.storage.complete()
    assert cache.check_storage_progress() == 1
    assert_healthy(cache)
    assert locks(a) == (0, 0, 0, 0) and cache.ongoing_backup == {}
    assert orders(cache) == ([a.id], [a.id], [a.id])
    assert len(cache.storage.pages) == 3 and len(cache.storage.states) == 1


def test_scenario_13_without_storage_the_ack_only_unlocks():
    """Write-through creation without storage: after the ack A is unlocked, never pinned, and
    stays in LRUh throughout."""
    cache = hi_cache(manual_acks=True, write_policy="write_through")
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    a = node_at(cache, [1, 2, 3])
    assert locks(a) == (1, 1, 0, 0) and cache.ongoing_write_through == {a.id: a}
    cache.cache_controller.complete()
    assert cache.writing_check() == 1
    assert_healthy(cache)
    assert locks(a) == (0, 0, 0, 0) and ld(cache) == {a.id}
    assert orders(cache) == ([a.id], [a.id], [a.id])
    assert cache.ongoing_backup == {}


# -- scenario 14 -----------------------------------------------------------------------------------
def test_scenario_14_contiguity_skip_then_top_down_retry():
    """Contiguity skip (write_through, host KV for 6 tokens): X[7,8,9,10] is backed up and stays
    on device, so nothing is host-evictable and 2 host tokens are left. A[1,2,3]'s backup fails
    (host full); B[4,5] would fit but its write_backup returns 0 because A is not backed up.
    Once X is demoted (a host leaf), the next insert through A and B retries top-down: A's write
    host-evicts X and succeeds, then B's succeeds."""
    cache = hi_cache(write_policy="write_through", host_kv_tokens=6)
    put(cache, [7, 8, 9, 10])
    assert_healthy(cache)
    cache.writing_check()
    assert_healthy(cache)
    x = node_at(cache, [7, 8, 9, 10])
    assert tiers(x) == ("DH", "dh") and used(cache)[2] == 4

    put(cache, [1, 2, 3])
    assert_healthy(cache)
    a = node_at(cache, [1, 2, 3])
    assert tiers(a) == ("D", "d") and a.hit_count == 1 and locks(a) == (0, 0, 0, 0)
    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    b = node_at(cache, [1, 2, 3, 4, 5])
    assert a.hit_count == 2 and b.hit_count == 1
    assert tiers(a) == ("D", "d") and tiers(b) == ("D", "d"), "A: host full; B: contiguity"
    assert cache.write_backup(b) == 0
    assert_healthy(cache)
    assert b.host_value is None and used(cache)[2] == 4
    assert cache.ongoing_write_through == {}

    cache.match_prefix([1, 2, 3, 4, 5])  # X becomes the oldest device leaf
    assert_healthy(cache)
    assert cache.evict(1) == 4
    assert_healthy(cache)
    assert tiers(x) == ("H", "h") and lh(cache) == {x.id}

    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    assert not in_tree(cache, x)
    assert tiers(a) == ("DH", "dh") and tiers(b) == ("DH", "dh")
    assert (a.hit_count, b.hit_count) == (3, 2)
    assert list(cache.ongoing_write_through) == [a.id, b.id], "written top-down"
    assert locks(a) == (2, 1, 0, 0) and locks(b) == (1, 1, 0, 0)
    assert cache.writing_check() == 2
    assert_healthy(cache)
    assert locks(a) == (0, 0, 0, 0) and locks(b) == (0, 0, 0, 0)
    assert used(cache) == (5, 2, 5, 2)


# -- scenario 15 -----------------------------------------------------------------------------------
def test_scenario_15_selective_backs_up_at_the_second_hit():
    """Selective (write_through_selective): the first insert counts hit 1 and backs nothing up;
    a second insert through A (extending it) makes A's hit count 2 and backs A up; the new B
    has one hit and stays device-only. A third insert of B's prompt backs B up."""
    cache = hi_cache(write_policy="write_through_selective")
    assert cache.write_through_threshold == 2
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    a = node_at(cache, [1, 2, 3])
    assert a.hit_count == 1 and tiers(a) == ("D", "d") and cache.ongoing_write_through == {}
    assert used(cache) == (3, 1, 0, 0)

    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    b = node_at(cache, [1, 2, 3, 4, 5])
    assert a.hit_count == 2 and tiers(a) == ("DH", "dh") and locks(a) == (1, 1, 0, 0)
    assert b.hit_count == 1 and tiers(b) == ("D", "d")
    assert cache.ongoing_write_through == {a.id: a}
    assert cache.writing_check() == 1
    assert_healthy(cache)
    assert locks(a) == (0, 0, 0, 0) and used(cache) == (5, 2, 3, 1)

    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    assert (a.hit_count, b.hit_count) == (3, 2) and tiers(b) == ("DH", "dh")
    assert cache.ongoing_write_through == {b.id: b}
    assert cache.writing_check() == 1
    assert_healthy(cache)
    assert used(cache) == (5, 2, 5, 2)


# -- scenario 16 -----------------------------------------------------------------------------------
def test_scenario_16_write_back_demotion_is_synchronous_and_lock_free():
    """Write-back demotion: evict(len B) writes B synchronously (even with manual acks) and
    demotes it: B ``KV=H M=h``; ongoing_write_through and the ack queue are empty; no lock was
    taken (no LOCK event) and A is untouched on device."""
    cache = hi_cache(manual_acks=True)
    a, b = build_a_b(cache)
    seen, stop = record(cache, {hm.EventKind.LOCK, hm.EventKind.UNLOCK, hm.EventKind.WRITE_ISSUED,
                                hm.EventKind.DEMOTED})
    assert cache.evict(2) == 2
    stop()
    assert_healthy(cache)
    assert [e.kind for e in seen] == [hm.EventKind.WRITE_ISSUED, hm.EventKind.DEMOTED]
    assert tiers(b) == ("H", "h") and tiers(a) == ("D", "d")
    assert cache.ongoing_write_through == {} and len(cache.cache_controller.ack_write_queue) == 0
    assert locks(a) == locks(b) == (0, 0, 0, 0)
    assert counters(cache) == (3, 0, 1, 0)
    assert ld(cache) == {a.id} and lh(cache) == {b.id}
    assert orders(cache) == ([a.id], [a.id], [b.id])
    assert used(cache) == (3, 1, 2, 1)


# -- scenario 17 -----------------------------------------------------------------------------------
def test_scenario_17_leaf_first_chain_demotion():
    """Leaf-first chain: A→B, evict(len A + len B) demotes B, then A (pushed as a new device
    leaf): both ``KV=H M=h``; Lh = {B} (A has a child), Ld = {}; device pools empty."""
    cache = hi_cache()
    a, b = build_a_b(cache)
    seen, stop = record(cache, {hm.EventKind.DEMOTED})
    assert cache.evict(5) == 5
    stop()
    assert_healthy(cache)
    assert [e.nodes[0] for e in seen] == [b.id, a.id]
    assert tiers(a) == tiers(b) == ("H", "h")
    assert children_of(a) == {4: b.id}
    assert lh(cache) == {b.id} and ld(cache) == set()
    assert counters(cache) == (0, 0, 0, 0)
    assert orders(cache) == ([], [], [a.id, b.id])
    assert used(cache) == (0, 0, 5, 2)


# -- scenario 19 -----------------------------------------------------------------------------------
def test_scenario_19_load_back_restores_chain_and_only_the_last_state():
    """Load-back: after scenario 17, matching all 5 tokens gives 0 device indices,
    last_device_node root, last_host_node B and host_hit_length len A + len B = 5.
    init_load_back(B) puts A and B on device with fresh slots, restores only B's state (A stays
    ``M=h``), locks the chain through B and records B in ongoing_load_back; the load-back
    threshold (10 tokens) is not applied because a state is restored. After
    ready_to_load_host_cache, the ack and loading_check the chain is unlocked and Ld = {B}."""
    cache = hi_cache(manual_acks=True)
    a, b = demote_chain(cache)
    assert cache.load_back_threshold == 10

    m = cache.match_prefix([1, 2, 3, 4, 5])
    assert_healthy(cache)
    assert m.prefix_len == 0 and m.last_device_node is cache.root_node
    assert m.last_host_node is b and m.best_match_node is b
    assert m.host_hit_length == 5

    device, node = cache.init_load_back(m.best_match_node)
    assert_healthy(cache)
    assert node is b and device.numel() == 5
    assert torch.equal(a.value, device[:3]) and torch.equal(b.value, device[3:])
    assert tiers(a) == ("DH", "h") and tiers(b) == ("DH", "dh")
    assert locks(a) == (1, 0, 0, 0) and locks(b) == (1, 1, 0, 0)
    assert cache.ongoing_load_back == {b.id: b}
    assert len(cache.cache_controller.pending_loads) == 1
    assert counters(cache) == (0, 5, 0, 1)
    assert ld(cache) == set() and lh(cache) == set()
    assert orders(cache) == ([b.id, a.id], [b.id], [b.id, a.id]), "B's host state was pinned while loading"
    assert used(cache) == (5, 1, 5, 2)

    assert cache.ready_to_load_host_cache() == 1
    assert_healthy(cache)
    assert cache.loading_check() == 0, "the copy is still in flight"
    assert locks(b) == (1, 1, 0, 0)
    cache.cache_controller.complete()
    assert cache.loading_check() == 1
    assert_healthy(cache)
    assert cache.ongoing_load_back == {}
    assert locks(a) == locks(b) == (0, 0, 0, 0)
    assert counters(cache) == (5, 0, 1, 0)
    assert ld(cache) == {b.id}
    assert kv_matches(cache.kv_pool, device, [1, 2, 3, 4, 5], 0)
    assert state_matches(cache.mamba_pool, b.mamba_value, [1, 2, 3, 4, 5])

    m = cache.match_prefix([1, 2, 3, 4, 5])
    assert_healthy(cache)
    assert torch.equal(m.device_indices, device) and m.last_device_node is b
    assert m.host_hit_length == 0


# -- scenario 20 -----------------------------------------------------------------------------------
def build_short_host_chain(cache):
    """P[1,2] on device with its state; Q[3..9] demoted, then a lookup of [1..8] splits it into
    the stateless host node U[3..8] (6 tokens) over Q[9] (``KV=H M=h``)."""
    put(cache, [1, 2])
    assert_healthy(cache)
    put(cache, list(range(1, 10)))
    assert_healthy(cache)
    p, q = node_at(cache, [1, 2]), node_at(cache, list(range(1, 10)))
    assert cache.evict(7) == 7
    assert_healthy(cache)
    m = cache.match_prefix(list(range(1, 9)))
    assert_healthy(cache)
    u = node_at(cache, list(range(1, 9)))
    assert u.parent is p and q.parent is u and len(u.key) == 6
    assert tiers(p) == ("D", "d") and tiers(u) == ("H", "-") and tiers(q) == ("H", "h")
    assert m.last_device_node is p and m.prefix_len == 2
    return p, u, q


def test_scenario_20_threshold_skips_short_stateless_chain_and_climbs():
    """Threshold: when the node to load is a stateless host node (what skip_mamba_match can
    produce), a 6-token chain is below the 10-token load-back threshold and nothing is restored:
    load_back returns None, the anchor's temporary lock is released, and init_load_back climbs
    to the nearest node with device KV and a device state (P) — or to the root once P is a
    tombstone. With a threshold of 6 the same chain is loaded."""
    cache = hi_cache()
    p, u, q = build_short_host_chain(cache)
    snapshot = (counters(cache), used(cache), orders(cache))

    assert cache.load_back(u) is None
    assert_healthy(cache)
    device, node = cache.init_load_back(u)
    assert_healthy(cache)
    assert device.numel() == 0 and node is p
    assert tiers(u) == ("H", "-") and locks(p) == (0, 0, 0, 0)
    assert (counters(cache), used(cache), orders(cache)) == snapshot
    assert ld(cache) == {p.id}

    assert cache.evict_mamba(1) == 1  # P has a (host) child: tombstoned
    assert_healthy(cache)
    device, node = cache.init_load_back(u)
    assert_healthy(cache)
    assert device.numel() == 0 and node is cache.root_node

    cache = hi_cache(load_back_threshold=6)
    p, u, q = build_short_host_chain(cache)
    device, node = cache.init_load_back(u)
    assert_healthy(cache)
    assert node is u and device.numel() == 6
    assert tiers(u) == ("DH", "-") and locks(u) == (1, 0, 0, 0) and locks(p) == (1, 0, 0, 0)
    assert cache.ready_to_load_host_cache() == 1
    assert_healthy(cache)
    assert cache.loading_check() == 1
    assert_healthy(cache)


# -- scenario 21 -----------------------------------------------------------------------------------
def build_tombstone_with_host_state(cache):
    """A[1,2,3] ``KV=DH M=h`` (backed up, then its device state evicted) with a device child B."""
    a, b = build_a_b(cache)
    assert cache.write_backup(a, write_back=True) == 3
    assert_healthy(cache)
    assert cache.writing_check(write_back=True) == 1
    assert_healthy(cache)
    assert cache.evict_mamba(1) == 1
    assert_healthy(cache)
    assert tiers(a) == ("DH", "h") and tiers(b) == ("D", "d")
    return a, b


def test_scenario_21_state_only_host_hit():
    """State-only host hit: A on device, tombstoned, with a host state → the match of [1,2,3]
    reports A's 3 device tokens and host_hit_length 1 (the state-only sentinel).
    init_load_back(A, req) moves no KV: it gives A a device state slot and the request one,
    both filled from A's host state, returns an empty tensor and locks A until loading_check."""
    cache = hi_cache(manual_acks=True)
    a, b = build_tombstone_with_host_state(cache)
    m = cache.match_prefix([1, 2, 3])
    assert_healthy(cache)
    assert m.prefix_len == 3 and torch.equal(m.device_indices, a.value)
    assert m.last_device_node is a and m.last_host_node is a and m.best_match_node is a
    assert m.host_hit_length == 1
    assert used(cache) == (5, 1, 3, 1)

    req = hm.Request(token_ids=[1, 2, 3, 9], kv_indices=torch.empty(0, dtype=torch.int64))
    device, node = cache.init_load_back(m.best_match_node, req=req)
    assert_healthy(cache, held_states=1)
    assert node is a and device.numel() == 0
    assert tiers(a) == ("DH", "dh") and locks(a) == (1, 1, 0, 0)
    assert req.mamba_pool_idx is not None and req.mamba_pool_idx.tolist() != a.mamba_value.tolist()
    assert cache.ongoing_load_back == {a.id: a}
    assert used(cache) == (5, 3, 3, 1), "A's new state slot and the request's"
    assert counters(cache) == (2, 3, 1, 1)
    assert orders(cache)[1] == [a.id, b.id]

    assert cache.ready_to_load_host_cache() == 1
    assert_healthy(cache, held_states=1)
    ack = cache.cache_controller.ack_load_queue[0]
    assert (ack.kv_tokens, ack.states) == (0, 1)
    cache.cache_controller.complete(ack)
    assert cache.loading_check() == 1
    assert_healthy(cache, held_states=1)
    assert locks(a) == (0, 0, 0, 0) and counters(cache) == (5, 0, 2, 0)
    assert state_matches(cache.mamba_pool, a.mamba_value, [1, 2, 3])
    assert state_matches(cache.mamba_pool, req.mamba_pool_idx, [1, 2, 3])
    cache.mamba_pool.free(req.mamba_pool_idx)
    assert_healthy(cache)
    m = cache.match_prefix([1, 2, 3])
    assert m.host_hit_length == 0 and m.prefix_len == 3


# -- scenario 22 -----------------------------------------------------------------------------------
P22 = [1, 2, 3, 4]
Q22 = list(range(5, 106))  # 101 tokens


def build_long_host_chain(cache):
    """P (4 tokens, device, state) → U (100 tokens, host, stateless) → L (1 token, ``KV=H
    M=h``): the 101-token child of P demoted and split by a lookup."""
    put(cache, P22)
    assert_healthy(cache)
    put(cache, P22 + Q22)
    assert_healthy(cache)
    assert cache.evict(101) == 101
    assert_healthy(cache)
    cache.match_prefix(P22 + Q22[:100])
    assert_healthy(cache)
    p, u, leaf = node_at(cache, P22), node_at(cache, P22 + Q22[:100]), node_at(cache, P22 + Q22)
    assert tiers(u) == ("H", "-") and tiers(leaf) == ("H", "h") and leaf.parent is u
    return p, u, leaf


def test_scenario_22_mem_quota():
    """Quota: a 100-token chain with nothing to restore and mem_quota 50 → load_back None, the
    ancestor P is unlocked again and init_load_back climbs to P. The quota counts what locking
    P made unevictable (100 > 103 - 4 is skipped, 100 > 104 - 4 is not). The same chain ending
    in a host state (101 tokens) is also refused by default (our B13 fix applies the quota when
    a state is restored); only with legacy B13 is it loaded anyway."""
    cache = hi_cache(device_kv_tokens=128)
    p, u, leaf = build_long_host_chain(cache)
    snapshot = (counters(cache), used(cache))

    device, node = cache.init_load_back(u, mem_quota=50)
    assert_healthy(cache)
    assert device.numel() == 0 and node is p
    assert locks(p) == (0, 0, 0, 0) and (counters(cache), used(cache)) == snapshot
    assert cache.load_back(u, mem_quota=103) is None
    assert_healthy(cache)

    device, node = cache.init_load_back(leaf, mem_quota=50)
    assert_healthy(cache)
    assert device.numel() == 0 and node is p and tiers(leaf) == ("H", "h")
    assert (counters(cache), used(cache)) == snapshot

    device = cache.load_back(u, mem_quota=104)
    assert_healthy(cache)
    assert device.numel() == 100 and tiers(u) == ("DH", "-")

    legacy = hi_cache(device_kv_tokens=128, legacy={"B13"})
    p, u, leaf = build_long_host_chain(legacy)
    device, node = legacy.init_load_back(leaf, mem_quota=50)
    assert_healthy(legacy)
    assert node is leaf and device.numel() == 101
    assert tiers(u) == ("DH", "-") and tiers(leaf) == ("DH", "dh")


# -- scenario 23 -----------------------------------------------------------------------------------
def test_scenario_23_device_full_during_load_evicts_and_retries():
    """Device full during load (16 device KV tokens): A[1,2,3] on device, B[4..8] demoted, then
    X (12 tokens) fills the device to 15. Loading B back fails to allocate 5 slots, so load_back
    evicts 5 tokens while A is locked: X (the only other device leaf) is written back and
    demoted, A stays, and the retry loads B."""
    cache = hi_cache(device_kv_tokens=16)
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    put(cache, list(range(1, 9)))
    assert_healthy(cache)
    assert cache.evict(5) == 5
    assert_healthy(cache)
    put(cache, list(range(20, 32)))
    assert_healthy(cache)
    a, b, x = node_at(cache, [1, 2, 3]), node_at(cache, list(range(1, 9))), node_at(cache, list(range(20, 32)))
    assert tiers(b) == ("H", "h") and used(cache)[0] == 15

    m = cache.match_prefix(list(range(1, 9)))
    assert_healthy(cache)
    assert m.last_host_node is b and m.host_hit_length == 5
    seen, stop = record(cache, {hm.EventKind.DEMOTED, hm.EventKind.LOAD_ISSUED, hm.EventKind.LOCK})
    device, node = cache.init_load_back(b)
    stop()
    assert_healthy(cache)
    assert node is b and device.numel() == 5
    assert [(e.kind, e.nodes[0]) for e in seen] == [
        (hm.EventKind.LOCK, a.id), (hm.EventKind.DEMOTED, x.id), (hm.EventKind.LOCK, b.id),
        (hm.EventKind.LOAD_ISSUED, b.id)]
    assert tiers(x) == ("H", "h") and tiers(a) == ("D", "d") and tiers(b) == ("DH", "dh")
    assert locks(a) == (1, 0, 0, 0) and locks(b) == (1, 1, 0, 0)
    assert used(cache) == (8, 2, 17, 2)
    assert cache.ready_to_load_host_cache() == 1
    assert_healthy(cache)
    assert cache.loading_check() == 1
    assert_healthy(cache)
    assert ld(cache) == {b.id} and lh(cache) == {x.id}


# -- scenario 24 -----------------------------------------------------------------------------------
def test_scenario_24_pinned_host_leaf_is_not_evictable():
    """Pinned host leaf: C ``KV=H`` with hr=1 is not in Lh and evict_host frees nothing; after
    release_host C is in Lh again and evict_host takes it. Pinning the state too (hmr=1) also
    takes C out of LRUh, so evict_mamba_host frees nothing either."""
    cache = hi_cache()
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    assert cache.evict(3) == 3
    assert_healthy(cache)
    c = node_at(cache, [1, 2, 3])
    assert tiers(c) == ("H", "h") and lh(cache) == {c.id}

    cache.protect_host(c)
    assert_healthy(cache)
    assert locks(c) == (0, 0, 1, 0) and lh(cache) == set()
    assert orders(cache)[2] == [c.id]
    assert cache.evict_host(HOST_KV_CAP) == 0
    assert_healthy(cache)
    assert in_tree(cache, c) and used(cache) == (0, 0, 3, 1)
    cache.release_host(c)
    assert_healthy(cache)
    assert locks(c) == (0, 0, 0, 0) and lh(cache) == {c.id}

    cache.protect_host(c, mamba=True)
    assert_healthy(cache)
    assert locks(c) == (0, 0, 1, 1) and lh(cache) == set() and orders(cache)[2] == []
    assert cache.evict_mamba_host(HOST_STATE_CAP) == 0
    assert_healthy(cache)
    assert cache.evict_host(HOST_KV_CAP) == 0
    assert_healthy(cache)
    cache.release_host(c, mamba=True)
    assert_healthy(cache)
    assert lh(cache) == {c.id} and orders(cache)[2] == [c.id]
    with pytest.raises(hm.LockError):
        cache.release_host(c)
    assert_healthy(cache)

    assert cache.evict_host(1) == 3
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and used(cache) == (0, 0, 0, 0)


# -- scenario 25 -----------------------------------------------------------------------------------
def test_scenario_25_evict_mamba_host():
    """evict_mamba_host: A (backed up first, so the LRU host state) and B both ``KV=H M=h``.
    The internal host node A only loses its host state; then the host leaf B goes whole (host KV
    and state) and the cascade deletes the now childless, stateless A."""
    cache = hi_cache()
    a, b = build_a_b(cache)
    assert cache.write_backup(a, write_back=True) == 3
    assert_healthy(cache)
    assert cache.writing_check(write_back=True) == 1
    assert_healthy(cache)
    assert cache.evict(5) == 5
    assert_healthy(cache)
    assert tiers(a) == tiers(b) == ("H", "h")
    assert orders(cache)[2] == [b.id, a.id] and lh(cache) == {b.id}
    assert used(cache) == (0, 0, 5, 2)

    assert cache.evict_mamba_host(1) == 1
    assert_healthy(cache)
    assert tiers(a) == ("H", "-") and tiers(b) == ("H", "h") and children_of(a) == {4: b.id}
    assert orders(cache)[2] == [b.id] and lh(cache) == {b.id}
    assert used(cache) == (0, 0, 5, 1)

    assert cache.evict_mamba_host(1) == 1
    assert_healthy(cache)
    assert not in_tree(cache, b) and not in_tree(cache, a) and cache.num_nodes() == 0
    assert orders(cache) == ([], [], []) and lh(cache) == set()
    assert used(cache) == (0, 0, 0, 0)


# -- scenario 26 -----------------------------------------------------------------------------------
def build_prefetch_tree(cache):
    """A[1,2,3] → X[4,5] on device with states, both backed up (explicit write-back writes,
    their storage backups finished), and a newer device leaf Y[20,21]."""
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    a, x = node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])
    assert cache.write_backup(a, write_back=True) == 3
    assert_healthy(cache)
    assert cache.write_backup(x, write_back=True) == 2
    assert_healthy(cache)
    assert cache.writing_check(write_back=True) == 2
    assert_healthy(cache)
    assert (a.host_ref_counter, x.host_ref_counter) == (1, 1), "storage backups pin them"
    assert cache.check_storage_progress() == 2
    assert_healthy(cache)
    put(cache, [20, 21])
    assert_healthy(cache)
    y = node_at(cache, [20, 21])
    assert tiers(a) == tiers(x) == ("DH", "dh")
    assert orders(cache)[:2] == ([y.id, x.id, a.id], [y.id, x.id, a.id])
    assert orders(cache)[2] == [x.id, a.id]
    return a, x, y


def test_scenario_26_prefetch_insert():
    """Prefetch insert: anchor A (device, state, backed up); 4 fetched tokens [4,5,6,7] whose
    first 2 equal the child X[4,5] → X is matched (those 2 prefetched host slots are freed) and a
    new host node N[6,7] hangs under X with the fetched state: ``KV=H M=h``, N ∈ Lh ∩ LRUh; X
    stays a device leaf. While the prefetch is in flight A is pinned (hr=hmr=1, out of LRUh).
    A and X are retimed and (B3 fixed) moved in both device LRU lists, so order = time."""
    cache = hi_cache(enable_storage=True)
    a, x, y = build_prefetch_tree(cache)
    assert cache.storage.store_prefix([1, 2, 3, 4, 5, 6, 7]) == 7
    assert_healthy(cache)
    times = (a.last_access_time, x.last_access_time)

    assert cache.prefetch_from_storage("r", a, [4, 5, 6, 7]) == 4
    assert_healthy(cache)
    assert locks(a) == (0, 0, 1, 1) and orders(cache)[2] == [x.id]
    assert "r" in cache.ongoing_prefetch
    assert used(cache) == (7, 3, 9, 3)

    assert cache.check_prefetch_progress("r") == 2
    assert_healthy(cache)
    n = node_at(cache, [1, 2, 3, 4, 5, 6, 7])
    assert n.id == 4 and n.parent is x and n.key.token_ids == [6, 7]
    assert tiers(n) == ("H", "h") and locks(n) == (0, 0, 0, 0)
    assert children_of(x) == {6: n.id} and children_of(a) == {4: x.id}
    assert lh(cache) == {n.id} and ld(cache) == {x.id, y.id}
    assert locks(a) == (0, 0, 0, 0) and cache.ongoing_prefetch == {}
    assert orders(cache) == ([x.id, a.id, y.id], [x.id, a.id, y.id], [a.id, n.id, x.id])
    assert a.last_access_time > times[0] and x.last_access_time > times[1]
    assert x.last_access_time > a.last_access_time > y.last_access_time
    assert used(cache) == (7, 3, 7, 3)

    m = cache.match_prefix([1, 2, 3, 4, 5, 6, 7])
    assert_healthy(cache)
    assert m.prefix_len == 5 and m.last_device_node is x and m.last_host_node is n
    assert m.host_hit_length == 2


def test_scenario_26_prefetch_without_state_page_and_duplicate_prefetch():
    """Without the state page in storage no host state slot is taken and N[6,7] is a stateless
    host leaf (in Lh, not in LRUh). A prefetch of tokens already in the tree ([4,5], whose state
    storage has from X's backup) allocates a host state slot, attaches nothing and frees it
    along with the fetched KV."""
    cache = hi_cache(enable_storage=True)
    a, x, y = build_prefetch_tree(cache)
    assert cache.storage.store_prefix([1, 2, 3, 4, 5, 6, 7], with_state=False) == 7
    assert_healthy(cache)
    assert cache.prefetch_from_storage("r", a, [4, 5, 6, 7]) == 4
    assert_healthy(cache)
    assert locks(a) == (0, 0, 1, 0) and used(cache) == (7, 3, 9, 2)
    assert cache.check_prefetch_progress("r") == 2
    assert_healthy(cache)
    n = node_at(cache, [1, 2, 3, 4, 5, 6, 7])
    assert tiers(n) == ("H", "-") and n.children == {}
    assert lh(cache) == {n.id} and n.id not in orders(cache)[2]
    assert used(cache) == (7, 3, 7, 2)

    before = used(cache)
    assert cache.prefetch_from_storage("r2", a, [4, 5]) == 2
    assert_healthy(cache)
    assert used(cache) == (7, 3, 9, 3) and locks(a) == (0, 0, 1, 1)
    assert cache.check_prefetch_progress("r2") == 0
    assert_healthy(cache)
    assert used(cache) == before and locks(a) == (0, 0, 0, 0)
    assert cache.num_nodes() == 4


# -- scenario 27 -----------------------------------------------------------------------------------
def chunked_prefill(cache, tokens, chunk, on_chunk=None) -> hm.Request:
    """Prefill ``tokens`` in chunks through cache_unfinished_req(chunked=True); the request's
    running state slot always holds the state of its prefilled tokens."""
    req = hm.Request(token_ids=list(tokens), kv_indices=torch.empty(0, dtype=torch.int64),
                     mamba_pool_idx=alloc_state(cache, []))
    for end in range(chunk, len(tokens) + 1, chunk):
        start = len(req.kv_indices)
        req.kv_indices = torch.cat((req.kv_indices, alloc_kv(cache, tokens[start:end], start)))
        write_state(cache.mamba_pool, req.mamba_pool_idx, tokens[:end])
        req.fill_len = end
        assert_healthy(cache, held_kv=end - start, held_states=1)
        cache.cache_unfinished_req(req, chunked=True)
        assert_healthy(cache, held_kv=0, held_states=1)
        if on_chunk is not None:
            on_chunk(req, end)
    req.fill_len = None
    return req


def test_scenario_27_chunked_prefill_backs_up_only_when_finished():
    """Chunked prefill (write_through): 3 chunks of 4 tokens through
    cache_unfinished_req(chunked=True) build N1 → N2 → N3 without any hit or backup (the request
    holds the lock on the newest node). cache_finished_req then inserts the whole prompt, which
    counts one hit per node and backs the chain up top-down; the tree keeps its own last state
    and the request's slot is freed."""
    cache = hi_cache(write_policy="write_through")
    tokens = list(range(1, 13))

    def after_chunk(req, end):
        assert req.cache_protected_len == end and len(req.last_node.key) == 4
        assert req.last_node.full_lock_ref == 1 and req.last_node.mamba_lock_ref == 1
        assert cache.ongoing_write_through == {}
        assert all(node.hit_count == 0 for node in cache.nodes())
        assert used(cache)[2:] == (0, 0), "nothing backed up during the prefill"

    req = chunked_prefill(cache, tokens, 4, after_chunk)
    n1, n2, n3 = node_at(cache, tokens[:4]), node_at(cache, tokens[:8]), node_at(cache, tokens)
    assert (n1.id, n2.id, n3.id) == (1, 2, 3) and req.last_node is n3
    assert all(tiers(n) == ("D", "d") for n in (n1, n2, n3))

    cache.cache_finished_req(req)
    assert_healthy(cache)
    assert list(cache.ongoing_write_through) == [n1.id, n2.id, n3.id]
    assert all(tiers(n) == ("DH", "dh") for n in (n1, n2, n3))
    assert [n.hit_count for n in (n1, n2, n3)] == [1, 1, 1]
    assert req.mamba_pool_idx is None and req.last_node is None
    assert used(cache) == (12, 3, 12, 3)
    assert cache.writing_check() == 3
    assert_healthy(cache)
    assert all(locks(n) == (0, 0, 0, 0) for n in (n1, n2, n3))
    assert ld(cache) == {n3.id}


# -- scenario 29 -----------------------------------------------------------------------------------
def test_scenario_29_split_of_a_backed_up_device_node():
    """Split of a backed-up device node (write_through): A[1..6] ``KV=DH M=dh`` with 2 hits,
    locked (fl=ml=1) and host-pinned (hr=hmr=1). A lookup of [1..4] splits it: the upper node U
    gets the first 4 device and host slots, inherits fl=1 (ml=0) but no pins and no hits; A keeps
    the last 2 slots on both tiers, its state, pins and hits. The release then unlocks both, and
    the two halves demote and match back with consistent host slices."""
    cache = hi_cache(write_policy="write_through")
    put(cache, [1, 2, 3, 4, 5, 6])
    assert_healthy(cache)
    assert cache.writing_check() == 1
    assert_healthy(cache)
    put(cache, [1, 2, 3, 4, 5, 6])
    assert_healthy(cache)
    a = node_at(cache, [1, 2, 3, 4, 5, 6])
    assert a.hit_count == 2 and tiers(a) == ("DH", "dh")
    dev, host = a.value.clone(), a.host_value.clone()
    assert cache.inc_lock_ref(a) == -6
    assert_healthy(cache)
    cache.protect_host(a, mamba=True)
    assert_healthy(cache)

    m = cache.match_prefix([1, 2, 3, 4])
    assert_healthy(cache)
    assert m.prefix_len == 0
    u = node_at(cache, [1, 2, 3, 4])
    assert u.id == 2 and a.parent is u and children_of(u) == {5: a.id}
    assert torch.equal(u.value, dev[:4]) and torch.equal(u.host_value, host[:4])
    assert torch.equal(a.value, dev[4:]) and torch.equal(a.host_value, host[4:])
    assert tiers(u) == ("DH", "-") and tiers(a) == ("DH", "dh")
    assert locks(u) == (1, 0, 0, 0) and locks(a) == (1, 1, 1, 1)
    assert (u.hit_count, a.hit_count) == (0, 2)
    assert counters(cache) == (0, 6, 0, 1)
    assert ld(cache) == set() and lh(cache) == set()
    assert orders(cache) == ([a.id, u.id], [a.id], [])

    assert cache.dec_lock_ref(a) == 6
    assert_healthy(cache)
    cache.release_host(a, mamba=True)
    assert_healthy(cache)
    assert locks(u) == locks(a) == (0, 0, 0, 0) and ld(cache) == {a.id}
    assert cache.evict(6) == 6
    assert_healthy(cache)
    assert tiers(u) == ("H", "-") and tiers(a) == ("H", "h") and lh(cache) == {a.id}
    m = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert_healthy(cache)
    assert m.host_hit_length == 6 and m.last_host_node is a


# -- scenario 30 -----------------------------------------------------------------------------------
def test_scenario_30_split_of_a_host_only_node_on_lookup():
    """Split of a host-only node on lookup: A[1..6] ``KV=H M=h``; a lookup of [1..4] splits it
    into U[1..4] ``KV=H M=-`` over A[5,6] ``KV=H M=h`` (host slices of the old host slots); the
    state stays below; U has a child so it is not in Lh; nothing is usable (no device part).
    Evicting the host leaf A then removes U by the cascade."""
    cache = hi_cache()
    put(cache, [1, 2, 3, 4, 5, 6])
    assert_healthy(cache)
    assert cache.evict(6) == 6
    assert_healthy(cache)
    a = node_at(cache, [1, 2, 3, 4, 5, 6])
    host = a.host_value.clone()

    m = cache.match_prefix([1, 2, 3, 4])
    assert_healthy(cache)
    assert m.prefix_len == 0 and m.last_device_node is cache.root_node
    assert m.last_host_node is cache.root_node and m.host_hit_length == 0
    u = node_at(cache, [1, 2, 3, 4])
    assert u.id == 2 and children_of(u) == {5: a.id}
    assert tiers(u) == ("H", "-") and tiers(a) == ("H", "h")
    assert torch.equal(u.host_value, host[:4]) and torch.equal(a.host_value, host[4:])
    assert lh(cache) == {a.id} and ld(cache) == set()
    assert orders(cache) == ([], [], [a.id])
    assert used(cache) == (0, 0, 6, 1)

    m = cache.match_prefix([1, 2, 3, 4, 5, 6])
    assert_healthy(cache)
    assert m.host_hit_length == 6 and m.last_host_node is a
    assert cache.evict_host(2) == 6
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and used(cache) == (0, 0, 0, 0)


# -- scenario 32 -----------------------------------------------------------------------------------
def build_backup_gap(cache):
    """write_through with host KV for 6 tokens: X[7..10] backed up and on device (not
    host-evictable, 2 host tokens left); P[1,2,3] cannot be backed up; then C[4,5] under P.
    Returns (x, p, c) after a lookup that makes X the newest."""
    put(cache, [7, 8, 9, 10])
    assert_healthy(cache)
    assert cache.writing_check() == 1
    assert_healthy(cache)
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    healthy = not cache.config.has_legacy("B4")  # legacy: C is backed up under P (I13 broken)
    put(cache, [1, 2, 3, 4, 5])
    if healthy:
        assert_healthy(cache)
    cache.writing_check()
    if healthy:
        assert_healthy(cache)
    x, p, c = node_at(cache, [7, 8, 9, 10]), node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])
    assert tiers(p) == ("D", "d")
    cache.match_prefix([7, 8, 9, 10])
    return x, p, c


def test_scenario_32_backup_gap_is_prevented():
    """B4 replay, NEW: the parent's backup fails (host full), so the child's backup is skipped
    (contiguity): C is device-only; evicting C deletes it (cascade stops at P's state) and P is
    then an ordinary device leaf that evict deletes. (OLD: see the legacy test.)"""
    cache = hi_cache(write_policy="write_through", host_kv_tokens=6)
    x, p, c = build_backup_gap(cache)
    assert_healthy(cache)
    assert tiers(c) == ("D", "d") and used(cache)[2] == 4
    assert ld(cache) == {x.id, c.id}
    assert cache.evict(2) == 2
    assert_healthy(cache)
    assert not in_tree(cache, c) and ld(cache) == {x.id, p.id}
    assert cache.evict(3) == 3
    assert_healthy(cache)
    assert children_of(cache.root_node) == {7: x.id}


def test_scenario_32_old_backup_gap_asserts_non_leaf():
    """B4 replay, OLD (legacy B4): the child C is backed up under the un-backed-up P; after C's
    demotion P is a device leaf that is not backed up, so evict deletes it with a host child
    still attached: ``non-leaf``."""
    cache = hi_cache(write_policy="write_through", host_kv_tokens=6, legacy={"B4"})
    x, p, c = build_backup_gap(cache)
    assert tiers(c) == ("DH", "dh") and p.host_value is None
    assert cache.evict(2) == 2
    assert tiers(c) == ("H", "h") and p in cache.evictable_full_device_leaves
    with pytest.raises(hm.CacheAssertionError, match=f"non-leaf, node.id={p.id}"):
        cache.evict(3)


# -- scenario 33 -----------------------------------------------------------------------------------
def build_full_unevictable_host(cache):
    """Host KV for 4 tokens, all taken by the pinned host node X[7..10]; then A[1,2,3] on
    device."""
    put(cache, [7, 8, 9, 10])
    assert_healthy(cache)
    assert cache.evict(4) == 4
    assert_healthy(cache)
    x = node_at(cache, [7, 8, 9, 10])
    cache.protect_host(x)
    assert_healthy(cache)
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    a = node_at(cache, [1, 2, 3])
    assert cache.host_kv_pool.available_size() == 0 and lh(cache) == set() and ld(cache) == {a.id}
    return x, a


def test_scenario_33_write_back_with_failed_backup_deletes_the_leaf():
    """B7 replay, NEW: write_back, host full and nothing host-evictable: evicting the leaf A
    cannot back it up, so A is deleted instead of demoted (KV and state freed); X is untouched.
    (OLD: ``not backuped``, see the legacy test.)"""
    cache = hi_cache(host_kv_tokens=4)
    x, a = build_full_unevictable_host(cache)
    assert cache.evict(3) == 3
    assert_healthy(cache)
    assert not in_tree(cache, a) and children_of(cache.root_node) == {7: x.id}
    assert used(cache) == (0, 0, 4, 1) and locks(x) == (0, 0, 1, 0)
    assert cache.ongoing_write_through == {}


def test_scenario_33_old_write_back_asserts_not_backuped():
    """B7 replay, OLD (legacy B7): the failed backup is ignored and the demotion asserts."""
    cache = hi_cache(host_kv_tokens=4, legacy={"B7"})
    x, a = build_full_unevictable_host(cache)
    with pytest.raises(hm.CacheAssertionError, match=f"not backuped, node.id={a.id}"):
        cache.evict(3)


# -- scenario 34 -----------------------------------------------------------------------------------
def tombstone_over_host_child():
    """write_back, host KV for 4 tokens: P[1,2,3] a device tombstone (a device leaf) whose only
    child C[4,5] is host-only. Returns (cache, P, C)."""
    cache = hi_cache(host_kv_tokens=4)
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    put(cache, [1, 2, 3, 4, 5])
    assert_healthy(cache)
    p, c = node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])
    assert cache.evict_mamba(1) == 1
    assert_healthy(cache)
    assert cache.evict(2) == 2
    assert_healthy(cache)
    assert tiers(p) == ("D", "-") and tiers(c) == ("H", "h")
    return cache, p, c


def test_scenario_34_leaf_removed_by_a_cascade_inside_a_write_is_skipped():
    """Stale heap entry (tiered): write_back with host KV for 4 tokens. P[1,2,3] is a device
    tombstone whose only child C[4,5] is host-only (so P is a device leaf); L[10,11,12] is an
    older device leaf. evict(4) pops L first; writing L back needs 3 host tokens, only 2 are
    free, so the write host-evicts C, and the cascade deletes P (childless, stateless, unpinned)
    — while P is still in the heap. The retry writes L and demotes it; P's heap entry is then
    skipped as stale. evict returns L's 3 tokens (P's 3 device tokens went through the host
    eviction's cascade, which evict does not count); every device slot is free."""
    cache, p, c = tombstone_over_host_child()
    put(cache, [10, 11, 12])
    assert_healthy(cache)
    leaf = node_at(cache, [10, 11, 12])
    cache.match_prefix([1, 2, 3, 4, 5])  # C's host state makes it usable: P and C retimed
    assert_healthy(cache)
    assert tiers(p) == ("D", "-") and tiers(c) == ("H", "h")
    assert ld(cache) == {p.id, leaf.id} and lh(cache) == {c.id}
    assert leaf.last_access_time < p.last_access_time
    assert used(cache) == (6, 1, 2, 1)

    seen, stop = record(cache, {hm.EventKind.CASCADE, hm.EventKind.HOST_LEAF_EVICTED,
                                hm.EventKind.NODE_DELETED, hm.EventKind.DEMOTED})
    assert cache.evict(4) == 3
    stop()
    assert_healthy(cache)
    kinds = [(e.kind, e.nodes[0]) for e in seen if e.kind is not hm.EventKind.CASCADE or "stale" in e.text]
    assert kinds == [(hm.EventKind.HOST_LEAF_EVICTED, c.id), (hm.EventKind.NODE_DELETED, p.id),
                     (hm.EventKind.DEMOTED, leaf.id), (hm.EventKind.CASCADE, p.id)]
    assert not in_tree(cache, p) and not in_tree(cache, c)
    assert children_of(cache.root_node) == {10: leaf.id} and tiers(leaf) == ("H", "h")
    assert ld(cache) == set() and lh(cache) == {leaf.id}
    assert counters(cache) == (0, 0, 0, 0)
    assert used(cache) == (0, 0, 3, 1)


def test_scenario_34_leaf_whose_own_write_host_evicts_its_only_child():
    """Stale entry, worst case: the leaf being evicted is the node the cascade would remove.
    write_back with host KV for 4 tokens; P[1,2,3] is a device tombstone whose only child C[4,5]
    is host-only (2 host tokens), so P is a device leaf. evict(3) pops P; writing P back needs 3
    host tokens, so the write host-evicts C — P is childless and stateless then, but locked for
    its own write, so the cascade stops at P. The retry writes P and P is demoted: a stateless
    host leaf (tolerated I6, it is in Lh). (Before the write lock, the cascade deleted P and the
    demotion double-freed its device slots.)"""
    cache, p, c = tombstone_over_host_child()
    assert ld(cache) == {p.id} and lh(cache) == {c.id} and used(cache) == (3, 0, 2, 1)

    seen, stop = record(cache, {hm.EventKind.HOST_LEAF_EVICTED, hm.EventKind.NODE_DELETED,
                                hm.EventKind.DEMOTED, hm.EventKind.LEAF_EVICTED})
    assert cache.evict(3) == 3
    stop()
    assert_healthy(cache)
    assert [(e.kind, e.nodes[0]) for e in seen] == [(hm.EventKind.HOST_LEAF_EVICTED, c.id),
                                                   (hm.EventKind.DEMOTED, p.id)]
    assert not in_tree(cache, c) and in_tree(cache, p) and p.children == {}
    assert tiers(p) == ("H", "-") and locks(p) == (0, 0, 0, 0)
    assert ld(cache) == set() and lh(cache) == {p.id}
    assert counters(cache) == (0, 0, 0, 0) and used(cache) == (0, 0, 3, 0)
    assert cache.evict_host(1) == 3
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and used(cache) == (0, 0, 0, 0)


# -- beyond the scenarios: transfers in flight -------------------------------------------------------
def test_explicit_write_through_backup_under_write_back_is_unlocked_by_its_ack():
    """Under write_back, an explicit write_backup(A) (default write_back=False) behaves like a
    write-through write: A is locked until its ack, and writing_check releases the lock."""
    cache = hi_cache(manual_acks=True)
    put(cache, [1, 2, 3])
    a = node_at(cache, [1, 2, 3])
    assert cache.write_backup(a) == 3
    assert_healthy(cache)
    assert locks(a) == (1, 1, 0, 0) and cache.ongoing_write_through == {a.id: a}
    cache.cache_controller.complete()
    assert cache.writing_check() == 1
    assert_healthy(cache)
    assert locks(a) == (0, 0, 0, 0) and cache.ongoing_write_through == {}


def test_explicit_backup_lock_survives_a_write_back_eviction_drain():
    """Same explicit write_backup(A) under write_back, but before its ack is processed another
    leaf B is evicted; the eviction's blocking drain also consumes A's ack. Expected: A's lock
    is released with its ack (A evictable again)."""
    cache = hi_cache()
    put(cache, [1, 2, 3])
    a = node_at(cache, [1, 2, 3])
    assert cache.write_backup(a) == 3
    put(cache, [7, 8])
    b = node_at(cache, [7, 8])
    assert cache.evict(2) == 2
    assert tiers(b) == ("H", "h")
    assert cache.ongoing_write_through == {}
    assert locks(a) == (0, 0, 0, 0)
    assert a in cache.evictable_full_device_leaves


def start_in_flight(cache, what: str) -> None:
    """Leave one transfer of kind ``what`` in flight (manual acks)."""
    if what == "write":  # a write-through write whose ack is pending
        assert cache.write_backup(node_at(cache, [1, 2, 3])) == 3
    elif what == "load":  # a load queued by init_load_back, not started yet
        node = node_at(cache, [1, 2, 3])
        assert cache.evict(3) == 3
        device, _ = cache.init_load_back(node)
        assert device.numel() == 3
    else:  # a storage prefetch holding fresh host slots
        cache.storage.store_prefix([9, 8, 7, 6])
        assert cache.prefetch_from_storage("r", cache.root_node, [9, 8, 7, 6]) == 4


@pytest.mark.parametrize("what", ["write", "load", "prefetch"])
def test_reset_with_a_transfer_in_flight(what):
    """reset() while a transfer is in flight must either refuse (InvalidInputError, nothing
    changed) or finish/cancel it: afterwards the cache is healthy (no stale ack, no leaked
    prefetch slot), and a new tree filling every device slot keeps its bytes when the dropped
    load would have been issued."""
    cache = hi_cache(manual_acks=True, enable_storage=True)
    put(cache, [1, 2, 3])
    start_in_flight(cache, what)
    assert_healthy(cache)
    try:
        cache.reset()
    except hm.InvalidInputError:
        assert_healthy(cache)
        return
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and used(cache) == (0, 0, 0, 0)
    put(cache, list(range(100, 100 + KV_CAP)))
    cache.ready_to_load_host_cache()
    for ack in cache.cache_controller.in_flight():
        cache.cache_controller.complete(ack)
    cache.check_hicache_events()
    assert_healthy(cache)


# -- beyond the scenarios: a lock taken while the node is on host only ---------------------------------
@pytest.mark.parametrize("how", ["load_back", "unevict"])
def test_lock_taken_on_a_host_only_node_stays_balanced_when_it_returns_to_device(how):
    """Scenario 17's chain A→B on host; a holder locks B while B is host-only (nothing on device
    to protect). Then B returns to device — through init_load_back(B) (locked until its ack) or
    through an insert of [1..5] that adopts request slots (unevict). The holder's release must
    leave every lock balanced: the load stays locked until its ack, nothing goes negative, and
    the release itself succeeds."""
    cache = hi_cache()
    a, b = demote_chain(cache)
    assert cache.inc_lock_ref(b) == 0
    assert_healthy(cache)
    if how == "load_back":
        device, node = cache.init_load_back(b)
        assert node is b and device.numel() == 5
    else:
        put(cache, [1, 2, 3, 4, 5], reuse=False)
    assert tiers(a)[0] == tiers(b)[0] == "DH"
    assert_healthy(cache)
    cache.dec_lock_ref(b)
    assert_healthy(cache)
    cache.ready_to_load_host_cache()
    cache.loading_check()
    assert_healthy(cache)
    assert locks(a) == locks(b) == (0, 0, 0, 0)


def test_write_back_room_on_host_cascades_into_device_tombstones_uncounted_as_upstream() -> None:
    """evict(1) under write_back writes the leaf to a full host tier; making host room deletes a
    host leaf whose cascade deletes four device tombstones above it. Five device tokens leave
    the tree and reach the pool; evict counts only the leaf it evicted (SGLang 0.5.11's count)."""
    from himamba.sim.fuzz import make_cache
    from himamba.sim.ops import DriverState, apply

    script = {"cache": "tiered", "manual_acks": True, "seed": 0,
              "config": {"device": "cpu", "page_size": 1, "device_kv_tokens": 7, "host_kv_tokens": 1,
                         "device_mamba_slots": 3, "host_mamba_slots": 1, "write_policy": "write_back",
                         "legacy": [], "enable_storage": True}}
    cache, state = make_cache(script), DriverState()
    for op in ({"op": "chunked", "tokens": [2, 38, 9, 36, 21], "chunk": 1},
               {"op": "chunked", "tokens": [26, 39, 25], "chunk": 1}, {"op": "ack", "k": 0}, {"op": "events"},
               {"op": "load", "tokens": [2, 38, 9, 36, 21], "quota": 4}):
        apply(cache, state, op)
        assert_healthy(cache)
    total, free = cache.total_size(), cache.kv_pool.available_size()
    assert cache.evict(1) == 1
    assert total - cache.total_size() == cache.kv_pool.available_size() - free == 5
    assert cache.match_prefix([2, 38, 9, 36, 21]).device_indices.numel() == 0  # the cascade took the path
    assert_healthy(cache)
