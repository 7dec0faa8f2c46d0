#!/usr/bin/env python3
"""The fuzzer's figures: how fast it runs, and how quickly it finds and shrinks each legacy bug.

Three parts (all by default):

* ``--breakdown``: on one tree of about 100 nodes, the time of one operation and of each part of
  ``check_invariants`` (best of 5), and of ``check_integrity``.
* ``--throughput``: operations per second with ``check_invariants`` after every operation, at pool
  scale 1 (trees of about a dozen nodes) and at ``--big-scale`` (trees of about 100 nodes, in
  episodes of 10,000 operations so that they stay big), with one process and with ``--jobs``
  processes; ``--throughput-ops`` operations a run, each run ``--repeat`` times (the machine's
  noise shows in the spread). Integrity (every stored byte) is checked every
  ``--integrity-every`` operations. Prints one JSON line per run with the mean tree size.
* ``--legacy``: for each legacy switch and each seed in ``--seeds``, a run of at most ``--ops``
  operations with only that switch on: operations until the first failure, the failure's kind
  and the length of the shrunk script. Prints one JSON line per run and a summary per switch.

    python bench/fuzz.py [--breakdown] [--throughput] [--legacy] [--seeds 0 1 2 3 4] [--ops 10000] [--jobs 2]
                         [--throughput-ops 60000] [--repeat 3]

No assertions: the figures are for the reader.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himamba.sim.fuzz import fuzz  # noqa: E402

SWITCHES = ("B1", "B2", "B3", "B4", "B6", "B7", "B8")
BIG_EPISODE = 10_000  # operations per episode in the big-tree throughput runs


def throughput(ops: int, big_scale: int, jobs: int, integrity_every: int, repeat: int) -> None:
    """Small trees (pool scale 1, the default episodes) and big trees (``big_scale``, episodes of
    10,000 operations so that most of the run sees a grown tree), each with one process and with
    ``jobs``; every run ``repeat`` times."""
    runs = [("small trees", 1, None, 1), ("small trees", 1, None, jobs),
            ("big trees", big_scale, BIG_EPISODE, 1), ("big trees", big_scale, BIG_EPISODE, jobs)]
    for label, scale, episode, n_jobs in runs:
        for _ in range(repeat):
            report = fuzz(seed=0, ops=ops, scale=scale, episode=episode, jobs=n_jobs, integrity_every=integrity_every)
            print(json.dumps({
                "run": label, "scale": scale, "jobs": n_jobs, "ops": report.ops_run,
                "episode_length": report.extras["episode_length"], "mean_nodes": round(report.extras["nodes"], 1),
                "seconds": round(report.seconds, 2), "ops_per_s": round(report.ops_per_s),
                "integrity_every": integrity_every, "failure": report.failure and report.failure.kind,
            }), flush=True)


def breakdown(scale: int, ops: int, repeat: int) -> None:
    """Where one check's time goes on a big tree: the tree pass with both tiers' per-node rules,
    the device tier's whole-cache rules (LRU walks, leaf set, counters, pools), the host tier's;
    next to the mean cost of one operation. Best of ``repeat`` timings, under
    ``torch.inference_mode()`` as the fuzzer runs."""
    import torch

    with torch.inference_mode():
        _breakdown(scale, ops, repeat)


def _breakdown(scale: int, ops: int, repeat: int) -> None:
    from himamba.cache.device_invariants import DeviceRules
    from himamba.cache.host_invariants import HostRules
    from himamba.cache.integrity import check_integrity
    from himamba.cache.invariants import check_invariants, walk_tree
    from himamba.sim.fuzz import make_cache, make_script
    from himamba.sim.ops import DriverState, apply

    script = make_script(0, ops, scale=scale)
    cache, state = make_cache(script), DriverState()
    start = time.perf_counter()
    for op in script["ops"]:
        apply(cache, state, op)
    op_us = (time.perf_counter() - start) / ops * 1e6

    def best(fn, n: int = 200) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            times.append((time.perf_counter() - t) / n * 1e6)
        return round(min(times), 1)

    def rules():
        out = []
        return out, DeviceRules(cache, out, only_tier=False), HostRules(cache, out)

    def tree_pass():
        out, device, host = rules()
        return walk_tree(cache, out, device.visit, host.visit), device, host

    tree, device, host = tree_pass()
    parts = {
        "tree_pass_us": best(tree_pass),
        "device_finish_us": best(lambda: device.finish(tree, 0, 0)),
        "host_finish_us": best(lambda: host.finish(tree)),
        "check_invariants_us": best(lambda: check_invariants(cache, 0, 0)),
        "check_integrity_us": best(lambda: check_integrity(cache), 10),
    }
    print(json.dumps({"scale": scale, "nodes": cache.num_nodes(), "tensors_owned": len(device.kv) + len(device.states)
                      + len(host.kv) + len(host.states), "operation_us": round(op_us, 1), **parts}))


def legacy(seeds: list[int], ops: int, switches: list[str]) -> None:
    summary = {}
    for bug in switches:
        rows = []
        for seed in seeds:
            start = time.perf_counter()
            report = fuzz(seed=seed, ops=ops, legacy={bug})
            row = {
                "legacy": bug, "seed": seed, "found": report.failure is not None,
                "ops_until_failure": report.ops_run if report.failure else None,
                "kind": report.failure and report.failure.kind,
                "shrunk_ops": len(report.shrunk["ops"]) if report.shrunk else None,
                "seconds": round(time.perf_counter() - start, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        found = [r for r in rows if r["found"]]
        summary[bug] = {
            "found": f"{len(found)}/{len(rows)}",
            "median_ops_until_failure": statistics.median(r["ops_until_failure"] for r in found) if found else None,
            "max_ops_until_failure": max((r["ops_until_failure"] for r in found), default=None),
            "max_shrunk_ops": max((r["shrunk_ops"] for r in found), default=None),
        }
    print(json.dumps({"summary": summary}, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--throughput", action="store_true", help="only the throughput part")
    ap.add_argument("--legacy", action="store_true", help="only the legacy-switch part")
    ap.add_argument("--breakdown", action="store_true", help="only the check-time breakdown on a big tree")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--ops", type=int, default=10_000, help="operations per legacy run (default 10000)")
    ap.add_argument("--throughput-ops", type=int, default=60_000, help="operations per throughput run (default 60000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each throughput setting (default 3)")
    ap.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=SWITCHES)
    ap.add_argument("--big-scale", type=int, default=14, help="pool scale of the big-tree runs (default 14)")
    ap.add_argument("--jobs", type=int, default=2,
                    help="processes of the parallel runs: this one and N-1 workers (default 2)")
    ap.add_argument("--integrity-every", type=int, default=100,
                    help="integrity check period in the throughput runs (default 100)")
    args = ap.parse_args(argv)
    every_part = not (args.throughput or args.legacy or args.breakdown)
    if args.breakdown or every_part:
        breakdown(args.big_scale, 3_000, 5)
    if args.throughput or every_part:
        throughput(args.throughput_ops, args.big_scale, args.jobs, args.integrity_every, args.repeat)
    if args.legacy or every_part:
        legacy(args.seeds, args.ops, args.switches)


if __name__ == "__main__":
    main()
