"""Building SGLang 0.5.11's own caches on a CPU, over small real device pools.

:func:`build_upstream` returns upstream's ``MambaRadixCache`` (device tier) or
``HiMambaRadixCache`` (tiered), classes unmodified, over upstream's own device pools
(``HybridReqToTokenPool`` with its ``MambaPool``, ``HybridLinearKVPool`` and
``TokenToKVPoolAllocator``, all built on CPU for real) and, for the tiered cache, the stand-in
host pools and controller of :mod:`himamba.differential.standins`.

The server arguments upstream reads are given by a stand-in namespace (:class:`_ServerArgs`);
upstream's pool assembly for the tiered cache (which builds CUDA streams and pinned buffers) is
replaced, while one cache is built, by a stand-in that attaches the stand-in pools and
controller.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from himamba.differential.standins import (
    install_import_standins,
    make_host_pools,
    make_standin_controller,
)
from himamba.errors import HiMambaError

SGLANG_VERSION = "0.5.11"


class UpstreamUnavailable(HiMambaError):
    """SGLang 0.5.11 is not installed (``make differential`` installs it)."""


def upstream_available() -> bool:
    """Whether SGLang 0.5.11 is installed in this environment (nothing is imported)."""
    if importlib.util.find_spec("sglang") is None:
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang") == SGLANG_VERSION
    except PackageNotFoundError:
        return False


def require_upstream() -> None:
    """Import upstream's cache modules (with the stand-ins) or raise :class:`UpstreamUnavailable`."""
    if not upstream_available():
        raise UpstreamUnavailable(
            f"SGLang {SGLANG_VERSION} is not installed in this environment; run `make differential` "
            f"(it installs sglang=={SGLANG_VERSION} with --no-deps and requirements/sglang-{SGLANG_VERSION}-cpu.txt)")
    install_import_standins()


@dataclass(frozen=True)
class _ServerArgs:
    """Stand-in for ``ServerArgs``: the few fields the cache classes read."""

    hicache_write_policy: str = "write_through"
    hicache_io_backend: str = "kernel"
    hicache_mem_layout: str = "layer_first"
    hicache_storage_backend: str | None = None
    hicache_storage_backend_extra_config: str | None = None
    hicache_storage_prefetch_policy: str = "best_effort"
    extra_metric_labels: dict | None = None
    mamba_cache_chunk_size: int = 64
    served_model_name: str = "himamba-differential"


def _device_pools(config):
    from sglang.srt.configs.mamba_utils import Mamba2CacheParams, Mamba2StateShape
    from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import HybridLinearKVPool, HybridReqToTokenPool

    shape = Mamba2StateShape.create(tp_world_size=1, intermediate_size=4, n_groups=1, num_heads=1,
                                    head_dim=2, state_size=2, conv_kernel=2)
    params = Mamba2CacheParams(shape=shape, layers=[1])
    req_pool = HybridReqToTokenPool(
        size=4, mamba_size=config.device_mamba_slots, mamba_spec_state_size=0, max_context_len=4096,
        device="cpu", enable_memory_saver=False, cache_params=params, mamba_layer_ids=[1],
        enable_mamba_extra_buffer=config.page_size > 1, enable_overlap_schedule=False)
    kv = HybridLinearKVPool(
        size=config.device_kv_tokens, dtype=torch.float32, page_size=config.page_size, head_num=1, head_dim=2,
        full_attention_layer_ids=[0], enable_kvcache_transpose=False, device="cpu", mamba_pool=req_pool.mamba_pool)
    allocator = TokenToKVPoolAllocator(config.device_kv_tokens, torch.float32, "cpu", kv, need_sort=False)
    return req_pool, allocator


def build_upstream(config, tiered: bool):
    """Upstream's cache for a himamba :class:`~himamba.cache.config.CacheConfig` (pool sizes,
    page size, write policy, load-back threshold, state chunk size)."""
    require_upstream()
    from sglang.srt import server_args as server_args_module
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams

    if config.page_size != 1:
        raise HiMambaError("the differential runner supports page_size=1 only")
    args = _ServerArgs(hicache_write_policy=config.write_policy, mamba_cache_chunk_size=config.mamba_cache_chunk_size)
    server_args_module.set_global_server_args_for_scheduler(args)
    req_pool, allocator = _device_pools(config)
    params = CacheInitParams(disable=False, req_to_token_pool=req_pool, token_to_kv_pool_allocator=allocator,
                             page_size=config.page_size)
    if not tiered:
        from sglang.srt.mem_cache.mamba_radix_cache import MambaRadixCache

        return MambaRadixCache(params)
    from sglang.srt.mem_cache import hi_mamba_radix_cache as module

    def attach_standins(cache, params, server_args, **_):
        """Stand-in for upstream's pool assembly: stand-in host pools and controller."""
        from sglang.srt.mem_cache.hicache_storage import PoolName
        from sglang.srt.mem_cache.memory_pool_host import HostPoolGroup, PoolEntry

        host_kv, host_mamba = make_host_pools(config.host_kv_tokens, config.host_mamba_slots, config.page_size)
        entries = [
            PoolEntry(name=PoolName.KV, host_pool=host_kv, device_pool=cache.kvcache, layer_mapper=lambda i: i,
                      is_primary_index_anchor=True),
            PoolEntry(name=PoolName.MAMBA, host_pool=host_mamba, device_pool=req_pool.mamba_pool,
                      layer_mapper=lambda i: i, host_evict_fn=cache.evict_mamba_host,
                      device_evict_fn=cache.evict_mamba),
        ]
        group = HostPoolGroup(entries)
        cache.full_kv_pool_host, cache.mamba_pool_host = host_kv, host_mamba
        cache.host_pool_group = group
        cache.cache_controller = make_standin_controller(allocator, group, config.page_size, config.write_policy)

    original = module.attach_hybrid_pool_to_mamba_cache
    module.attach_hybrid_pool_to_mamba_cache = attach_standins
    try:
        cache = module.HiMambaRadixCache(params, args)
    finally:
        module.attach_hybrid_pool_to_mamba_cache = original
    cache.load_back_threshold = config.load_back_threshold
    return cache
