"""Copy engines on the CPU: the deferred engine (CUDA's timing), exact integrity with transfers in
flight, the P1/P2 reproductions, and random operations on the deferred engine."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_healthy, node_at

import himamba as hm
from himamba.errors import InvalidInputError
from himamba.memory.bandwidth import measure_bandwidth
from himamba.memory.content import kv_matches, state_matches
from himamba.memory.copy_engines import POISON, DeferredCopyEngine
from himamba.sim.fuzz import make_script, run_script


def _deferred(**kw) -> hm.HiMambaRadixCache:
    kw.setdefault("write_policy", "write_through")
    return hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", copy_engine="deferred", **kw), manual_acks=True)


def _poisoned(buf: torch.Tensor, idx: torch.Tensor) -> bool:
    return bool((buf[:, idx.reshape(-1)] == POISON).all())


def test_a_deferred_write_lands_only_when_its_ack_is_completed() -> None:
    cache = _deferred()
    hm.serve(cache, [1, 2, 3, 4])
    node = node_at(cache, [1, 2, 3, 4])
    (ack,) = cache.cache_controller.in_flight()
    assert ack.kind == "write" and not ack.landed
    assert _poisoned(cache.host_kv_pool.k_buffer, node.host_value)
    assert _poisoned(cache.host_mamba_pool.ssm, node.mamba_host_value)
    assert_healthy(cache)  # the unlanded host rows are skipped, slot by slot
    cache.cache_controller.complete(ack)
    assert ack.landed and cache.writing_check() == 1
    assert kv_matches(cache.host_kv_pool, node.host_value, [1, 2, 3, 4], 0)
    assert state_matches(cache.host_mamba_pool, node.mamba_host_value, [1, 2, 3, 4])
    assert_healthy(cache)


def test_p1_a_split_of_a_node_whose_write_is_in_flight_is_checked_exactly() -> None:
    """P1: serve [1,2,3,4] (write-through, ack held), then match [1,2] splits the node. The upper
    node's host rows are rows of the write in flight: poison until the ack. A check that skips
    unlanded writes by node id (the ack names only the lower node) reported them as corrupt."""
    cache = _deferred()
    hm.serve(cache, [1, 2, 3, 4])
    (ack,) = cache.cache_controller.in_flight()
    cache.match_prefix([1, 2])
    upper, lower = node_at(cache, [1, 2]), node_at(cache, [1, 2, 3, 4])
    assert upper.parent is cache.root_node and lower.parent is upper
    assert ack.node_ids == [lower.id] and upper.id not in ack.node_ids
    assert _poisoned(cache.host_kv_pool.k_buffer, upper.host_value)
    assert hm.check_integrity(cache) == []
    assert_healthy(cache)
    cache.cache_controller.complete(ack)
    cache.writing_check()
    assert kv_matches(cache.host_kv_pool, upper.host_value, [1, 2], 0)
    assert kv_matches(cache.host_kv_pool, lower.host_value, [3, 4], 2)
    assert_healthy(cache)


def _restored_state(compute_waits: bool) -> tuple[hm.HiMambaRadixCache, hm.TreeNode, torch.Tensor]:
    """A node whose state was demoted to host and is loaded back (ack held), then copied the
    way copy-on-write copies a matched state into a request's slot."""
    cache = _deferred(write_policy="write_back")
    cache.cache_controller.engine = DeferredCopyEngine(compute_waits=compute_waits)
    hm.serve(cache, [1, 2, 3])
    hm.serve(cache, [1, 2, 3, 4, 5])
    a = node_at(cache, [1, 2, 3])
    assert cache.write_backup(a, write_back=True) == 3 and cache.writing_check(write_back=True) == 1
    assert cache.evict_mamba(1) == 1 and a.mamba_value is None and a.mamba_host_value is not None
    cache.init_load_back(a)
    assert a.mamba_value is not None
    assert _poisoned(cache.mamba_pool.ssm, a.mamba_value)  # queued: nothing has moved yet
    assert_healthy(cache)
    assert cache.ready_to_load_host_cache() == 1
    copy = cache.mamba_pool.alloc(1)
    cache.mamba_pool.copy_slot(copy, a.mamba_value)  # a compute-side read, before the ack
    return cache, a, copy


def test_p2_compute_waits_on_loads_so_a_restored_state_is_read_whole() -> None:
    cache, a, copy = _restored_state(compute_waits=True)
    assert state_matches(cache.mamba_pool, copy, [1, 2, 3])
    assert len(cache.cache_controller.ack_load_queue) == 1  # the ack itself is still in flight
    cache.cache_controller.complete()
    assert cache.loading_check() == 1
    cache.mamba_pool.free(copy)
    assert_healthy(cache)


