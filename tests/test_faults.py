"""Injected faults (CacheConfig(faults=...), memory/faults.py): a copy that fails when issued or
while landing, an allocation that raises or comes back short, a storage operation that fails. Each leaves the cache consistent
and as before the operation, or in a named consistent state; nothing leaks; the error names what
failed; the cache keeps serving."""

from __future__ import annotations

import pytest
from helpers import assert_healthy, make_cache, node_at, put

import himamba as hm
from himamba.memory.faults import parse_faults
from himamba.sim.fuzz.generate import make_script
from himamba.sim.fuzz.run import run_script


def tiered(faults: str, **config) -> hm.HiMambaRadixCache:
    return make_cache(cls=hm.HiMambaRadixCache, faults=faults, **config)


def unchanged(cache, before: hm.Snapshot) -> None:
    after = hm.take(cache)
    assert after.nodes == before.nodes and after.pools == before.pools and after.counters == before.counters
    assert_healthy(cache)


@pytest.mark.parametrize("fault,error", [("copy_issue=1", hm.TransferFailure), ("alloc_raise=1", hm.AllocationFailure)])
def test_a_failed_write_leaves_the_node_as_it_was(fault, error):
    cache = tiered(fault, write_policy="write_through_selective")
    put(cache, [1, 2, 3])
    before = hm.take(cache)
    with pytest.raises(error, match="injected fault"):
        cache.write_backup(node_at(cache, [1, 2, 3]))
    unchanged(cache, before)
    put(cache, [4, 5])  # and it keeps serving
    assert_healthy(cache)


def test_a_short_allocation_is_a_shortage():
    cache = tiered("alloc_short=1", write_policy="write_through_selective")
    put(cache, [1, 2, 3])
    before = hm.take(cache)
    assert cache.write_backup(node_at(cache, [1, 2, 3])) == 0
    unchanged(cache, before)


@pytest.mark.parametrize("policy", ["write_through", "write_back"])
def test_writes_that_fail_inside_serve_and_evict_are_steps_not_crashes(policy):
    cache = tiered("copy_issue=1", write_policy=policy)
    with hm.Recorder(cache) as rec:
        put(cache, [1, 2, 3])  # write-through: the hit's write fails
        cache.evict(3)  # write-back: the leaf's write fails, so it is deleted
    assert any(s.event.data.get("failed") == "TransferFailure" for s in rec), rec.texts()
    assert cache.node_at([1, 2, 3]) is None or cache.node_at([1, 2, 3]).host_value is None
    assert_healthy(cache)


def loadable(faults: str, engine: str = "sync") -> hm.HiMambaRadixCache:
    """[1,2,3] backed up and demoted; the faults start only then."""
    cache = tiered(faults, load_back_threshold=1, copy_engine=engine)
    plan = cache.cache_controller.faults
    rates, plan.rates = plan.rates, {}
    put(cache, [1, 2, 3])
    cache.writing_check()
    cache.evict(3)
    plan.rates = rates
    return cache


def test_a_load_whose_allocation_fails_changes_nothing():
    cache = loadable("alloc_raise=1")
    node = node_at(cache, [1, 2, 3])
    before = hm.take(cache)
    with pytest.raises(hm.AllocationFailure):
        cache.load_back(node)
    unchanged(cache, before)  # no lock, no pin, no slot left behind
    loaded, last = cache.init_load_back(node)  # the scheduler's path skips it, as a shortage
    assert len(loaded) == 0 and last is cache.root_node
    unchanged(cache, before)


def test_a_load_that_fails_while_landing_is_retracted_host_only_again():
    cache = loadable("copy_land=1", engine="deferred")  # the synchronous engine lands at issue
    node = node_at(cache, [1, 2, 3])
    before = hm.take(cache)
    with hm.Recorder(cache) as rec:
        loaded, last = cache.init_load_back(node)
        assert last is node and len(loaded) == 3 and node.value is not None
        assert cache.ready_to_load_host_cache() == 1
    assert node.value is None and node.mamba_value is None  # host-only again: nothing loaded is claimed
    assert node.host_value is not None and node.mamba_host_value is not None
    assert not cache.ongoing_load_back and not cache.cache_controller.in_flight()
    unchanged(cache, before)  # tree, pools and counters as before the load
    failure = [s for s in rec if s.event.data.get("failed") == "TransferFailure"]
    assert [s.text for s in failure] == [f"load of #{node.id} failed while landing: retracted (3 tokens over 1 node "
                                         "and its state host-only again; nothing loaded is kept)"]
    cache.cache_controller.faults.rates = {}  # the same host hit loads once copies succeed again
    match = cache.match_prefix([1, 2, 3])
    assert match.host_hit_length == 3
    cache.init_load_back(match.best_match_node)
    cache.ready_to_load_host_cache()
    cache.loading_check()
    assert node.value is not None and node.mamba_value is not None
    assert_healthy(cache)


def test_serve_falls_back_to_computing_a_prefix_whose_load_failed():
    cache = loadable("copy_land=1", engine="deferred")
    result = hm.serve(cache, [1, 2, 3, 4])
    assert result is not None and result.prefix_len == 0  # the host hit was not used: all 4 computed
    assert node_at(cache, [1, 2, 3, 4]).value is not None
    cache.writing_check(write_back=True)
    assert_healthy(cache)


