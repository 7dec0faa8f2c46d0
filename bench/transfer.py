#!/usr/bin/env python3
"""Device <-> host copy bandwidth of the transfer controller next to a plain copy of the same bytes.

For each transfer size (a number of pages of KV rows, plus one mamba state), times
``TransferController.write`` (device -> host, ack waited) and ``load`` + ``start_loading``
(host -> device, ack waited), and a plain ``copy_`` of a contiguous buffer of the same byte count
(pinned host memory when the device is CUDA). Prints one JSON line per size. The measurement is
:func:`himamba.memory.bandwidth.measure_bandwidth`.

    python bench/transfer.py [--model qwen3-next-80b-a3b] [--device auto] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himamba.memory.bandwidth import measure_bandwidth as measure  # noqa: E402  (notebooks import it from here)
from himamba.memory.device import resolve_device  # noqa: E402
from himamba.memory.model import ModelSpec  # noqa: E402


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
