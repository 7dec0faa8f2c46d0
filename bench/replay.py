#!/usr/bin/env python3
"""Replay a trace through a cache with the shared protocol and print its figures as JSON.

The benchmark ships with the package (``himamba bench replay``, :mod:`himamba.sim.bench_replay`);
this file runs it from a source checkout:

    python ../shared/bench/multiturn_trace.py --requests 2000 --seed 0 > trace.jsonl
    python bench/replay.py --trace trace.jsonl [--tiered] [--repeat 3] [--record]
    python bench/replay.py --trace conversation_trace.jsonl --format mooncake \\
        --checkpoint page_aligned --device-blocks 4000 --state-slots 600
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himamba.sim.bench_replay import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
