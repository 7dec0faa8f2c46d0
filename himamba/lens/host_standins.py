"""CPU stand-ins for what SGLang 0.5.23's HiCache host tier needs from CUDA, so that upstream's own
``UnifiedRadixCache.init_hicache`` (host pools, ``HostPoolGroup``, ``HybridCacheController``, all
upstream's, unmodified) builds and moves real bytes on a CPU:

* **pinned-buffer registration**: while the host pools are built, a ``"cpu"`` entry in
  upstream's table of host allocation functions allocates through the pool's own allocator and
  registers nothing (upstream's default entry calls ``cudaHostRegister``); the entry is removed
  again afterwards;
* **the transfer kernels** of the ``direct`` I/O backend (``transfer_kv_direct``,
  ``transfer_kv_all_layer_direct_lf_pf``, ``transfer_kv_per_layer_direct_pf_lf``, which a CUDA
  build imports from its kernel package): plain torch index copies between the device buffers and
  the ``page_first_direct`` host buffers, bound into the host pool modules (KV and mamba);
* **streams and events**: the controller's and the transfer engine's device module is replaced
  by :class:`CpuDeviceModule`, whose streams and events do nothing (a CPU copy has finished when
  it returns), so every event reads as finished.

Everything else is upstream's. :func:`attach_host_tier` is what
:class:`~himamba.lens.unified_side.UnifiedSide` calls when asked for a host tier; the side that
drives it is :class:`~himamba.lens.unified_host.UnifiedHostSide`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

IO_BACKEND, LAYOUT = "direct", "page_first_direct"


# -- streams and events ------------------------------------------------------------------------------
class CpuEvent:
    """A stand-in device event: recording and waiting do nothing; it has always finished."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def record(self, *args: Any) -> None:
        return None

    def wait(self, *args: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class CpuStream:
    """A stand-in device stream: work submitted "on" it has run when the call returns."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def wait_stream(self, other: Any) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def record_event(self, event: Any = None) -> CpuEvent:
        return event if event is not None else CpuEvent()

    def query(self) -> bool:
        return True


class CpuDeviceModule:
    """The subset of a torch device module (``torch.cuda``) the HiCache controller and its
    transfer engine use, for a CPU: :class:`CpuStream`, :class:`CpuEvent`, ``stream`` (a context
    that does nothing), ``current_stream``, ``synchronize``."""

    __name__ = "himamba.lens.host_standins.CpuDeviceModule"
    Stream, Event = CpuStream, CpuEvent

    @staticmethod
    @contextlib.contextmanager
    def stream(stream: Any) -> Iterator[None]:
        yield None

    @staticmethod
    def current_stream(*args: Any) -> CpuStream:
        return CpuStream()

    @staticmethod
    def synchronize(*args: Any) -> None:
        return None


# -- the transfer functions of the direct backend ------------------------------------------------------
def _idx(indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return indices.to(device=like.device, dtype=torch.int64)


def copy_lf_to_pf(src_ptrs: list[torch.Tensor], dst_ptrs: list[torch.Tensor], src_indices: torch.Tensor,
                  dst_indices: torch.Tensor, page_size: int) -> None:
    """Device (one buffer per layer, rows by token) to host (``page_first_direct``: ``[page, layer,
    slot in page, ...]``), all layers: ``src_ptrs`` holds ``len(dst_ptrs)`` groups of one buffer
    per layer (K layers then V layers; one group for a state buffer); token ``i`` goes from row
    ``src_indices[i]`` to page ``dst_indices[i] // page_size``, slot ``dst_indices[i] % page_size``."""
    layers = len(src_ptrs) // len(dst_ptrs)
    for g, dst in enumerate(dst_ptrs):
        d = _idx(dst_indices, dst)
        pages, slots = d // page_size, d % page_size
        for layer in range(layers):
            src = src_ptrs[g * layers + layer]
            dst[pages, layer, slots] = src[_idx(src_indices, src)].to(dst.device, dst.dtype)


def copy_pf_to_lf(src_ptrs: list[torch.Tensor], dst_ptrs: list[torch.Tensor], src_indices: torch.Tensor,
                  dst_indices: torch.Tensor, layer_id: int, page_size: int) -> None:
    """Host (``page_first_direct``) to device, one layer: for each pair of ``src_ptrs`` /
    ``dst_ptrs`` (K and V, or one state buffer), ``dst[dst_indices[i]]`` becomes the host row at
    page ``src_indices[i] // page_size``, slot ``src_indices[i] % page_size``, layer ``layer_id``."""
    for src, dst in zip(src_ptrs, dst_ptrs, strict=True):
        s = _idx(src_indices, src)
        dst[_idx(dst_indices, dst)] = src[s // page_size, layer_id, s % page_size].to(dst.device, dst.dtype)


def copy_layer_rows(src_layers: list[torch.Tensor], dst_layers: list[torch.Tensor], src_indices: torch.Tensor,
              dst_indices: torch.Tensor, page_size: int = 1) -> None:
    """Row copies between matching buffers (``layer_first``): ``dst[dst_indices] =
    src[src_indices]`` for each pair."""
    for src, dst in zip(src_layers, dst_layers, strict=True):
        dst[_idx(dst_indices, dst)] = src[_idx(src_indices, src)].to(dst.device, dst.dtype)


_TRANSFERS = {"transfer_kv_all_layer_direct_lf_pf": copy_lf_to_pf,
              "transfer_kv_per_layer_direct_pf_lf": copy_pf_to_lf, "transfer_kv_direct": copy_layer_rows}


def install_host_standins() -> None:
    """Bind the CPU transfer functions into upstream's host pool modules and the CPU device module
    into its controller and transfer engine (idempotent; for this process)."""
    from himamba.differential.standins import install_import_standins

    install_import_standins()
    import sglang.srt.managers.cache_controller as controller
    import sglang.srt.mem_cache.l2_transfer as l2
    import sglang.srt.mem_cache.pool_host.mamba as mamba_host
    import sglang.srt.mem_cache.pool_host.mha as mha_host

    for module in (mha_host, mamba_host):
        for name, fn in _TRANSFERS.items():
            setattr(module, name, fn)
    controller.device_module = l2.device_module = CpuDeviceModule


def _plain_host_alloc(dims: tuple, dtype: torch.dtype, device: str, pin_memory: bool, allocator: Any,
                      registration_granularity_bytes: int | None = None) -> torch.Tensor:
    """Host buffer allocation through the pool's own allocator, registering nothing."""
    return allocator.allocate(dims, dtype=dtype, device=device)


@contextlib.contextmanager
def _unregistered_host_buffers() -> Iterator[None]:
    from sglang.srt.mem_cache.pool_host import common

    table = common.ALLOC_MEMORY_FUNCS
    had, before = "cpu" in table, table.get("cpu")
    table["cpu"] = _plain_host_alloc
    try:
        yield
    finally:
        if had:
            table["cpu"] = before
        else:
            del table["cpu"]


def host_server_fields(config: Any) -> dict[str, Any]:
    """The ``ServerArgs`` fields that ask for the host tier: hierarchical cache, the direct I/O
    backend and its ``page_first_direct`` layout, the config's write policy, and the host/device
    ratio of ``host_kv_tokens`` to ``device_kv_tokens``."""
    return {"enable_hierarchical_cache": True, "hicache_ratio": config.host_kv_tokens / config.device_kv_tokens,
            "hicache_write_policy": config.write_policy, "hicache_io_backend": IO_BACKEND,
            "hicache_mem_layout": LAYOUT}


def attach_host_tier(cache: Any, server_args: Any, params: Any) -> None:
    """Run upstream's ``init_hicache`` on ``cache`` with the CPU stand-ins in place; afterwards
    ``cache.cache_controller`` and ``cache.host_pool_group`` are upstream's own objects."""
    install_host_standins()
    with _unregistered_host_buffers():
        cache.init_hicache(server_args, params)
