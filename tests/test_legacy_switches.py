"""Legacy switches (himamba.cache.legacy): each known bug of the reference (section 5) can be
turned back on. For every switch the same steps run twice — with the switch on, the old symptom
appears; with it off (the default), it does not and the cache stays healthy.

All caches are tiered (HiMambaRadixCache) on the CPU with page size 1; ``assert_healthy`` runs
after the steps of the fixed configuration, and before a legacy symptom fires.
"""

from __future__ import annotations

import pytest
import torch
from helpers import alloc_kv, alloc_state, assert_healthy, node_at, put

import himamba as hm
from himamba.memory.content import write_state

SWITCHES = {
    "B1": "cascade_ignores_host_pins",
    "B2": "chunked_not_forwarded",
    "B3": "host_insert_skips_full_lru",
    "B4": "backup_ignores_contiguity",
    "B5": "old_host_leaf_rule",
    "B6": "host_insert_under_unbacked_parent",
    "B7": "write_back_ignores_failed_backup",
    "B8": "evict_mamba_takes_locked_leaf",
    "B10": "lock_release_drops_state_lock",
    "B13": "quota_ignored_with_restore",
    "B14": "load_back_unpinned",
    "B15": "write_back_drain_keeps_locks",
    "B16": "evict_pushes_parent",
    "B17": "loaded_nodes_at_mru",
    "B18": "backup_host_room_unlocked",
    "B19": "upstream_failure_paths",
    "B20": "load_ack_pops_strictly",
    "B21": "device_tree_strict_asserts",
    "B22": "cow_lock_leak",
    "B23": "load_back_from_last_host",
}

ON_OFF = pytest.mark.parametrize("legacy", [True, False], ids=["switch_on", "switch_off"])


def hi_cache(bug: str, legacy: bool, manual_acks: bool = False, **config) -> hm.HiMambaRadixCache:
    config.setdefault("write_policy", "write_back")
    config["legacy"] = {bug} if legacy else set()
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", **config), manual_acks=manual_acks)
    assert cache.config.has_legacy(bug) is legacy
    return cache


def tiers(node) -> tuple[str, str]:
    return node.kv_tier(), node.state_tier()


def in_tree(cache, node) -> bool:
    return any(n is node for n in cache.nodes())


def violations(cache, invariant: str) -> list[hm.Violation]:
    return [v for v in hm.check_invariants(cache, held_kv=0, held_states=0) if v.invariant == invariant]


def a_b(cache):
    """A[1,2,3] (state) → B[4,5] (state)."""
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 3, 4, 5])
    return node_at(cache, [1, 2, 3]), node_at(cache, [1, 2, 3, 4, 5])


# -- switch names ---------------------------------------------------------------------------------
def test_default_config_has_no_legacy_switch():
    assert hm.CacheConfig().legacy == frozenset()
    assert not any(hm.CacheConfig().has_legacy(bug) for bug in SWITCHES)


def test_switch_table_lists_exactly_the_switchable_bugs():
    assert set(hm.LEGACY_BUGS) == set(SWITCHES)
    assert {bug.id: bug.alias for bug in hm.LEGACY_BUGS.values()} == SWITCHES


@pytest.mark.parametrize("bug_id", sorted(SWITCHES))
def test_alias_and_id_map_to_the_id(bug_id):
    alias = SWITCHES[bug_id]
    assert hm.CacheConfig(legacy={alias}).legacy == frozenset({bug_id})
    assert hm.CacheConfig(legacy={bug_id}).legacy == frozenset({bug_id})
    assert hm.CacheConfig(legacy={bug_id.lower()}).legacy == frozenset({bug_id})
    assert hm.CacheConfig(legacy=[alias, bug_id]).legacy == frozenset({bug_id})
    assert hm.CacheConfig().replace(legacy=[alias]).legacy == frozenset({bug_id})
    assert hm.CacheConfig(legacy={alias}).has_legacy(bug_id)


def test_several_switches_at_once():
    config = hm.CacheConfig(legacy={"B1", "chunked_not_forwarded", "b13"})
    assert config.legacy == frozenset({"B1", "B2", "B13"})


