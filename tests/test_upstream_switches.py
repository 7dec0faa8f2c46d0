"""The switches B14-B22 and the ``sglang-0.5.11`` profile: each guard of himamba beyond SGLang
0.5.11, and each upstream failure path, shown with its switch on and off (no SGLang needed; the
differential runner proves the agreement against SGLang itself, see test_differential.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_healthy, node_at, put

import himamba as hm
from himamba.differential.runner import _Held, apply_op
from himamba.differential.sides import HimambaSide

ON_OFF = pytest.mark.parametrize("legacy", [True, False], ids=["switch_on", "switch_off"])
PROFILE = "sglang-0.5.11"


def hi(legacy: set[str], **config) -> hm.HiMambaRadixCache:
    config.setdefault("write_policy", "write_through")
    return hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", legacy=legacy, **config))


def run(ops: list[dict], legacy: set[str], tiered: bool = True, **config):
    """Apply differential-runner operations to himamba's cache; the side (for its cache)."""
    config.setdefault("device_kv_tokens", 32)
    config.setdefault("device_mamba_slots", 4)
    side = HimambaSide(hm.CacheConfig(device="cpu", legacy=legacy, **config), tiered)
    held = _Held()
    with torch.inference_mode():
        for op in ops:
            apply_op(side, held, op)
    return side


def paths(side, nodes) -> list[tuple[int, ...]]:
    return [side.path(n) for n in nodes]


def test_profile_is_the_open_upstream_set():
    profile = hm.LEGACY_PROFILES[PROFILE]
    assert profile == {b.id for b in hm.LEGACY_BUGS.values() if b.fixed_upstream.startswith("no")}
    assert {"B3", "B6", "B7", "B8", "B10", "B13"} | {f"B{i}" for i in range(14, 24)} == profile  # B23: fixed after 0.5.11
    assert not profile & {"B1", "B2", "B4", "B5"}  # fixed in 0.5.11
    assert hm.CacheConfig(legacy=PROFILE).legacy == profile
    assert hm.CacheConfig(legacy={PROFILE, "B1"}).legacy == profile | {"B1"}
    assert hm.CacheConfig(legacy={"SGLang-0.5.11"}).legacy == profile


def test_profile_name_is_in_the_unknown_switch_message():
    with pytest.raises(hm.InvalidInputError, match="sglang-0.5.11"):
        hm.CacheConfig(legacy={"sglang-0.5.10"})


# -- B14 -------------------------------------------------------------------------------------------
@ON_OFF
def test_b14_load_back_pin_moves_the_host_state_to_mru(legacy):
    """[18] is demoted (host state kept) and [31] gets a host state after it; a request for [18]
    loads it back. With the guard, the pin taken during the load is released by re-inserting
    [18] at the MRU end of the host-mamba list; upstream (B14) leaves it where it was."""
    ops = [{"op": "request", "tokens": [18]}, {"op": "events"}, {"op": "evict_mamba", "n": 1},
           {"op": "request", "tokens": [31]}, {"op": "request", "tokens": [18]}]
    side = run(ops, {"B14"} if legacy else set(), host_kv_tokens=16, host_mamba_slots=10)
    order = paths(side, side.cache.mamba_host_lru_list.nodes())
    assert order == ([(31,), (18,)] if legacy else [(18,), (31,)])
    assert_healthy(side.cache, integrity=False)


# -- B15 -------------------------------------------------------------------------------------------
@ON_OFF
def test_b15_blocking_drain_and_a_locked_write(legacy):
    """Under write_back an explicit write_backup locks its node until the ack; an eviction's
    blocking drain then consumes that ack. himamba unlocks it; upstream (B15) leaks the lock."""
    cache = hi({"B15"} if legacy else set(), write_policy="write_back")
    cache.cache_controller.manual_acks = True
    put(cache, [1, 2, 3])
    a = node_at(cache, [1, 2, 3])
    assert cache.write_backup(a) == 3 and a.full_lock_ref == 1
    put(cache, [7, 8])
    cache.evict(2)  # [7, 8] is written back and demoted: the blocking drain completes every ack
    assert not cache.ongoing_write_through
    assert a.full_lock_ref == (1 if legacy else 0)
    assert cache.full_protected_size() == (3 if legacy else 0)


