"""Copy bandwidth of the transfer controller next to a plain copy of the same bytes, importable
from the package (notebooks run from any folder; ``bench/`` is not on their path).

    copy_bandwidth(hm.ModelSpec.qwen3_next_80b_a3b().scaled(1, 1), torch.device("cpu"), tokens=256)

For one transfer size (``tokens`` KV rows plus one mamba state) it times the controller's write
(device -> host, ack waited) and load (issue + ack waited), and a plain ``copy_`` of a buffer of
the same byte count each way (pinned host memory when the device is CUDA). On a CPU both tiers
are RAM, so the figures are memory-to-memory copies. Allocates its own pools; changes nothing
else.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from himamba.memory.model import ModelSpec
from himamba.memory.pools import KVPool, MambaPool
from himamba.memory.transfer import StateTransfer, TransferController


def _seconds(fn: Callable[[], None], device: torch.device, repeat: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeat


def copy_bandwidth(spec: ModelSpec, device: torch.device, tokens: int, page_size: int = 64,
                   repeat: int = 5) -> dict:
    """One row: model, device, tokens, page_size, bytes, and GB/s of ``write_GBps``,
    ``plain_d2h_GBps``, ``load_GBps``, ``plain_h2d_GBps`` (medians are left to the caller)."""
    pin = device.type == "cuda"
    dev_kv, dev_states = KVPool(spec, 2 * tokens, page_size, device), MambaPool(spec, 4, device)
    host_kv = KVPool(spec, 2 * tokens, page_size, "cpu", pin_memory=pin)
    host_states = MambaPool(spec, 4, "cpu", pin_memory=pin)
    cc = TransferController(dev_kv, dev_states, host_kv, host_states)
    dev_idx, dev_slot = dev_kv.alloc(tokens), dev_states.alloc(1)
    nbytes = spec.kv_bytes_per_token * tokens + spec.state_bytes_per_slot

    def write() -> None:
        st = StateTransfer(None, dev_slot)
        host = cc.write(dev_idx, 0, st)
        cc.ack_write_queue.popleft().wait()
        host_kv.free(host)
        host_states.free(st.host)

    def load() -> None:
        host, hslot = host_kv.alloc(tokens), host_states.alloc(1)
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
    seconds = {"write_GBps": _seconds(write, device, repeat),
               "plain_d2h_GBps": _seconds(lambda: dst.copy_(src, non_blocking=pin), device, repeat),
               "load_GBps": _seconds(load, device, repeat),
               "plain_h2d_GBps": _seconds(lambda: src.copy_(dst, non_blocking=pin), device, repeat)}
    return {"model": spec.name, "device": str(device), "tokens": tokens, "page_size": page_size, "bytes": nbytes,
            **{k: round(nbytes / t / 1e9, 3) for k, t in seconds.items()}}