def test_a_failed_load_something_was_built_on_is_copied_again_and_reported():
    cache = loadable("copy_land=1", engine="deferred")
    node = node_at(cache, [1, 2, 3])
    cache.init_load_back(node)
    put(cache, [1, 2, 3, 4])  # a child computed on the load before the batch launched (its write locks the path)
    with hm.Recorder(cache) as rec:
        cache.ready_to_load_host_cache()
        cache.loading_check()
    assert any(t.endswith(f"failed while landing and was copied again (#{node.id} holds another lock)")
               for t in rec.texts()), rec.texts()
    assert node_at(cache, [1, 2, 3]).value is not None
    cache.writing_check(write_back=True)
    assert_healthy(cache)  # integrity: the bytes are there


def test_a_failed_load_with_a_device_child_below_it_is_copied_again_and_reported():
    cache = loadable("copy_land=1", engine="deferred")
    node = node_at(cache, [1, 2, 3])
    cache.init_load_back(node)
    child_tokens = [1, 2, 3, 4]
    put(cache, child_tokens)
    child = node_at(cache, child_tokens)
    cache.writing_check(write_back=True)  # the child's write acknowledged: its lock is gone
    assert child.full_lock_ref == 0 and node.full_lock_ref == 1  # only the load holds the chain
    with hm.Recorder(cache) as rec:
        cache.ready_to_load_host_cache()
        cache.loading_check()
    assert any(t.endswith(f"failed while landing and was copied again (#{node.id} has a device child built on the load)")
               for t in rec.texts()), rec.texts()
    assert_healthy(cache)  # integrity: the bytes are there


def test_a_write_that_fails_while_landing_is_copied_again_and_reported():
    cache = tiered("copy_land=1", copy_engine="deferred")
    with hm.Recorder(cache) as rec:
        put(cache, [1, 2, 3])  # write-through: the write is issued here, lands at the check
        cache.writing_check(write_back=True)
    assert any("device -> host copy" in t and "failed while landing and was copied again" in t for t in rec.texts())
    assert node_at(cache, [1, 2, 3]).host_value is not None
    assert_healthy(cache)  # integrity: the host bytes are there


def test_a_storage_backup_that_fails_stores_nothing_and_releases_its_pin():
    cache = tiered("storage=1", enable_storage=True)
    put(cache, [1, 2, 3, 4])
    cache.writing_check()  # the acknowledged host copy goes on to storage at once
    node = node_at(cache, [1, 2, 3, 4])
    assert [op.kind for op in cache.storage.ops] == ["backup"]
    assert node.host_ref_counter == 1  # pinned while the backup is in flight
    with hm.Recorder(cache) as rec:
        assert cache.check_storage_progress() == 1
    assert any("failed (injected fault): nothing stored" in t for t in rec.texts()), rec.texts()
    assert cache.storage.pages == {} and cache.storage.states == {}
    assert node.host_ref_counter == 0 and node.host_mamba_ref_counter == 0
    assert_healthy(cache)
    put(cache, [5, 6])  # and it keeps serving
    assert_healthy(cache)


def test_a_prefetch_that_fails_inserts_nothing_and_frees_what_it_fetched_into():
    cache = tiered("storage=1", enable_storage=True, write_policy="write_through")
    put(cache, [1, 2])
    cache.writing_check()
    cache.check_storage_progress()  # [1, 2]'s own storage backup ends (failing: nothing stored)
    cache.storage.store_prefix([1, 2, 3, 4, 5, 6])  # another server cached a longer prompt
    anchor = node_at(cache, [1, 2])
    before = hm.take(cache)
    assert cache.prefetch_from_storage("req-1", anchor, [3, 4, 5, 6]) == 4
    assert cache.host_kv_pool.available_size() < cache.host_kv_pool.capacity - 2  # fetched into host slots
    with hm.Recorder(cache) as rec:
        assert cache.check_prefetch_progress("req-1") == 0
    assert any("failed (injected fault): nothing inserted" in t for t in rec.texts()), rec.texts()
    unchanged(cache, before)  # the same nodes, pins and pool usage as before the prefetch
    assert cache.storage.ops == []


@pytest.mark.parametrize("engine", ["sync", "deferred"])
@pytest.mark.parametrize("policy", ["write_through", "write_back"])
def test_random_scripts_with_faults_stay_healthy(engine, policy):
    for seed in (1, 2):
        script = make_script(seed, 300, write_policy=policy, copy_engine=engine)
        script["config"]["faults"] = f"0.15,seed={seed}"
        report = run_script(script, integrity_every=1)
        assert report.failure is None, report.failure
        assert sum(report.extras["faults"].values()) > 5


@pytest.mark.parametrize("bad", ["x", "copy_issue=2", "wobble=0.1", True, [0.1]])
def test_fault_specs_are_checked(bad):
    with pytest.raises(hm.InvalidInputError, match="faults"):
        parse_faults(bad)
    with pytest.raises(hm.InvalidInputError, match="faults"):
        hm.CacheConfig(faults=bad)