def test_p2_without_the_wait_a_compute_read_sees_bytes_that_have_not_landed() -> None:
    cache, a, copy = _restored_state(compute_waits=False)
    assert _poisoned(cache.mamba_pool.ssm, copy)
    cache.cache_controller.complete()
    cache.loading_check()
    assert state_matches(cache.mamba_pool, a.mamba_value, [1, 2, 3])
    assert _poisoned(cache.mamba_pool.ssm, copy)  # what was read early stays wrong


DEFERRED_SCRIPTS = [("write_through", 1), ("write_through_selective", 4), ("write_back", 1), ("write_through", 4)]


@pytest.mark.parametrize(("policy", "page_size"), DEFERRED_SCRIPTS)
def test_random_operations_on_the_deferred_engine(policy: str, page_size: int) -> None:
    """Manual acks completed in random order, integrity after every operation."""
    script = make_script(11 + page_size, 400, page_size=page_size, write_policy=policy, manual_acks=True)
    script["config"]["copy_engine"] = "deferred"
    report = run_script(script, integrity_every=1)
    assert report.failure is None, report.failure
    assert report.ops_run == 400 and report.counts.get("ack", 0) > 10


def test_copy_engine_names_are_checked() -> None:
    with pytest.raises(InvalidInputError, match=r"copy_engine must be one of \('auto', 'sync', 'deferred', 'cuda'\), got 'fast'"):
        hm.CacheConfig(copy_engine="fast")
    with pytest.raises(InvalidInputError, match="copy_engine='cuda' needs a CUDA device"):
        hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", copy_engine="cuda"))
    assert type(hm.HiMambaRadixCache(hm.CacheConfig(device="cpu")).cache_controller.engine).__name__ == "SyncCopyEngine"


def test_measure_bandwidth_moves_real_bytes_and_reports_rates() -> None:
    row = measure_bandwidth(hm.ModelSpec.tiny(), "cpu", tokens=8, page_size=4, repeat=1)
    assert row["tokens"] == 8 and row["bytes"] > 0
    assert all(row[k] > 0 for k in ("write_GBps", "plain_d2h_GBps", "load_GBps", "plain_h2d_GBps"))
    with pytest.raises(InvalidInputError, match="multiple of page_size"):
        measure_bandwidth(hm.ModelSpec.tiny(), "cpu", tokens=6, page_size=4)


def test_p4_index_tensors_on_another_device_are_refused_at_insert() -> None:
    """check_on_device reads only metadata; a meta-device tensor stands in for a CPU tensor
    handed to a CUDA cache (the failure used to show later, in an unrelated allocation)."""
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu"))
    slot = cache.mamba_pool.alloc(1)
    with pytest.raises(InvalidInputError, match=r"value \(device KV slots\) is on 'meta' but indexes a pool on 'cpu'"):
        cache.insert([1, 2], torch.empty(2, dtype=torch.int64, device="meta"), slot)
    with pytest.raises(InvalidInputError, match=r"mamba_value \(a device state slot\) is on 'meta'"):
        cache.insert([1, 2], cache.kv_pool.alloc(2), torch.empty(1, dtype=torch.int64, device="meta"))
    assert list(cache.nodes())[1:] == []


def test_cli_fuzz_runs_the_deferred_engine(capsys) -> None:
    from himamba.cli import main

    assert main(["fuzz", "--ops", "300", "--seed", "5", "--copy-engine", "deferred", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "copy engine=deferred" in out and "clean" in out and "300 operations" in out


def test_p3_a_source_freed_before_the_copy_lands_is_reported_and_not_handed_out_again() -> None:
    """Locks keep a write-through source allocated; freed behind the cache's back, check_integrity
    names the transfer, and the allocator parks the slots: an allocation of every free slot does
    not get them, the copy lands the node's own bytes, and the slots rejoin the free list only
    when the ack has been processed."""
    cache = _deferred()
    hm.serve(cache, [1, 2, 3, 4])
    node = node_at(cache, [1, 2, 3, 4])
    (ack,) = cache.cache_controller.in_flight()
    assert hm.check_integrity(cache) == []
    before = cache.kv_pool.k_buffer[:, node.value].clone()
    alloc = cache.kv_pool.allocator
    free_before = alloc.available_size()
    alloc.free_owned(node.value)
    assert [str(v) for v in hm.check_integrity(cache)][:1] == [
        f"INTEGRITY node #{node.id}: write ack {ack.ack_id}: a source KV slot was freed before the copy landed"]
    assert alloc.available_size() == free_before and alloc.parked_size() == 4
    reused = cache.kv_pool.alloc(cache.kv_pool.available_size())  # every free slot
    assert not set(node.value.tolist()) & set(reused.tolist())
    cache.kv_pool.k_buffer[:, reused] = 99.0
    cache.cache_controller.complete(ack)
    assert torch.equal(cache.host_kv_pool.k_buffer[:, node.host_value], before)
    cache.writing_check()
    assert alloc.parked_size() == 0 and alloc.available_size() == 4
