#!/usr/bin/env python3
"""Run a sweep of cache configurations over a trace and print its wall time and peak memory as JSON.

The default grid has 24 configurations of the tiered cache (device KV size x host KV size x write
policy x cascade rule) on a LocalCluster of 2 single-threaded worker processes. Memory is sampled
every 0.25 s over this process and all its children (scheduler, nannies, workers): the peak of the
summed RSS and of the summed PSS (proportional set size: shared library pages counted once
across processes, so closer to what the machine really spends).

    python ../shared/bench/multiturn_trace.py --requests 2000 --seed 0 > trace.jsonl
    python bench/sweep.py --trace trace.jsonl [--out sweep.csv]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GRID = {
    "device_kv_tokens": [25_000, 50_000, 100_000],
    "host_kv_tokens": [100_000, 300_000],
    "write_policy": ["write_through", "write_back"],
    "cascade_rule": ["himamba", "unified"],
}
BASE = {"cache": "tiered", "device_mamba_slots": 200, "host_mamba_slots": 800}


class MemorySampler(threading.Thread):
    """Peak summed RSS / PSS (MiB) of this process and its descendants, sampled periodically."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process()
        self.interval = interval
        self.peak_rss = self.peak_pss = 0.0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            rss = pss = 0
            procs = [self.root, *self.root.children(recursive=True)]
            for p in procs:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak_rss = max(self.peak_rss, rss / 2**20)
            self.peak_pss = max(self.peak_pss, pss / 2**20)
            self.peak_processes = max(self.peak_processes, len(procs))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True, help="JSON-lines trace (shared format or himamba's)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GiB", help="per worker (dask syntax)")
    ap.add_argument("--no-probe", action="store_true", help="do not count evictions (faster)")
    ap.add_argument("--out", default=None, help="write the result frame as CSV here")
    args = ap.parse_args(argv)

    from himamba.sim import load_jsonl, pack, sweep

    sampler = MemorySampler()
    sampler.start()
    start = time.perf_counter()
    workload = pack(load_jsonl(args.trace)[: args.limit])
    loaded = time.perf_counter() - start
    frame = sweep(GRID, workload, base=BASE, n_workers=args.workers, memory_limit=args.memory_limit,
                  probe=not args.no_probe)
    wall = time.perf_counter() - start
    sampler.stop()
    if args.out:
        frame.to_csv(args.out)
    errors = frame["error"].notna().sum()
    print(json.dumps({
        "configurations": len(frame),
        "requests": len(workload),
        "tokens": workload.total_tokens,
        "workers": args.workers,
        "memory_limit": args.memory_limit,
        "probe": not args.no_probe,
        "wall_s": round(wall, 1),
        "load_s": round(loaded, 1),
        "task_s_median": round(float(frame["seconds"].median()), 2),
        "task_s_max": round(float(frame["seconds"].max()), 2),
        "peak_rss_all_processes_mib": round(sampler.peak_rss),
        "peak_pss_all_processes_mib": round(sampler.peak_pss),
        "worker_peak_rss_mib_max": float(frame["worker_peak_rss_mb"].max()),
        "processes": sampler.peak_processes,
        "errors": int(errors),
        "violations": int(frame["violations"].fillna(0).sum()) if "violations" in frame else None,
        "integrity_violations": int(frame["integrity_violations"].fillna(0).sum()) if "integrity_violations" in frame else None,
        "hit_rate_range": [round(float(frame["hit_rate"].min()), 4), round(float(frame["hit_rate"].max()), 4)]
        if "hit_rate" in frame else None,
    }))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