@pytest.mark.parametrize("name", ["B9", "B11", "B12", "B99", "nonsense", "cascade_ignores_host_pin", ""])
def test_unknown_switch_name_raises(name):
    with pytest.raises(hm.InvalidInputError, match="unknown legacy switch"):
        hm.CacheConfig(legacy={name})
    with pytest.raises(hm.InvalidInputError):
        hm.CacheConfig().replace(legacy=[name])


def test_non_string_switch_name_raises():
    with pytest.raises(hm.InvalidInputError):
        hm.CacheConfig(legacy={1})


# -- B1 ---------------------------------------------------------------------------------------------
@ON_OFF
def test_b1_cascade_and_host_pins(legacy):
    """B1: P[1,2,3] backed up without a state (tombstoned first) and its child C[4,5], both
    demoted by write-back; storage on with manual acks, so each write ack pins its node
    (P: hr=1, hmr=0). C's storage backup finishes, then evict_host removes C. ON: the cascade
    deletes the pinned P; when P's storage ack releases it, the detached P joins Lh and the next
    evict_host fails with ``parent does not have child key``. OFF: the cascade stops at P, which
    later leaves normally."""
    cache = hi_cache("B1", legacy, manual_acks=True, enable_storage=True)
    p, c = a_b(cache)
    assert cache.evict_mamba(1) == 1
    assert cache.evict(5) == 5
    assert_healthy(cache)
    assert tiers(p) == ("H", "-") and (p.host_ref_counter, p.host_mamba_ref_counter) == (1, 0)
    ops = {op.payload["node"].id: op for op in cache.storage.ops}
    cache.storage.complete(ops[c.id])
    assert cache.check_storage_progress() == 1
    assert_healthy(cache)

    assert cache.evict_host(2) == 2
    assert not in_tree(cache, c)
    assert in_tree(cache, p) is not legacy
    cache.storage.complete(ops[p.id])
    assert cache.check_storage_progress() == 1
    assert p in cache.evictable_full_host_leaves
    if legacy:
        with pytest.raises(hm.CacheAssertionError, match="parent does not have child key"):
            cache.evict_host(1)
        return
    assert_healthy(cache)
    assert cache.evict_host(1) == 3
    assert_healthy(cache)
    assert cache.num_nodes() == 0 and cache.host_kv_pool.available_size() == cache.host_kv_pool.capacity


# -- B2 ---------------------------------------------------------------------------------------------
@ON_OFF
def test_b2_chunked_prefill_writes_every_chunk_to_host(legacy):
    """B2 (write_through): a 12-token prompt prefilled in 3 chunks through
    cache_unfinished_req(req, chunked=True). ON: the flag is dropped, every chunk counts a hit
    and its node (KV and a state) is backed up at once: 4, 8, 12 host tokens and 1, 2, 3 host
    states after the chunks. OFF: nothing reaches host until cache_finished_req; in the end both
    have the same chain on host."""
    cache = hi_cache("B2", legacy, write_policy="write_through")
    tokens = list(range(1, 13))
    req = hm.Request(token_ids=tokens, kv_indices=torch.empty(0, dtype=torch.int64),
                     mamba_pool_idx=alloc_state(cache, []))
    host_usage = []
    for end in (4, 8, 12):
        start = len(req.kv_indices)
        req.kv_indices = torch.cat((req.kv_indices, alloc_kv(cache, tokens[start:end], start)))
        write_state(cache.mamba_pool, req.mamba_pool_idx, tokens[:end])
        req.fill_len = end
        cache.cache_unfinished_req(req, chunked=True)
        cache.writing_check()
        assert_healthy(cache, held_kv=0, held_states=1)
        host_usage.append((cache.host_kv_pool.capacity - cache.host_kv_pool.available_size(),
                           cache.host_mamba_pool.capacity - cache.host_mamba_pool.available_size()))
    if legacy:
        assert host_usage == [(4, 1), (8, 2), (12, 3)]
    else:
        assert host_usage == [(0, 0), (0, 0), (0, 0)]
    req.fill_len = None
    cache.cache_finished_req(req)
    cache.writing_check()
    assert_healthy(cache)
    nodes = [node_at(cache, tokens[:end]) for end in (4, 8, 12)]
    assert all(tiers(n) == ("DH", "dh") for n in nodes)
    assert cache.host_kv_pool.available_size() == cache.host_kv_pool.capacity - 12


