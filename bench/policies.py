#!/usr/bin/env python3
"""Policy lab figures: reuse ceilings, the sweep table at three sizes, replay speed per policy, and
how the sweep's cost grows with the trace. One JSON line per figure.

    python bench/policies.py [--trace conversation_trace.jsonl] [--repeat 3] [--what all]

* ``ceilings`` — per admission policy on the trace (unbounded cache);
* ``table`` — every (admission, eviction) pair at the sizes of notebook 08's H200 example
  (device only, + 256 GB host, + 1 TB host): hit rate and share of prefill FLOPs saved;
* ``speed`` — per (admission, online eviction): the device tier alone with the H200's bounded
  pools (2,296 blocks, 336 states), requests per CPU second of this process (one torch thread),
  the median of ``--repeat`` runs; ``flop_aware`` twice: with its alpha tuning (20 replays of the
  bootstrap window count in its time, ``alpha_tuning_share`` of it) and at the alpha it chose;
* ``scaling`` — a small sweep over the trace repeated 1x, 2x and 4x (each copy with its own hash
  ids, appended): seconds per request should stay flat if the cost is linear.

Timings vary between machines and with other work on the same one: compare ratios from one run.
``himamba bench policies`` runs any sweep from the command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himamba.sim import admission, mooncake, policy_replay, policy_sweep  # noqa: E402

ADMISSIONS = ("sequence_end", "page_aligned", "branch_point", "every_n:4")
ONLINE = ("lru", "lru_consumed", "flop_aware")


def repeated(trace: list, times: int) -> list:
    """``trace`` appended to itself ``times`` times, each copy's hash ids shifted past the last's."""
    span = 1 + max(h for r in trace for h in r.hash_ids)
    return [mooncake.MooncakeRequest(r.timestamp, r.input_length, r.output_length,
                                     tuple(h + k * span for h in r.hash_ids), r.block_tokens)
            for k in range(times) for r in trace]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=None, help="Mooncake trace (default: the conversation trace in shared/traces)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per speed figure (median)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests")
    ap.add_argument("--what", choices=("all", "ceilings", "table", "speed", "scaling"), default="all")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    path = args.trace or mooncake.find_trace("conversation_trace.jsonl")
    if path is None:
        print("no trace: pass --trace FILE (the Mooncake traces are not beside this checkout)", file=sys.stderr)
        return 2
    trace = mooncake.load_mooncake(path, limit=args.limit)
    items = policy_replay.block_items(trace)
    name = Path(path).name
    evictions = policy_sweep.available_evictions()
    gc.collect()
    gc.freeze()  # the trace's ints live for the whole run: keep the collector off them
    if args.what in ("all", "ceilings"):
        c = admission.ceilings(items, ("sequence_end", "page_aligned", "branch_point", "every_n:1", "every_n:4"))
        print(json.dumps({"figure": "ceilings", "trace": name, "requests": len(trace), **c}))
    if args.what in ("all", "table"):
        frame = policy_sweep.policy_sweep(items, admissions=ADMISSIONS[:3], evictions=evictions,
                                          sizes=policy_sweep.h200_sizes(), progress=False)
        for row in frame.to_dict("records"):
            print(json.dumps({"figure": "table", "trace": name, **{k: row.get(k) for k in (
                "admission", "eviction", "size", "hit_rate", "hit_rate_tokens", "flops_saved", "alpha", "error")}}))
    if args.what in ("all", "speed"):
        h200 = policy_sweep.h200_sizes((0,))[0]
        for policy in ADMISSIONS:
            queue = [e for e in evictions if e in ONLINE]
            while queue:
                eviction = queue.pop(0)
                runs = []
                for _ in range(args.repeat):
                    cache = policy_replay.make_cache(h200["device_kv"], h200["device_states"], eviction=eviction)
                    runs.append(policy_replay.replay(cache, items, policy))
                    del cache
                print(json.dumps({"figure": "speed", "trace": name, "admission": policy, "eviction": eviction,
                                  "requests": len(items), "runs": len(runs),
                                  "requests_per_cpu_s": statistics.median(r["requests_per_cpu_s"] for r in runs),
                                  "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
                                  "hit_rate": runs[-1]["hit_rate"], "alpha": runs[-1].get("alpha"),
                                  "alpha_window": runs[-1].get("alpha_window"), "accounting_ok": runs[-1]["accounting_ok"],
                                  **({"alpha_tuning_share": round(statistics.median(
                                      r["alpha_tuning_cpu_s"] * r["requests_per_cpu_s"] / r["requests"] for r in runs), 3)}
                                     if "alpha_tuning_cpu_s" in runs[-1] else {})}))
                if eviction == "flop_aware":  # the tuning's replays count above; the policy alone at its alpha
                    queue.insert(0, f"flop_aware:{runs[-1]['alpha']}")
    if args.what in ("all", "scaling"):
        sizes = policy_sweep.h200_sizes((0,))
        for times in (1, 2, 4):
            longer = policy_replay.block_items(repeated(trace, times))
            start = time.perf_counter()
            cpu = time.process_time()
            frame = policy_sweep.policy_sweep(longer, admissions=("page_aligned", "branch_point"), evictions=("lru",),
                                              sizes=sizes, progress=False)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(json.dumps({"figure": "scaling", "trace": name, "times": times, "requests": len(longer),
                              "configurations": len(frame), "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                              "cpu_us_per_request_and_config": round(1e6 * cpu / len(longer) / len(frame), 1),
                              "hit_rate": frame["hit_rate"].round(4).tolist()}))
            del longer
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
