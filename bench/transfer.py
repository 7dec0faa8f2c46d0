#!/usr/bin/env python3
"""Device <-> host copy bandwidth of the transfer controller next to a plain copy of the same bytes.

For each transfer size (a number of pages of KV rows, plus one mamba state), times
``TransferController.write`` (device -> host, ack waited) and ``load`` + ``start_loading``
(host -> device, ack waited), and a plain ``copy_`` of a contiguous buffer of the same byte count
(pinned host memory when the device is CUDA). Prints one JSON line per size.

    python bench/transfer.py [--model qwen3-next-80b-a3b] [--device auto] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himamba.memory.device import resolve_device  # noqa: E402
from himamba.memory.model import ModelSpec  # noqa: E402
from himamba.memory.pools import KVPool, MambaPool  # noqa: E402
from himamba.memory.transfer import StateTransfer, TransferController  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def measure(spec: ModelSpec, device: torch.device, tokens: int, page_size: int, repeat: int) -> dict:
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
    t_write = _time(write, device, repeat)
    t_load = _time(load, device, repeat)
    t_d2h = _time(lambda: dst.copy_(src, non_blocking=pin), device, repeat)
    t_h2d = _time(lambda: src.copy_(dst, non_blocking=pin), device, repeat)
    gbs = lambda t: round(nbytes / t / 1e9, 3)  # noqa: E731
    return {
        "model": spec.name, "device": str(device), "tokens": tokens, "page_size": page_size, "bytes": nbytes,
        "write_GBps": gbs(t_write), "plain_d2h_GBps": gbs(t_d2h),
        "load_GBps": gbs(t_load), "plain_h2d_GBps": gbs(t_h2d),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-next-80b-a3b", choices=sorted(ModelSpec.presets()))
    ap.add_argument("--layers", type=int, default=1, help="full-attention and mamba layers kept (memory)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--page-size", type=int, default=64)
    ap.add_argument("--pages", default="1,4,16,64", help="comma-separated page counts")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(1)
    spec = ModelSpec.presets()[args.model].scaled(args.layers, args.layers)
    for pages in (int(p) for p in args.pages.split(",")):
        print(json.dumps(measure(spec, device, pages * args.page_size, args.page_size, args.repeat)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