# -- B3 ---------------------------------------------------------------------------------------------
@ON_OFF
def test_b3_prefetch_through_device_nodes_and_full_lru_order(legacy):
    """B3: anchor A[1,2,3] → X[4,5] on device (backed up), then a newer device leaf Y. A prefetch
    of [4,5,6,7] under A walks through X and retimes A and X. ON: neither moves in the full LRU
    (nor A in the mamba LRU), so list order no longer equals time order: check_invariants reports
    I9. OFF: both move to the front; no violation."""
    cache = hi_cache("B3", legacy, enable_storage=True)
    a, x = a_b(cache)
    cache.write_backup(a, write_back=True)
    cache.write_backup(x, write_back=True)
    cache.writing_check(write_back=True)
    cache.check_storage_progress()
    put(cache, [20, 21])
    y = node_at(cache, [20, 21])
    assert_healthy(cache)
    assert cache.full_lru_list.order() == [y.id, x.id, a.id]
    cache.storage.store_prefix([1, 2, 3, 4, 5, 6, 7])
    assert cache.prefetch_from_storage("r", a, [4, 5, 6, 7]) == 4
    assert cache.check_prefetch_progress("r") == 2
    assert x.last_access_time > a.last_access_time > y.last_access_time
    i9 = violations(cache, "I9")
    if legacy:
        assert cache.full_lru_list.order() == [y.id, x.id, a.id]
        assert any("full LRU" in v.message for v in i9)
        assert any("mamba LRU" in v.message for v in i9)
    else:
        assert i9 == []
        assert cache.full_lru_list.order() == [x.id, a.id, y.id]
        assert_healthy(cache)


# -- B4 ---------------------------------------------------------------------------------------------
@ON_OFF
def test_b4_backup_gap_and_non_leaf(legacy):
    """B4 (write_through, host KV for 6 tokens, 4 held by X which stays on device): P[1,2,3]
    cannot be backed up; its child C[4,5] fits. ON: C is backed up anyway (I13 broken), demoted
    by evict, and evicting P asserts ``non-leaf``. OFF: C's backup is skipped, C is deleted,
    then P."""
    cache = hi_cache("B4", legacy, write_policy="write_through", host_kv_tokens=6)
    put(cache, [7, 8, 9, 10])
    cache.writing_check()
    p, c = a_b(cache)
    cache.writing_check()
    cache.match_prefix([7, 8, 9, 10])
    assert p.host_value is None
    assert (c.host_value is not None) is legacy
    if legacy:
        assert [v.node_id for v in violations(cache, "I13")] == [c.id]
        assert cache.evict(2) == 2
        assert tiers(c) == ("H", "h")
        with pytest.raises(hm.CacheAssertionError, match=f"non-leaf, node.id={p.id}"):
            cache.evict(3)
        return
    assert_healthy(cache)
    assert cache.evict(5) == 5
    assert_healthy(cache)
    assert not in_tree(cache, c) and not in_tree(cache, p)


# -- B5 ---------------------------------------------------------------------------------------------
def two_host_leaves(cache):
    """C[1,2,3] demoted first, D[7,8] later: both ``KV=H M=h`` host leaves, C the LRU host state."""
    put(cache, [1, 2, 3])
    assert cache.evict(3) == 3
    put(cache, [7, 8])
    assert cache.evict(2) == 2
    c, d = node_at(cache, [1, 2, 3]), node_at(cache, [7, 8])
    assert cache.mamba_host_lru_list.order() == [d.id, c.id]
    return c, d