# -- B16 -------------------------------------------------------------------------------------------
@ON_OFF
def test_b16_eviction_after_a_cascade(legacy):
    """G[1,2] (state) → P[3] (tombstoned) → C[4,5]. evict(4) deletes C, the cascade deletes P;
    himamba continues from G (now a leaf): 5 tokens. Upstream (B16) queues C's old parent P,
    which is gone, and stops at 3."""
    cache = hi({"B16"} if legacy else set(), write_policy="write_through_selective")
    for tokens in ([1, 2, 3, 4, 5], [1, 2], [1, 2, 3]):  # G reaches two hits and is backed up
        put(cache, tokens)
    cache.writing_check()
    cache.match_prefix([1, 2, 3, 4, 5])
    cache.match_prefix([1, 2])
    assert cache.evict_mamba(1) == 1 and node_at(cache, [1, 2, 3]).mamba_value is None
    assert node_at(cache, [1, 2, 3, 4, 5]).host_value is None
    assert cache.evict(4) == (3 if legacy else 5)
    assert_healthy(cache)


# -- B17 -------------------------------------------------------------------------------------------
@ON_OFF
def test_b17_loaded_node_position_in_the_full_lru(legacy):
    """A[1..12] is demoted, B[20..31] is newer; loading A back without a match puts it at its
    time position (behind B) — upstream (B17) at the MRU end."""
    cache = hi({"B17"} if legacy else set(), device_kv_tokens=32)
    put(cache, list(range(1, 13)))
    cache.writing_check()
    a = node_at(cache, list(range(1, 13)))
    cache.evict(12)
    assert a.value is None
    put(cache, list(range(20, 32)))
    cache.writing_check()
    loaded, _ = cache.init_load_back(a)
    assert len(loaded) == 12
    order = [n.key.token_ids[0] for n in cache.full_lru_list.nodes()]
    assert order == ([1, 20] if legacy else [20, 1])


# -- B19 -------------------------------------------------------------------------------------------
STATE_SHORT = [{"op": "chunked", "tokens": [30, 19, 32, 28], "chunk": 1}, {"op": "request", "tokens": [30]}]


@ON_OFF
def test_b19_request_slot_failure_in_copy_on_write(legacy):
    """Every state slot is held by the chunked request's nodes and the copy-on-write of a match
    finds none: upstream raises RuntimeError; himamba an InvalidInputError."""
    expected = (hm.UpstreamFailure, "^RuntimeError: Can not alloc mamba cache") if legacy else (
        hm.InvalidInputError, "no mamba state slot free")
    with pytest.raises(expected[0], match=expected[1]):
        run(STATE_SHORT, {"B19", "B8"} if legacy else set(), host_kv_tokens=16, host_mamba_slots=4)


@ON_OFF
def test_b19_unfinished_request_slot_failure(legacy):
    """A chunked prefill whose chunk insert finds no state slot: upstream asserts."""
    ops = [{"op": "request", "tokens": [27]}, {"op": "lock", "tokens": [27], "exact": True},
           {"op": "chunked", "tokens": [27, 4], "chunk": 1}, {"op": "lock", "tokens": [27, 4], "exact": False},
           {"op": "chunked", "tokens": [27, 4, 23, 14, 23], "chunk": 1}]
    expected = (hm.CacheAssertionError, "^Can not alloc mamba cache") if legacy else (
        hm.InvalidInputError, "no device state slot")
    with pytest.raises(expected[0], match=expected[1]):
        run(ops, {"B19"} if legacy else set(), tiered=False)


