"""measure_bandwidth: how fast the transfer controller moves KV pages and a state, next to a
plain ``copy_`` of the same bytes.

One call builds a small device/host pool pair for ``tokens`` KV rows (plus one mamba state),
times the controller's write (device -> host, ack waited) and load (``load`` + ``start_loading``,
ack waited), and a plain copy of a contiguous buffer of the same byte count (pinned host memory
when the device is CUDA). It allocates and frees its own pools; nothing outside changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from himamba.errors import InvalidInputError
from himamba.memory.model import ModelSpec
from himamba.memory.pools import KVPool, MambaPool
from himamba.memory.transfer import StateTransfer, TransferController


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn: Callable[[], None], device: torch.device, repeat: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def measure_bandwidth(spec: ModelSpec, device: torch.device | str, tokens: int, page_size: int,
                      repeat: int = 10) -> dict:
    """Time one transfer of ``tokens`` KV rows plus one state each way, and a plain copy.

    Returns a JSON-able dict: ``model``, ``device``, ``tokens``, ``page_size``, ``bytes`` and the
    rates ``write_GBps``, ``plain_d2h_GBps``, ``load_GBps``, ``plain_h2d_GBps`` (decimal GB/s).
    ``tokens`` must be a positive multiple of ``page_size``; ``repeat`` at least 1.
    """
    device = torch.device(device)
    if not isinstance(tokens, int) or not isinstance(page_size, int) or page_size < 1 \
            or tokens < page_size or tokens % page_size:
        raise InvalidInputError(f"tokens={tokens!r} must be a positive multiple of page_size={page_size!r}")
    if not isinstance(repeat, int) or repeat < 1:
        raise InvalidInputError(f"repeat must be an int of at least 1, got {repeat!r}")
    capacity = tokens * 2
    pin = device.type == "cuda"
    dev_kv = KVPool(spec, capacity, page_size, device)
    dev_states = MambaPool(spec, 4, device)
    host_kv = KVPool(spec, capacity, page_size, "cpu", pin_memory=pin)
    host_states = MambaPool(spec, 4, "cpu", pin_memory=pin)
    cc = TransferController(dev_kv, dev_states, host_kv, host_states)
    dev_idx = dev_kv.alloc(tokens)
    dev_slot = dev_states.alloc(1)
    nbytes = spec.kv_bytes_per_token * tokens + spec.state_bytes_per_slot

    def write() -> None:
        st = StateTransfer(None, dev_slot)
        host = cc.write(dev_idx, 0, st)
        cc.ack_write_queue.popleft().wait()
        host_kv.free(host)
        host_states.free(st.host)

    def load() -> None:
        host = host_kv.alloc(tokens)
        hslot = host_states.alloc(1)
        st = StateTransfer(hslot, None)
        dev = cc.load(host, 0, [st])
        cc.start_loading()
        cc.ack_load_queue.popleft().wait()
        dev_kv.free(dev)
        dev_states.free(st.device)
        host_kv.free(host)
        host_states.free(hslot)

    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    t_write = _seconds_per_call(write, device, repeat)
    t_load = _seconds_per_call(load, device, repeat)
    t_d2h = _seconds_per_call(lambda: dst.copy_(src, non_blocking=pin), device, repeat)
    t_h2d = _seconds_per_call(lambda: src.copy_(dst, non_blocking=pin), device, repeat)

    def gbs(t: float) -> float:
        return float(f"{nbytes / t / 1e9:.4g}")  # four significant digits: small copies stay above 0

    return {
        "model": spec.name, "device": str(device), "tokens": tokens, "page_size": page_size, "bytes": nbytes,
        "write_GBps": gbs(t_write), "plain_d2h_GBps": gbs(t_d2h),
        "load_GBps": gbs(t_load), "plain_h2d_GBps": gbs(t_h2d),
    }
