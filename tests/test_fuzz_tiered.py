"""Randomized stateful test of the tiered cache: >= 50,000 operations with every check after each.

The driver (:mod:`himamba.sim.fuzz`) mixes requests with shared prefixes, matches, chunked
prefills, locks held across operations, every kind of eviction, load-back, host pins, storage
backups and prefetches, and acks completed in random order (manual-ack mode), over the three
write policies and page sizes 1 and 4. After every operation ``check_invariants`` (with exact
pool accounting) must be empty, and after every other one ``check_integrity`` too.
"""

from __future__ import annotations

import pytest

from himamba.sim.fuzz import fuzz

CONFIGS = [
    (policy, ps, manual)
    for policy in ("write_through", "write_through_selective", "write_back")
    for ps in (1, 4)
    for manual in (True, False)
]
OPS_PER_CONFIG = 4_200  # 12 configurations: 50,400 operations in all


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "page_size", "manual_acks"), CONFIGS)
def test_random_operations_keep_the_tiered_cache_healthy(policy: str, page_size: int, manual_acks: bool) -> None:
    seed = CONFIGS.index((policy, page_size, manual_acks))
    report = fuzz(seed=seed, ops=OPS_PER_CONFIG, page_size=page_size, write_policy=policy,
                  manual_acks=manual_acks, integrity_every=2, do_shrink=True, count_events=True)
    assert report.failure is None, (report.failure, report.shrunk and report.shrunk["ops"])
    assert report.ops_run == OPS_PER_CONFIG
    assert report.extras["episodes"] == -(-OPS_PER_CONFIG // report.extras["episode_length"])
    # every kind of operation really ran
    for kind in ("request", "chunked", "lock", "unlock", "evict", "evict_mamba", "evict_host",
                 "evict_mamba_host", "ack", "events", "load", "pin", "unpin", "prefetch", "prefetch_done"):
        assert report.counts.get(kind, 0) >= 20, (kind, report.counts)
    # and the interesting paths of the cache were reached
    events = report.extras["events"]
    for kind in ("split", "demoted", "write_issued", "write_acked", "load_issued", "load_acked",
                 "host_leaf_evicted", "tombstone", "cascade", "node_deleted", "pin", "unpin", "storage",
                 "unevicted"):
        assert events.get(kind, 0) >= 5, (kind, events)
    assert events.get("host_state_dropped", 0) >= 1, events  # rarer: needs host state pressure


@pytest.mark.slow
@pytest.mark.parametrize("page_size", [1, 4])
def test_random_operations_keep_the_device_cache_healthy(page_size: int) -> None:
    """The same driver on the device-only cache (host operations are no-ops there)."""
    report = fuzz(seed=page_size, ops=4_000, cache="device", page_size=page_size, integrity_every=2,
                  count_events=True)
    assert report.failure is None, (report.failure, report.shrunk and report.shrunk["ops"])
    assert report.ops_run == 4_000
    for kind in ("request", "chunked", "lock", "unlock", "evict", "evict_mamba", "match"):
        assert report.counts.get(kind, 0) >= 100, (kind, report.counts)
    events = report.extras["events"]
    for kind in ("split", "tombstone", "cascade", "node_deleted"):
        assert events.get(kind, 0) >= 5, (kind, events)