# -- B20 -------------------------------------------------------------------------------------------
@ON_OFF
def test_b20_a_load_acked_twice(legacy):
    """Two loads of the same node before the first ack share one entry of ongoing_load_back;
    upstream's second pop raises KeyError."""
    cache = hi({"B20"} if legacy else set(), device_kv_tokens=32)
    put(cache, list(range(1, 13)))
    cache.writing_check()
    a = node_at(cache, list(range(1, 13)))
    cache.evict(12)
    cache.init_load_back(a)
    cache.ready_to_load_host_cache()
    cache.ongoing_load_back[a.id] = a
    cache.cache_controller.ack_load_queue.append(cache.cache_controller.ack_load_queue[0])
    if legacy:
        with pytest.raises(hm.UpstreamFailure, match=rf"^KeyError: {a.id}"):
            cache.loading_check()
    else:
        assert cache.loading_check() == 2


# -- B21 -------------------------------------------------------------------------------------------
def locked_tombstone(legacy: set[str]):
    """A device tree with A[1,2] → B[3]; A lost its state (it is the older) and is locked."""
    cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu", legacy=legacy))
    put(cache, [1, 2])
    put(cache, [1, 2, 3])
    a = node_at(cache, [1, 2])
    cache.match_prefix([1, 2, 3])
    assert cache.evict_mamba(1) == 1 and a.mamba_value is None
    cache.inc_lock_ref(a)
    return cache, a


@ON_OFF
def test_b21_device_tree_evicts_a_childless_tombstone(legacy):
    """A[1,2] loses its state while B[3] is its child, a lock is taken on it, B is evicted (the
    cascade stops at the locked A), the lock released: A is a childless tombstone.
    Upstream's device tree asserts on evicting it."""
    cache, a = locked_tombstone({"B21"} if legacy else set())
    assert cache.evict(1) == 1  # B goes; the cascade stops at the locked A
    cache.dec_lock_ref(a)
    if legacy:
        with pytest.raises(hm.CacheAssertionError, match="^leaf node mamba value is not None"):
            cache.evict(2)
    else:
        assert cache.evict(2) == 2
        assert_healthy(cache)


@ON_OFF
def test_b21_device_tree_release_after_a_state_was_attached(legacy):
    """A lock taken on a tombstone, then a state attached by an insert: upstream's device
    dec_lock_ref asserts mamba_lock_ref > 0 (with B10, as in the profile)."""
    cache, a = locked_tombstone({"B21", "B10"} if legacy else {"B10"})
    put(cache, [1, 2])
    assert a.mamba_value is not None and a.mamba_lock_ref == 0
    if legacy:
        with pytest.raises(hm.CacheAssertionError, match="^dec_lock_ref on node with node.mamba_lock_ref=0"):
            cache.dec_lock_ref(a)
    else:
        cache.dec_lock_ref(a)
        assert_healthy(cache)


# -- B18 -------------------------------------------------------------------------------------------
@ON_OFF
def test_b18_node_being_written_is_locked_while_host_room_is_made(legacy):
    """The host is full when [5,6] is written through: write_backup evicts host KV and retries.
    himamba locks the node meanwhile (so no cascade can delete it); upstream (B18) does not."""
    cache = hi({"B18"} if legacy else set(), host_kv_tokens=4)
    put(cache, [1, 2, 3, 4])
    cache.writing_check()
    cache.evict(4)  # [1,2,3,4] is host-only now: the host leaf the retry evicts
    seen = []
    evict_host = cache.evict_host

    def watching(n: int) -> int:
        seen.append(node_at(cache, [5, 6]).full_lock_ref)
        return evict_host(n)

    cache.evict_host = watching
    put(cache, [5, 6])
    assert seen == [0 if legacy else 1]
    assert node_at(cache, [5, 6]).host_value is not None
    cache.writing_check()
    assert_healthy(cache)


