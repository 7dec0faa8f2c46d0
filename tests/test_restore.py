"""hm.restore(snapshot): a live cache equal to any recorded step, so "what if from step k" is one
call. Checked by restoring mid-script and driving the original and the restored cache on: after
every later operation their snapshots agree, and both stay healthy."""

from __future__ import annotations

import pytest
from helpers import assert_healthy, make_cache, put

import himamba as hm
from himamba.sim.fuzz.generate import make_script
from himamba.sim.fuzz.run import make_cache as script_cache
from himamba.sim.ops import DriverState, apply


def same(a: hm.Snapshot, b: hm.Snapshot) -> None:
    assert a.nodes == b.nodes
    assert a.lru == b.lru and a.counters == b.counters and a.pools == b.pools and a.clock == b.clock


@pytest.mark.parametrize("cache_kind,page_size", [("device", 1), ("tiered", 1), ("tiered", 4)])
def test_a_restored_cache_goes_on_exactly_as_the_original(cache_kind, page_size):
    """Restore at several steps of a random script and replay the next 30 operations on the copy:
    after each, the copy's snapshot is the original's at the same step."""
    script = make_script(5, 240, cache=cache_kind, page_size=page_size, manual_acks=False, storage=False)
    ops = []
    for i, op in enumerate(script["ops"]):
        if op["op"] not in ("lock", "pin"):  # held locks and pins name nodes of one cache
            ops.append(op)
        if i % 8 == 7:
            ops.append({"op": "events"})  # process acks now and then: restore needs a step with none in flight
    original, state = script_cache(script), DriverState()
    snaps = []
    for op in ops:
        apply(original, state, op)
        snaps.append(hm.take(original))
    restored, k = 0, 20
    while k < len(ops) - 30:
        if snaps[k].in_flight:
            k += 1
            continue
        copy, copy_state = hm.restore(snaps[k], original.config), DriverState()
        same(hm.take(copy), snaps[k])
        assert_healthy(copy)
        for j in range(k + 1, k + 31):
            apply(copy, copy_state, ops[j])
            same(hm.take(copy), snaps[j])
        restored += 1
        k += 50
    assert restored >= 3


def test_restore_follows_the_original_op_by_op():
    cache = make_cache(cls=hm.HiMambaRadixCache, write_policy="write_through_selective")
    for tokens in ([1, 2, 3], [1, 2, 4], [5, 6], [1, 2, 3, 7]):
        put(cache, tokens)
    cache.writing_check()
    copy = hm.restore(hm.take(cache))
    assert type(copy) is hm.HiMambaRadixCache and copy.config.write_policy == "write_through_selective"
    assert_healthy(copy)
    for step in (lambda c: put(c, [1, 2, 9]), lambda c: c.evict(3), lambda c: c.evict_host(2),
                 lambda c: c.match_prefix([5, 6, 1]), lambda c: c.evict_mamba(1)):
        step(cache)
        step(copy)
        same(hm.take(copy), hm.take(cache))
        assert_healthy(copy)


def test_restore_from_a_recorded_step_and_refusals():
    cache = make_cache(cls=hm.HiMambaRadixCache)
    with hm.Recorder(cache) as rec:
        put(cache, [1, 2, 3])
        put(cache, [1, 2, 4])
    k = next(i for i, s in enumerate(rec) if s.snapshot.in_flight)
    with pytest.raises(hm.InvalidInputError, match="in flight"):
        hm.restore(rec[k].snapshot)
    cache.writing_check()
    copy = hm.restore(hm.take(cache))
    assert_healthy(copy)
    with pytest.raises(hm.InvalidInputError, match="Snapshot"):
        hm.restore(cache)
    small = hm.take(cache)
    with pytest.raises(hm.InvalidInputError, match="too small"):
        hm.restore(small, hm.CacheConfig(device="cpu", device_kv_tokens=2))
