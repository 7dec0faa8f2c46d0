#!/usr/bin/env python3
"""himamba's MambaRadixCache against SGLang 0.5.11's own, on the shared replay protocol, interleaved.

    python ../shared/bench/multiturn_trace.py --requests 2000 --seed 0 > trace.jsonl
    python bench/compare_upstream.py --trace trace.jsonl [--repeat 5]

Both caches replay the same trace with the same protocol (``../shared/bench/README.md``: match,
lock, allocate KV with ``evict(short + 256)`` on shortage and a state slot with
``evict_mamba(8)``, insert, unlock; every 50 requests evict to 25% free; 300,000 KV tokens, 600
states, page size 1, one torch thread). Runs alternate himamba, SGLang, himamba, ... so both see
the same machine load, each after a full collection (so that no run pays for the garbage the
one before it left); the line printed has each side's median ``requests_per_s`` over the runs,
``speedup`` (median of the per-pair ratios himamba / SGLang), the same on this process's CPU time
(``*_per_cpu_s``, ``speedup_cpu``: steadier on a shared machine), the fastest run of each side
(``*_best_requests_per_cpu_s``, ``speedup_best``: the least disturbed runs), hit rates and
eviction counts.

SGLang's cache runs on its real CPU pools, built by :func:`himamba.differential.upstream.build_upstream`
(``make differential`` installs SGLang 0.5.11; the import stand-ins live there). Without SGLang
the bench prints why and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himamba.sim import protocol  # noqa: E402
from himamba.sim.trace_io import load_token_trace  # noqa: E402

SIZES = protocol.PROTOCOL


def import_sglang():
    """SGLang 0.5.11's cache builder and parameter classes (through :mod:`himamba.differential`,
    which installs the CPU stand-ins), or ``None`` when SGLang 0.5.11 is not installed."""
    from himamba.differential.upstream import build_upstream, upstream_available

    if not upstream_available():
        return None
    import warnings

    from himamba.cache.config import CacheConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = CacheConfig(device="cpu", device_kv_tokens=SIZES["device_kv_tokens"],
                             device_mamba_slots=SIZES["device_mamba_slots"], page_size=1)
        build_upstream(config, tiered=False)  # imports upstream's modules once, outside the timing
        from sglang.srt.mem_cache import base_prefix_cache, radix_cache
    return types.SimpleNamespace(build=lambda: build_upstream(config, tiered=False), params=base_prefix_cache,
                                 RadixKey=radix_cache.RadixKey)


def replay_sglang(sg, items) -> dict:
    """The protocol on SGLang's cache, driven through its own parameter objects."""
    cache = sg.build()
    kv, states = cache.token_to_kv_pool_allocator, cache.req_to_token_pool.mamba_pool
    P = sg.params
    kv_cap, st_cap = kv.size, states.size
    matched_total = prompt_total = evicted_tokens = evicted_states = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, (tokens, plen, _, _) in enumerate(items):
        full = sg.RadixKey(tokens)
        m = cache.match_prefix(P.MatchPrefixParams(key=full[:plen]))
        prefix, node = m.device_indices, m.last_device_node
        matched = len(prefix)
        matched_total += matched
        prompt_total += plen
        cache.inc_lock_ref(node)
        need = len(tokens) - matched
        new = kv.alloc(need)
        if new is None:
            evicted_tokens += cache.evict(P.EvictParams(num_tokens=need - kv.available_size() + 256)).num_tokens_evicted
            new = kv.alloc(need)
        slot = states.alloc(1)
        if slot is None:
            evicted_states += cache.evict(P.EvictParams(num_tokens=0, mamba_num=8)).mamba_num_evicted
            slot = states.alloc(1)
        value = torch.cat((prefix, new)) if matched else new
        result = cache.insert(P.InsertParams(key=full, value=value, mamba_value=slot, prev_prefix_len=matched))
        if result.mamba_exist:
            states.free(slot)
        cache.dec_lock_ref(node)
        if (i + 1) % 50 == 0:
            want = kv_cap // 4 - kv.available_size()
            if want > 0:
                evicted_tokens += cache.evict(P.EvictParams(num_tokens=want)).num_tokens_evicted
            want = st_cap // 4 - len(states.free_slots)
            if want > 0:
                evicted_states += cache.evict(P.EvictParams(num_tokens=0, mamba_num=want)).mamba_num_evicted
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    accounting_ok = (kv.available_size() + cache.full_evictable_size() + cache.full_protected_size() == kv_cap
                     and len(states.free_slots) + cache.mamba_evictable_size() + cache.mamba_protected_size() == st_cap)
    return {"requests_per_s": round(len(items) / elapsed, 1), "seconds": round(elapsed, 3),
            "requests_per_cpu_s": round(len(items) / cpu, 1),
            "hit_rate": round(matched_total / prompt_total, 6), "evicted_tokens": evicted_tokens,
            "evicted_states": evicted_states, "accounting_ok": accounting_ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True, help="the shared token trace (prompt_len, tokens per line)")
    ap.add_argument("--repeat", type=int, default=5, help="pairs of runs (default 5)")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    args = ap.parse_args(argv)
    sg = import_sglang()
    if sg is None:
        print("SGLang is not installed: nothing to compare against (`make differential` installs SGLang 0.5.11)",
              file=sys.stderr)
        return 0
    torch.set_num_threads(1)
    items = protocol.token_items(load_token_trace(args.trace)[: args.limit])
    gc.collect()
    gc.freeze()
    ours, theirs = [], []
    for _ in range(max(1, args.repeat)):
        gc.collect()  # the last run's garbage (a tree with cycles waits for the collector) is not this run's
        ours.append(protocol.replay(protocol.make_cache(), items))
        gc.collect()
        theirs.append(replay_sglang(sg, items))
    ratios = [b["seconds"] / a["seconds"] for a, b in zip(ours, theirs, strict=True)]
    cpu_ratios = [a["requests_per_cpu_s"] / b["requests_per_cpu_s"] for a, b in zip(ours, theirs, strict=True)]
    out = {
        "requests": len(items), "pairs": len(ours),
        "himamba_requests_per_s": statistics.median(r["requests_per_s"] for r in ours),
        "sglang_requests_per_s": statistics.median(r["requests_per_s"] for r in theirs),
        "speedup": round(statistics.median(ratios), 3), "speedups": [round(r, 3) for r in ratios],
        "himamba_requests_per_cpu_s": statistics.median(r["requests_per_cpu_s"] for r in ours),
        "sglang_requests_per_cpu_s": statistics.median(r["requests_per_cpu_s"] for r in theirs),
        "speedup_cpu": round(statistics.median(cpu_ratios), 3),
        # the fastest run of each side: on a machine shared with other work, the least disturbed
        "himamba_best_requests_per_cpu_s": max(r["requests_per_cpu_s"] for r in ours),
        "sglang_best_requests_per_cpu_s": max(r["requests_per_cpu_s"] for r in theirs),
        "speedup_best": round(max(r["requests_per_cpu_s"] for r in ours) / max(r["requests_per_cpu_s"] for r in theirs), 3),
        "himamba_hit_rate": ours[-1]["hit_rate"], "sglang_hit_rate": theirs[-1]["hit_rate"],
        "himamba_evicted": [ours[-1]["evicted_tokens"], ours[-1]["evicted_states"]],
        "sglang_evicted": [theirs[-1]["evicted_tokens"], theirs[-1]["evicted_states"]],
        "accounting_ok": ours[-1]["accounting_ok"] and theirs[-1]["accounting_ok"],
    }
    print(json.dumps(out))
    return 0 if out["accounting_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
