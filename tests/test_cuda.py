"""The CUDA path: device pools on the GPU, pinned host pools, copies on side streams.

Skipped without a GPU. The random scripts are the ones ``test_copy_engines.py`` runs on the
deferred CPU engine (CUDA's timing emulated); here the GPU's own timing applies. Nothing
synchronises after every operation (that would hide races): integrity is checked every 100
operations and at the end, and load acks are polled until they complete.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_copy_engines import DEFERRED_SCRIPTS

import himamba as hm
from himamba.sim.fuzz import make_cache, make_script, run_script
from himamba.sim.ops import DriverState, apply

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cache(**kw) -> hm.HiMambaRadixCache:
    cfg = hm.CacheConfig(device="cuda", write_policy="write_back", **kw)
    return hm.HiMambaRadixCache(cfg)


def test_pools_live_on_the_gpu_and_host_pools_are_pinned() -> None:
    cache = _cache()
    assert cache.kv_pool.k_buffer.is_cuda and cache.mamba_pool.ssm.is_cuda
    assert cache.host_kv_pool.k_buffer.is_pinned() and cache.host_mamba_pool.ssm.is_pinned()
    assert cache.cache_controller.cuda


def test_demotion_and_load_back_round_trip_keep_every_byte() -> None:
    from helpers import assert_healthy, put

    cache = _cache()
    put(cache, [1, 2, 3])
    put(cache, [1, 2, 3, 4, 5])
    assert cache.evict(5) == 5
    assert_healthy(cache)
    assert [n.kv_tier() for n in cache.nodes()][1:] == ["H", "H"]
    m = cache.match_prefix([1, 2, 3, 4, 5])
    loaded, node = cache.init_load_back(m.best_match_node)
    assert len(loaded) == 5
    assert cache.ready_to_load_host_cache() == 1
    deadline = time.monotonic() + 10
    while cache.loading_check() == 0:
        assert time.monotonic() < deadline, "the load ack never completed"
    assert cache.ongoing_load_back == {} and node.full_lock_ref == 0
    assert_healthy(cache)
    assert cache.cache_controller.bytes_device_to_host > 0 and cache.cache_controller.bytes_host_to_device > 0


@pytest.mark.parametrize(("policy", "page_size"), DEFERRED_SCRIPTS)
def test_random_operations_on_cuda(policy: str, page_size: int) -> None:
    script = make_script(11 + page_size, 400, page_size=page_size, write_policy=policy, manual_acks=True)
    script["config"]["device"] = "cuda"
    report = run_script(script, integrity_every=100)
    assert report.failure is None, report.failure
    cache = make_cache(script)
    state = DriverState()
    for op in script["ops"]:
        apply(cache, state, op)
    assert hm.check_integrity(cache) == []


def test_a_cpu_index_tensor_is_refused_by_a_cuda_cache() -> None:
    cache = _cache()
    with pytest.raises(hm.InvalidInputError, match="is on 'cpu' but indexes a pool on 'cuda"):
        cache.insert([1, 2], torch.zeros(2, dtype=torch.int64), cache.mamba_pool.alloc(1))


def test_streams_belong_to_the_pools_device() -> None:
    engine = _cache().cache_controller.engine
    assert engine.write_stream.device == engine.load_stream.device == engine.device
    assert engine.device.index is not None
