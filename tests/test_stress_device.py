"""Seeded random stress of the device-tier cache, checked after every operation.

The fuzzer's operations (:mod:`himamba.sim.ops`, scripts from :func:`himamba.sim.fuzz.make_script`
with :data:`~himamba.sim.fuzz.STRESS_WEIGHTS`) play a small serving workload against a cache
with tight pools, in the style of sortedcontainers' ``_check()`` tests: inserts (reusing the
matched prefix or computing it again), chunked prefills, matches (whole, mid-edge, diverging),
locks held for a while, evictions, and requests held across operations (started with or without
copy-on-write of the matched state, prefilled chunk by chunk, finished or aborted). The
operations check their own results (match results, eviction returns, what a finished request
left cached); after **every** operation the test checks the invariants with exact pool
accounting (what the held requests own) and every stored byte. At the end every request is
finished, every lock released, and a full eviction must empty the tree and both pools.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from helpers import alloc_kv, alloc_state, assert_healthy, make_cache, put

import himamba as hm
from himamba.memory.content import write_state
from himamba.sim import held_requests
from himamba.sim.fuzz import STRESS_WEIGHTS, make_script
from himamba.sim.fuzz import make_cache as script_cache
from himamba.sim.ops import DriverState, apply

OPS_PER_RUN = 10_000
HealthCheck = Callable[..., None]


def stress_script(page_size: int, n_ops: int, seed: int) -> dict:
    """A device-tier stress script: 40 pages of KV and 14 state slots."""
    script = make_script(seed, n_ops, page_size=page_size, cache="device", storage=False, manual_acks=False,
                         weights=STRESS_WEIGHTS, p_fresh=0.2)
    script["config"].update(device_kv_tokens=40 * page_size, device_mamba_slots=14)
    return script


def run_stress(script: dict, check: HealthCheck = assert_healthy) -> tuple[Counter, Counter]:
    """Apply the script, calling ``check(cache, held_kv=..., held_states=...)`` after every
    operation; then drain the cache. Returns (operations and their outcomes, events by kind)."""
    cache = script_cache(script)
    state, events = DriverState(), Counter()
    cache.events.subscribe(lambda e: events.update((e.kind.value,)))
    check(cache, held_kv=0, held_states=0)
    for op in script["ops"]:
        apply(cache, state, op)
        check(cache, held_kv=state.held_kv(), held_states=state.held_states())
    while state.requests:  # drain: finish or abort every request, release every lock
        held_requests.finish(cache, state.requests, 0, insert=len(state.requests) % 2 == 0, cut=0)
        check(cache, held_kv=state.held_kv(), held_states=state.held_states())
    while state.locks:
        cache.dec_lock_ref(state.locks.pop())
    assert cache.full_protected_size() == 0 and cache.mamba_protected_size() == 0
    cache.evict(cache.kv_pool.capacity)
    assert cache.num_nodes() == 0, cache.tree_text()
    assert cache.kv_pool.available_size() == cache.kv_pool.capacity
    assert cache.mamba_pool.available_size() == cache.mamba_pool.capacity
    check(cache, held_kv=0, held_states=0)
    return Counter(state.counts), events


def _assert_coverage(counts: Counter, events: Counter, page_size: int) -> None:
    total_weight = sum(STRESS_WEIGHTS.values())
    for kind, weight in STRESS_WEIGHTS.items():
        assert counts[kind] >= OPS_PER_RUN * weight / total_weight / 2, (kind, counts)
    outcomes = ["req_start:started", "req_start:cow", "req_chunk:moved", "req_finish:finished",
                "req_finish:aborted"] + (["req_chunk:untracked"] if page_size > 1 else [])
    for outcome in outcomes:
        assert counts[outcome] >= 50, (outcome, counts)
    for kind in ("split", "state_attached", "duplicate_freed", "tombstone", "leaf_evicted", "cascade", "node_deleted",
                 "lock", "unlock"):
        assert events[kind] >= 50, (kind, events)


@pytest.mark.slow
@pytest.mark.parametrize("page_size", [1, 4])
def test_random_operations_keep_the_device_cache_healthy(page_size):
    counts, events = run_stress(stress_script(page_size, OPS_PER_RUN, seed=1000 + page_size))
    _assert_coverage(counts, events, page_size)


def test_chunked_prefill_duplicates_do_not_corrupt_the_free_list():
    """Regression found by the driver: SlotAllocator.free kept the caller's index tensor in its
    free list (page size 1); cache_unfinished_req then overwrote that tensor after insert had
    freed duplicate slots from it, and alloc handed out slots the tree owns."""
    cache = make_cache(device_kv_tokens=16, device_mamba_slots=4)
    tokens = [1, 2, 3, 4]
    req = hm.Request(token_ids=tokens, kv_indices=alloc_kv(cache, tokens, 0), mamba_pool_idx=alloc_state(cache, tokens))
    put(cache, [*tokens, 5])  # meanwhile another request caches the same tokens
    cache.cache_unfinished_req(req, chunked=True)  # insert frees req's 4 duplicate slots
    assert_healthy(cache, held_kv=0, held_states=1)
    owned = {int(i) for n in cache.nodes() if n is not cache.root_node for i in n.value}
    handed_out = set(cache.kv_pool.alloc(cache.kv_pool.available_size()).tolist())
    assert not handed_out & owned, f"alloc handed out slots the tree owns: {sorted(handed_out & owned)}"
    assert handed_out == set(range(16)) - owned


def test_stress_smoke_each_page_size():
    """A short run, so that the stress mix is exercised even when slow tests are skipped."""
    for page_size in (1, 2):
        counts, _ = run_stress(stress_script(page_size, 400, seed=7 + page_size))
        assert sum(counts[k] for k in STRESS_WEIGHTS) == 400
        assert all(counts[k] > 0 for k, w in STRESS_WEIGHTS.items() if w), counts


def test_stress_notices_a_corrupted_state():
    """The check really runs after each operation: a state overwritten behind the cache's
    back is reported by the next check."""
    corrupted = []

    def check(c, **kw):
        if not corrupted and c.mamba_evictable_size() > 2:
            node = next(n for n in c.nodes() if n.mamba_value is not None)
            write_state(c.mamba_pool, node.mamba_value, [99, 98, 97])
            corrupted.append(node.id)
        assert_healthy(c, **kw)

    with pytest.raises(AssertionError, match="INTEGRITY"):
        run_stress(stress_script(4, 200, seed=3), check=check)
    assert corrupted