# -- B22 -------------------------------------------------------------------------------------------
@ON_OFF
def test_b22_failed_eviction_during_a_state_allocation(legacy):
    """The state pool is full and the eviction made for the request's slot raises (as B8 does
    inside copy-on-write): himamba releases the lock it took on the matched node; upstream
    (B22) leaves it locked."""
    cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu", device_mamba_slots=2, legacy={"B22"} if legacy else set()))
    put(cache, [1])
    put(cache, [2])
    a = node_at(cache, [1])

    def failing(n: int) -> int:
        raise hm.CacheAssertionError("evict device leaf: full_lock_ref mismatch")

    with pytest.raises(hm.CacheAssertionError):
        cache.alloc_state(cache.mamba_pool, failing, lock_node=a)
    assert a.full_lock_ref == (1 if legacy else 0)


# -- B23 (#25088) ----------------------------------------------------------------------------------
LOAD_FROM_ANCESTOR = [{"op": "request", "tokens": [1, 2]}, {"op": "request", "tokens": [1, 2]},
                      {"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "events"}, {"op": "evict_mamba", "n": 1},
                      {"op": "request", "tokens": [1, 2, 3, 4, 5]}]


@ON_OFF
def test_b23_load_back_starts_where_the_usable_prefix_ends(legacy):
    """[1,2] is seen twice (selective write-through backs it up), [1,2,3,4] once (device only);
    evict_mamba drops [1,2]'s device state, so it lives on host only. The request for
    [1,2,3,4,5] matches [1,2,3,4] on device with its state: nothing needs loading. Upstream 0.5.11
    (B23) starts the load at the last backed-up node, [1,2]: its host state is copied back into a
    state slot and [1,2] is locked as the request's node. Since #25088 (the default) the load
    starts at best_match_node, [1,2,3,4], and spends nothing."""
    side = run(LOAD_FROM_ANCESTOR, {"B23"} if legacy else set(), host_kv_tokens=16, host_mamba_slots=10,
               write_policy="write_through_selective")
    cache = side.cache
    assert_healthy(cache, integrity=False)  # the runner's requests write no content
    ancestor, matched = node_at(cache, [1, 2]), node_at(cache, [1, 2, 3, 4])
    assert matched.mamba_value is not None  # (backed up since, when the request finished)
    assert ancestor.mamba_host_value is not None
    assert (ancestor.mamba_value is not None) == legacy
    assert ancestor.full_lock_ref == (2 if legacy else 1)
    assert cache.mamba_pool.available_size() == (1 if legacy else 2)


# -- B10 through a load-back (#27147) ---------------------------------------------------------------
LOCK_ON_TOMBSTONE_THEN_LOAD = [
    {"op": "request", "tokens": [1, 2, 3]}, {"op": "request", "tokens": [1, 2, 3, 4, 5]}, {"op": "events"},
    {"op": "evict_mamba", "n": 1}, {"op": "lock", "tokens": [1, 2, 3], "exact": True},
    {"op": "load", "tokens": [1, 2, 3], "quota": None}, {"op": "events"}, {"op": "evict_mamba", "n": 4}]


@ON_OFF
def test_b10_a_state_revived_by_load_back_under_a_tombstone_lock(legacy):
    """#27147: a holder locks A = [1,2,3] while A is a tombstone (its state on host only), so its
    lock takes no state lock; a load-back brings A's state back and its own lock is released when
    the load lands. With B10 (SGLang 0.5.11) that release leaves A's state unlocked under the
    holder, and evict_mamba takes it (2 states freed); fixed, the holder's lock now covers the
    state and only the leaf's state goes."""
    side = run(LOCK_ON_TOMBSTONE_THEN_LOAD, {"B10"} if legacy else set(), host_kv_tokens=16, host_mamba_slots=10)
    cache = side.cache
    assert_healthy(cache, integrity=False)
    a = node_at(cache, [1, 2, 3])
    assert a.full_lock_ref == 1
    assert (a.mamba_lock_ref, a.mamba_value is not None) == ((0, False) if legacy else (1, True))
    assert cache.mamba_pool.available_size() == cache.mamba_pool.capacity - (0 if legacy else 1)
