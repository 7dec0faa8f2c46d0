#!/usr/bin/env python3
"""Time of the tree render on big trees: snapshot, build the graphviz Digraph, pipe it to SVG.

Builds trees of about 100, 1,000 and 10,000 nodes by inserting random token sequences (over a
small alphabet, so they share prefixes and split edges) into a tiered cache with large pools,
demotes part of them to host (so the render shows several node kinds), then times each stage
fitted (the default: at most 1,000 pt wide, folded) and, where feasible (100 and 1,000 nodes),
whole at natural size. Prints one JSON line per (tree size, setting) with the SVG's width in
points and CSS pixels (1 pt = 4/3 px) and the scale graphviz applied.

Then three more lines: ``export`` (a 21-step recording of serves on the 1,000-node tree
written as one HTML page: its size and build time), ``recording`` (memory kept per recorded
step on the 100-node tree, measured with tracemalloc after a collection) and ``palette`` (the
closest pair of fills and of borders under each simulated vision, ΔE*76). No assertions.

    python bench/render.py [--sizes 100 1000 10000] [--repeat 3] [--seed 0] [--no-extras]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import re
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import himamba as hm  # noqa: E402
from himamba.observe.snapshot import take  # noqa: E402
from himamba.viz import palette  # noqa: E402
from himamba.viz.graph import render, svg_scale  # noqa: E402
from himamba.viz.stepper import to_html  # noqa: E402

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
        "width_pt": width, "width_px": round(width * 4 / 3), "scale": svg_scale(svg),
        "snapshot_s": round(t_snap, 4), "digraph_s": round(t_graph, 4), "svg_s": round(t_svg, 4),
        "total_s": round(t_snap + t_graph + t_svg, 4), "svg_kb": round(len(svg) / 1024, 1),
    }


def serves(cache: hm.HiMambaRadixCache, rec: hm.Recorder, steps: int, seed: int) -> None:
    """Serve random requests under ``rec`` until it holds at least ``steps`` steps."""
    rng = random.Random(seed)
    with rec:
        while len(rec) < steps:
            hm.serve(cache, [rng.randrange(4) for _ in range(rng.randint(4, 20))])


def export_figures(seed: int) -> dict:
    """Size and build time of a 21-step export of the 1,000-node tree."""
    cache = build_tree(1_000, seed)
    rec = hm.Recorder(cache)
    serves(cache, rec, 21, seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        page = to_html(rec.steps[:21], Path(tmp) / "steps.html")
        seconds = time.perf_counter() - start
        size = page.stat().st_size
    return {"export": "21 steps", "nodes": cache.num_nodes(), "bytes": size, "mb": round(size / 1e6, 3),
            "build_s": round(seconds, 2)}


def recording_figures(seed: int) -> dict:
    """Memory kept per recorded step on the 100-node tree."""
    cache = build_tree(100, seed)
    rec = hm.Recorder(cache)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    serves(cache, rec, 300, seed + 1)
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"recording": "serves", "nodes": cache.num_nodes(), "steps": len(rec),
            "bytes_per_step": round(kept / len(rec))}


def palette_figures() -> dict:
    """The closest pair of fills and of borders under each simulated vision."""
    def rounded(report: dict) -> dict:
        return {vision: [round(d, 1), a, b] for vision, (d, a, b) in report.items()}

    return {"palette": "closest pairs, ΔE*76", "fills": rounded(palette.palette_report()),
            "borders": rounded(palette.palette_report(palette.borders()))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-extras", action="store_true", help="only the render timings")
    args = ap.parse_args(argv)
    for n in args.sizes:
        start = time.perf_counter()
        cache = build_tree(n, args.seed)
        build_s = time.perf_counter() - start
        for fitted in [True] + ([False] if n <= FULL_RENDER_LIMIT else []):
            row = measure(cache, fitted, args.repeat)
            row["build_s"] = round(build_s, 2)
            print(json.dumps(row), flush=True)
    if not args.no_extras:
        for figures in (export_figures(args.seed), recording_figures(args.seed), palette_figures()):
            print(json.dumps(figures, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
