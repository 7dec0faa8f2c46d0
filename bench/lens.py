#!/usr/bin/env python3
"""The lens's figures: rendering a 1,000-node upstream tree, and what recording costs.

* ``render``: a tree of about 1,000 nodes built by serving random requests (a small alphabet, so
  they share prefixes and split edges) on himamba's ``MambaRadixCache``, on SGLang 0.5.11's own
  ``MambaRadixCache`` and (in its environment) on 0.5.23's ``UnifiedRadixCache`` on the Python and
  the Rust tree core; the time of the snapshot (``hm.take``), of the fitted render to SVG
  (``hm.to_svg``, the default: big trees folded), best of ``--repeat``, and of one render of the
  whole tree at natural size.
* ``recording``: the same random operation script run on each upstream tree unrecorded and under
  ``hm.Recorder`` (every event, a snapshot per step), best of ``--repeat``; the ratio.

Prints one JSON line per (tree, figure). No assertions. The 0.5.23 lines come from this script
run again inside ``.venv-sglang-0.5.23`` (``--inside``); where that environment is missing they
say so.

    python bench/lens.py [--nodes 1000] [--ops 200] [--repeat 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import himamba as hm  # noqa: E402
from himamba.lens import remote  # noqa: E402
from himamba.lens.replay import drive  # noqa: E402


def config(nodes: int) -> hm.CacheConfig:
    return hm.CacheConfig(device="cpu", device_kv_tokens=nodes * 40, host_kv_tokens=64, device_mamba_slots=nodes * 2,
                          host_mamba_slots=8)


def tree_script(nodes: int, seed: int) -> dict:
    """Requests until a tree holds about ``nodes`` nodes (each request adds a leaf and often a split)."""
    rng = random.Random(seed)
    ops = [{"op": "request", "tokens": [rng.randrange(6) for _ in range(rng.randint(4, 24))]}
           for _ in range(int(nodes * 0.75))]
    return {"cache": "device", "config": {}, "ops": ops}


def op_script(ops: int, seed: int) -> dict:
    """A random mix of requests, matches, locks and evictions."""
    rng = random.Random(seed)
    out = []
    for _ in range(ops):
        tokens = [rng.randrange(4) for _ in range(rng.randint(2, 10))]
        kind = rng.choices(["request", "match", "lock", "unlock", "evict", "evict_mamba"], [6, 3, 1, 1, 1, 1])[0]
        out.append({"op": kind, "tokens": tokens} if kind in ("request", "match", "lock")
                   else {"op": kind, "k": 0} if kind == "unlock" else {"op": kind, "n": rng.randint(1, 8)})
    return {"cache": "device", "config": {}, "ops": out}


def plain_run(side, script: dict) -> None:
    """The script's operations through the same driver, with no recorder."""
    from types import SimpleNamespace

    from himamba.differential.runner import apply_op

    held = SimpleNamespace(locks=[], pins=[])
    for op in script["ops"]:
        apply_op(side, held, op)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sides(inside: bool):
    """(name, side factory) for the trees this environment holds."""
    if inside:
        from himamba.lens.unified_side import UnifiedSide

        return [(f"sglang-0.5.23 {core}", lambda cfg, c=core: UnifiedSide(cfg, c)) for core in ("python", "rust")]
    from himamba.differential.sides import HimambaSide, UpstreamSide

    return [("himamba", lambda cfg: HimambaSide(cfg, False)), ("sglang-0.5.11", lambda cfg: UpstreamSide(cfg, False))]


def figures(args: argparse.Namespace, inside: bool) -> list[dict]:
    lines = []
    for name, make in sides(inside):
        side = make(config(args.nodes))
        plain_run(side, tree_script(args.nodes, args.seed))
        snap = hm.take(side.cache)
        whole = {"max_nodes": None, "fit": False}
        lines.append({"figure": "render", "tree": name, "nodes": len(snap) - 1,
                      "take_s": round(best(lambda s=side: hm.take(s.cache), args.repeat), 4),
                      "render_svg_s": round(best(lambda s=side: hm.to_svg(s.cache), args.repeat), 4),
                      "render_whole_svg_s": round(best(lambda s=side, w=whole: hm.to_svg(s.cache, **w), 1), 4)})
        if name == "himamba":
            continue
        script = op_script(args.ops, args.seed)

        def run(recorded: bool, make=make, name=name, script=script) -> None:
            side = make(config(64))
            if recorded:
                drive(side, script, name, skip=())
            else:
                plain_run(side, script)

        build = best(lambda make=make: make(config(64)), args.repeat)
        plain = best(lambda: run(False), args.repeat) - build
        recorded = best(lambda: run(True), args.repeat) - build
        lines.append({"figure": "recording", "tree": name, "ops": args.ops, "plain_s": round(plain, 4),
                      "recorded_s": round(recorded, 4), "ratio": round(recorded / plain, 2) if plain > 0 else None})
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1_000)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inside", action="store_true", help="(run inside the 0.5.23 environment)")
    args = ap.parse_args(argv)
    if args.inside:
        for line in figures(args, inside=True):
            print(json.dumps(line), flush=True)
        return
    for line in figures(args, inside=False):
        print(json.dumps(line), flush=True)
    python = remote.env_python()
    if not python.exists():
        print(json.dumps({"figure": "sglang-0.5.23", "missing": str(python.parent.parent.name)}))
        return
    done = subprocess.run([str(python), __file__, "--inside", *(argv if argv is not None else sys.argv[1:])],
                          capture_output=True, text=True, check=False, env=remote.worker_env())
    print("\n".join(ln for ln in done.stdout.splitlines() if ln.startswith("{")) or done.stderr[-2000:])


if __name__ == "__main__":
    main()