@ON_OFF
def test_b5_pinned_state_stays_in_host_lru_and_is_skipped(legacy):
    """B5, host LRU: C's host KV and state are pinned. ON: C stays in the host LRU and
    evict_mamba_host skips it (old rule) to take D. OFF: a pinned state leaves the host LRU, so
    D is the only candidate. Either way C survives with its state and D goes."""
    cache = hi_cache("B5", legacy)
    c, d = two_host_leaves(cache)
    cache.protect_host(c, mamba=True)
    assert cache.mamba_host_lru_list.order() == ([d.id, c.id] if legacy else [d.id])
    assert cache.mamba_host_lru_list.lru_no_lock() is (c if legacy else d)
    assert cache.evict_mamba_host(1) == 1
    assert_healthy(cache)
    assert not in_tree(cache, d) and tiers(c) == ("H", "h")
    cache.release_host(c, mamba=True)
    assert_healthy(cache)
    assert cache.mamba_host_lru_list.order() == [c.id]


@ON_OFF
def test_b5_old_host_leaf_rule_ignores_the_state_pin(legacy):
    """B5, host leaves: C[1,2,3] → D[4,5], both ``KV=H M=h``. C keeps a state pin (hmr=1) after
    its KV pin is released (hr=0). evict_host(2) deletes the leaf D and recomputes C's status.
    ON: the old rule counts only hr, so C becomes a host leaf and the next evict_host deletes it,
    pinned host state and all. OFF: C is no host leaf while its state is pinned; evict_host
    frees nothing until the pin is given back."""
    cache = hi_cache("B5", legacy)
    c, d = a_b(cache)
    assert cache.evict(5) == 5
    assert tiers(c) == tiers(d) == ("H", "h")
    cache.protect_host(c, mamba=True)
    cache.release_host(c)  # the KV pin goes, the state pin stays
    assert (c.host_ref_counter, c.host_mamba_ref_counter) == (0, 1)
    assert_healthy(cache)
    assert cache.evict_host(2) == 2
    assert not in_tree(cache, d) and in_tree(cache, c)
    assert (c in cache.evictable_full_host_leaves) is legacy
    if legacy:
        assert cache.evict_host(3) == 3
        assert not in_tree(cache, c) and c.host_mamba_ref_counter == 1
        return
    assert_healthy(cache)
    assert cache.evict_host(3) == 0
    assert_healthy(cache)
    assert in_tree(cache, c) and tiers(c) == ("H", "h")
    cache.protect_host(c)
    cache.release_host(c, mamba=True)  # both pins given back
    assert_healthy(cache)
    assert c in cache.evictable_full_host_leaves
    assert cache.evict_host(3) == 3
    assert_healthy(cache)
    assert cache.num_nodes() == 0


# -- B6 ---------------------------------------------------------------------------------------------
@ON_OFF
def test_b6_prefetch_under_a_device_node_that_is_not_backed_up(legacy):
    """B6 (write_through_selective, storage on): X[1,2,3] was inserted once, so it is on device
    and not backed up. A prefetch of [1..5] from the root walks through X. ON: the fetched
    [4,5] hangs under X as a host node (I13 broken) and evicting X asserts ``non-leaf``. OFF: the
    remainder is refused (host KV and the state slot freed) and X evicts normally."""
    cache = hi_cache("B6", legacy, write_policy="write_through_selective", enable_storage=True)
    put(cache, [1, 2, 3])
    x = node_at(cache, [1, 2, 3])
    assert x.host_value is None
    cache.storage.store_prefix([1, 2, 3, 4, 5])
    assert cache.prefetch_from_storage("r", cache.root_node, [1, 2, 3, 4, 5]) == 5
    assert_healthy(cache)
    used = cache.check_prefetch_progress("r")
    if legacy:
        assert used == 2
        n = node_at(cache, [1, 2, 3, 4, 5])
        assert n.parent is x and tiers(n) == ("H", "h")
        assert [v.node_id for v in violations(cache, "I13")] == [n.id]
        assert x in cache.evictable_full_device_leaves
        with pytest.raises(hm.CacheAssertionError, match=f"non-leaf, node.id={x.id}"):
            cache.evict(3)
        return
    assert used == 0
    assert_healthy(cache)
    assert x.children == {}
    assert cache.host_kv_pool.available_size() == cache.host_kv_pool.capacity
    assert cache.host_mamba_pool.available_size() == cache.host_mamba_pool.capacity
    assert cache.evict(3) == 3
    assert_healthy(cache)
    assert cache.num_nodes() == 0


