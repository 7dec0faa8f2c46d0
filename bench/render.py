#!/usr/bin/env python3
"""Time of the tree render on big trees: snapshot, build the graphviz Digraph, pipe it to SVG.

Builds trees of about 100, 1,000 and 10,000 nodes by inserting random token sequences (over a
small alphabet, so they share prefixes and split edges) into a tiered cache with large pools,
demotes part of them to host (so the render shows several node kinds), then times each stage
fitted (the default: at most 1,000 pt wide, folded) and, where feasible (100 and 1,000 nodes),
whole at natural size. Prints one JSON line per (tree size, setting) with the SVG's width in
points and the scale graphviz applied. No assertions.

    python bench/render.py [--sizes 100 1000 10000] [--repeat 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import himamba as hm  # noqa: E402
from himamba.observe.snapshot import take  # noqa: E402
from himamba.viz.graph import render, svg_scale  # noqa: E402

FULL_RENDER_LIMIT = 1_000  # above this many nodes, natural-size renders are skipped


def build_tree(n_nodes: int, seed: int = 0) -> hm.HiMambaRadixCache:
    """A write-back tiered cache on the CPU with at least ``n_nodes`` nodes; about a tenth of its
    device leaves demoted to host."""
    rng = random.Random(seed)
    cap = max(4_096, 40 * n_nodes)
    cache = hm.HiMambaRadixCache(hm.CacheConfig(
        device="cpu", device_kv_tokens=cap, host_kv_tokens=cap, device_mamba_slots=2 * n_nodes + 8,
        host_mamba_slots=2 * n_nodes + 8, write_policy="write_back"))
    alphabet = max(4, round(n_nodes ** 0.25))
    while cache.num_nodes() < n_nodes:
        for _ in range(max(1, (n_nodes - cache.num_nodes()) // 2)):
            tokens = [rng.randrange(alphabet) for _ in range(rng.randint(4, 24))]
            value = cache.kv_pool.alloc(len(tokens))
            slot = cache.mamba_pool.alloc(1)
            if cache.insert(tokens, value, slot).mamba_exist:
                cache.mamba_pool.free(slot)
    cache.evict(cache.total_size() // 10)
    return cache


def _timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(cache: hm.HiMambaRadixCache, fitted: bool, repeat: int) -> dict:
    kw = {} if fitted else {"max_nodes": None, "fit": False}
    t_snap, snap = _timed(lambda: take(cache), repeat)
    t_graph, graph = _timed(lambda: render(snap, lru_rank=True, **kw), repeat)
    t_svg, svg = _timed(lambda: graph.pipe(format="svg", encoding="utf-8"), repeat)
    width = float(re.search(r'<svg width="([\d.]+)pt"', svg).group(1))
    return {
        "nodes": len(snap) - 1, "fitted": fitted, "boxes": svg.count('class="node"'),
        "width_pt": width, "scale": svg_scale(svg),
        "snapshot_s": round(t_snap, 4), "digraph_s": round(t_graph, 4), "svg_s": round(t_svg, 4),
        "total_s": round(t_snap + t_graph + t_svg, 4), "svg_kb": round(len(svg) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for n in args.sizes:
        start = time.perf_counter()
        cache = build_tree(n, args.seed)
        build_s = time.perf_counter() - start
        for fitted in [True] + ([False] if n <= FULL_RENDER_LIMIT else []):
            row = measure(cache, fitted, args.repeat)
            row["build_s"] = round(build_s, 2)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
