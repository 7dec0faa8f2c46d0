"""The CUDA path: device pools on the GPU, pinned host pools, copies on side streams.

Skipped without a GPU. Everything here also runs (on the CPU code path) in the other tests;
these prove the same operations keep bytes exact when copies are asynchronous.
"""

from __future__ import annotations

import pytest
import torch

import himamba as hm
from himamba.sim.fuzz import make_script, run_script

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
    cache.ready_to_load_host_cache()
    cache.loading_check()
    torch.cuda.synchronize()
    assert_healthy(cache)
    assert cache.cache_controller.bytes_device_to_host > 0 and cache.cache_controller.bytes_host_to_device > 0


@pytest.mark.parametrize("policy", ["write_through", "write_back"])
def test_random_operations_on_cuda(policy: str) -> None:
    script = make_script(7, 1500, write_policy=policy, manual_acks=False)
    script["config"]["device"] = "cuda"
    report = run_script(script, integrity_every=1)
    assert report.failure is None, report.failure