# -- B7 ---------------------------------------------------------------------------------------------
@ON_OFF
def test_b7_write_back_with_failed_backup(legacy):
    """B7 (write_back, host KV for 4 tokens, all held by the pinned host node X): evicting A
    cannot back it up. ON: A is demoted anyway: ``not backuped``. OFF: A is deleted."""
    cache = hi_cache("B7", legacy, host_kv_tokens=4)
    put(cache, [7, 8, 9, 10])
    assert cache.evict(4) == 4
    x = node_at(cache, [7, 8, 9, 10])
    cache.protect_host(x)
    put(cache, [1, 2, 3])
    a = node_at(cache, [1, 2, 3])
    assert_healthy(cache)
    if legacy:
        with pytest.raises(hm.CacheAssertionError, match=f"not backuped, node.id={a.id}"):
            cache.evict(3)
        return
    assert cache.evict(3) == 3
    assert_healthy(cache)
    assert not in_tree(cache, a) and in_tree(cache, x)


# -- B8 ---------------------------------------------------------------------------------------------
@ON_OFF
def test_b8_evict_mamba_and_a_full_locked_leaf(legacy):
    """B8: A[1,2,3] is tombstoned and locked (a request holds it), its child B goes (demoted,
    then host-evicted; the cascade stops at the locked A), then an insert of [1,2,3] gives A a
    state again: A is a childless leaf with ml=0, fl=1. ON: evict_mamba picks it and asserts
    ``evict device leaf: full_lock_ref mismatch``. OFF: it is skipped (0 freed) until the lock
    is released, then evicted normally."""
    cache = hi_cache("B8", legacy)
    a, b = a_b(cache)
    assert cache.evict_mamba(1) == 1
    assert cache.inc_lock_ref(a) == -3
    assert cache.evict(2) == 2
    assert cache.evict_host(2) == 2
    assert a.children == {} and in_tree(cache, a)
    put(cache, [1, 2, 3])
    assert_healthy(cache)
    assert (a.full_lock_ref, a.mamba_lock_ref) == (1, 0) and a.mamba_value is not None
    if legacy:
        with pytest.raises(hm.CacheAssertionError, match="evict device leaf: full_lock_ref mismatch"):
            cache.evict_mamba(1)
        return
    assert cache.evict_mamba(1) == 0
    assert_healthy(cache)
    assert tiers(a) == ("D", "d")
    cache.dec_lock_ref(a)
    assert_healthy(cache)
    assert cache.evict_mamba(1) == 1
    assert_healthy(cache)
    assert tiers(a) == ("H", "h")


# -- B10 --------------------------------------------------------------------------------------------
@ON_OFF
def test_b10_release_of_a_tombstone_lock_drops_a_later_state_lock(legacy):
    """B10: A[1,2,3] (with child B) is tombstoned. Holder 1 locks A (no state to lock); an insert
    attaches a state to A; holder 2 locks A (ml=1). Holder 1 releases. ON: that release takes
    holder 2's state lock (ml=0), so evict_mamba frees A's state while holder 2 still holds A.
    OFF: ml stays 1 and evict_mamba only takes B's state."""
    cache = hi_cache("B10", legacy)
    a, b = a_b(cache)
    assert cache.evict_mamba(1) == 1 and a.mamba_value is None
    cache.inc_lock_ref(a)  # holder 1
    put(cache, [1, 2, 3])
    assert a.mamba_value is not None and a.mamba_lock_ref == 0
    cache.inc_lock_ref(a)  # holder 2
    assert (a.full_lock_ref, a.mamba_lock_ref) == (2, 1)
    cache.dec_lock_ref(a)  # holder 1 releases
    assert_healthy(cache)
    assert a.full_lock_ref == 1
    assert a.mamba_lock_ref == (0 if legacy else 1)
    assert cache.mamba_protected_size_ == (0 if legacy else 1)

    freed = cache.evict_mamba(cache.mamba_pool.capacity)
    assert_healthy(cache)
    assert tiers(b) == ("H", "h")
    if legacy:
        assert freed == 2 and a.mamba_value is None, "holder 2's state is gone"
    else:
        assert freed == 1 and a.mamba_value is not None
    cache.dec_lock_ref(a)  # holder 2 releases
    assert_healthy(cache)
    assert (a.full_lock_ref, a.mamba_lock_ref) == (0, 0)


# -- B13 --------------------------------------------------------------------------------------------
@ON_OFF
def test_b13_quota_with_a_restored_state(legacy):
    """B13 (scenario 22): P (4 tokens, device) → U (100 host tokens, stateless) → L (1 token,
    ``KV=H M=h``). init_load_back(L, mem_quota=50) must restore L's state. ON: the quota is
    ignored because a state is restored and all 101 tokens are loaded. OFF: the quota applies;
    nothing is loaded and init_load_back climbs to P."""
    cache = hi_cache("B13", legacy, device_kv_tokens=128)
    head, tail = [1, 2, 3, 4], list(range(5, 106))
    put(cache, head)
    put(cache, head + tail)
    assert cache.evict(101) == 101
    cache.match_prefix(head + tail[:100])
    p, leaf = node_at(cache, head), node_at(cache, head + tail)
    assert_healthy(cache)
    device, node = cache.init_load_back(leaf, mem_quota=50)
    assert_healthy(cache)
    if legacy:
        assert node is leaf and device.numel() == 101 and tiers(leaf) == ("DH", "dh")
        assert cache.ongoing_load_back == {leaf.id: leaf}
    else:
        assert node is p and device.numel() == 0 and tiers(leaf) == ("H", "h")
        assert cache.ongoing_load_back == {} and p.full_lock_ref == 0


def test_every_switch_is_read_where_the_cache_is_built_and_says_where_it_acts():
    """Legacy switches are read in cache/build.py only (the invariant checker reads B5 to know
    which rule to check); each entry's ``where`` names functions that exist."""
    import pathlib
    import re

    import himamba.cache as pkg
    from himamba.cache import (
        backup,
        device_tier,
        eviction,
        facade,
        hi_mamba,
        host_tier,
        load_back,
        lookup,
        policies,
        request_flow,
        storage,
    )

    folder = pathlib.Path(pkg.__file__).parent
    readers = sorted(p.name for p in folder.glob("*.py") if "has_legacy(" in p.read_text())
    assert readers == ["build.py", "config.py", "host_invariants.py"]
    classes = {}
    for module in (backup, device_tier, eviction, facade, hi_mamba, host_tier, load_back, lookup, policies, request_flow, storage):
        classes.update({name: obj for name, obj in vars(module).items() if isinstance(obj, type)})
    for bug in hm.LEGACY_BUGS.values():
        named = re.findall(r"\b([A-Z][A-Za-z]+)\.([a-z_]+)\b", bug.where)
        assert named, f"{bug.id}: 'where' names no Class.function"
        for cls, fn in named:
            assert hasattr(classes[cls], fn), f"{bug.id}: {cls}.{fn} does not exist"


@pytest.mark.parametrize("legacy", [False, True])
def test_b1_replays_through_the_public_api(legacy):
    """A caller pins P (host-only, stateless, two host-only children); evict_host takes the
    children. With B1 the cascade deletes the pinned P anyway; its pin is still released as
    upstream releases it, P rejoins the host-leaf set, and the next evict_host fails with
    upstream's assertion. Without B1 the cascade stops at the pin and nothing fails."""
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", legacy={"B1"} if legacy else set()))
    for tokens in ([1, 2, 3, 4], [1, 2, 5, 6]):
        put(cache, tokens)
    cache.writing_check()
    cache.evict(cache.total_size())
    p = node_at(cache, [1, 2])
    assert p.value is None and p.host_value is not None and p.mamba_host_value is None
    cache.protect_host(p)
    cache.evict_host(4)  # both children, then the cascade reaches P
    assert (cache.node_at([1, 2]) is None) == legacy
    cache.release_host(p)
    if legacy:
        with pytest.raises(hm.CacheAssertionError, match="parent does not have child key"):
            cache.evict_host(2)
    else:
        assert_healthy(cache)
        assert cache.evict_host(2) == 2 and cache.num_nodes() == 0
        assert_healthy(cache)
