#!/usr/bin/env python3
"""Replay the shared multi-turn request trace through a cache and print its figures as JSON.

The protocol (same for every cache compared), per request in order:
match_prefix(prompt) -> lock the last device node -> allocate KV for the new tokens (on shortage
evict(short + 256) and retry) and one state slot (on shortage evict_mamba(8) and retry) ->
insert(all tokens, matched ++ new slots, state, prev_prefix_len=matched) -> free the state slot if
the tree did not adopt it -> unlock. Every 50 requests, evict down to 25% free KV and states.

Write the trace first, e.g. with the shared generator:
    python multiturn_trace.py --requests 2000 --seed 0 > trace.jsonl
then:
    python bench/replay.py --trace trace.jsonl [--repeat 3] [--record]

``--record`` also replays each run with a Recorder-like listener subscribed (it keeps every event,
as ``hm.Recorder`` does, but takes no snapshots) and adds the cost of observation to the JSON:
``record_requests_per_s``, ``record_overhead`` (median over runs of seconds recorded / seconds
plain, the two runs of a pair back to back) and ``record_events`` (events emitted per replay).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import himamba as hm  # noqa: E402
from himamba.core.key import RadixKey  # noqa: E402

PROTOCOL = {"device_kv_tokens": 300_000, "device_mamba_slots": 600, "page_size": 1}


def load_trace(path: str) -> list[tuple[int, list[int]]]:
    """Read ``{"prompt_len": int, "tokens": [...]}`` lines; a malformed line raises ValueError."""
    reqs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                plen, tokens = rec["prompt_len"], rec["tokens"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a trace record ({exc})") from None
            if not isinstance(plen, int) or not all(type(t) is int for t in tokens) or not 0 < plen <= len(tokens):
                raise ValueError(f"{path}:{lineno}: prompt_len must be an int in 1..len(tokens) and tokens ints")
            reqs.append((plen, tokens))
    if not reqs:
        raise ValueError(f"{path}: no requests")
    return reqs


def make_cache(tiered: bool, write_policy: str = "write_through") -> hm.MambaRadixCache:
    """The protocol's cache; the tiered one gets a host tier twice the device size."""
    if tiered:
        cfg = hm.CacheConfig(device="cpu", host_kv_tokens=2 * PROTOCOL["device_kv_tokens"],
                             host_mamba_slots=2 * PROTOCOL["device_mamba_slots"], write_policy=write_policy, **PROTOCOL)
        return hm.HiMambaRadixCache(cfg)
    return hm.MambaRadixCache(hm.CacheConfig(device="cpu", **PROTOCOL))


class EventLog:
    """A Recorder-like listener without snapshots: keeps every event the cache emits."""

    def __init__(self) -> None:
        self.events: list[hm.Event] = []

    def __call__(self, event: hm.Event) -> None:
        self.events.append(event)


def replay(cache, reqs: list[tuple[int, list[int]]], listener=None) -> dict:
    """Run the protocol once; returns the figures (timings included). ``listener`` (if any) is
    subscribed to the cache's events for the run."""
    if listener is not None:
        cache.events.subscribe(listener)
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    tiered = getattr(cache, "tiered", False)
    matched_total = prompt_total = ops = evicted_tokens = evicted_states = host_hit_tokens = 0
    start = time.perf_counter()
    for i, (plen, tokens) in enumerate(reqs):
        full = RadixKey(tokens)
        m = cache.match_prefix(full[:plen])
        ops += 1
        prefix = m.device_indices
        node = m.last_device_node
        if tiered:
            if m.host_hit_length > 0:
                loaded, last = cache.init_load_back(m.best_match_node)
                ops += 1
                if len(loaded):
                    prefix = torch.cat((prefix, loaded))
                    host_hit_tokens += len(loaded)
                    node = last
                cache.ready_to_load_host_cache()
            cache.check_hicache_events()
        matched = len(prefix)
        matched_total += matched
        prompt_total += plen
        cache.inc_lock_ref(node)
        need = len(tokens) - matched
        new = kv_pool.alloc(need)
        if new is None:
            evicted_tokens += cache.evict(need - kv_pool.available_size() + 256)
            ops += 1
            new = kv_pool.alloc(need)
            if new is None:
                raise RuntimeError(f"request {i}: cannot allocate {need} KV slots after eviction")
        slot = state_pool.alloc(1)
        if slot is None:
            evicted_states += cache.evict_mamba(8)
            ops += 1
            slot = state_pool.alloc(1)
            if slot is None:
                raise RuntimeError(f"request {i}: cannot allocate a state slot after eviction")
        value = torch.cat((prefix, new)) if matched else new
        result = cache.insert(full, value, slot, prev_prefix_len=matched)
        ops += 1
        if result.mamba_exist:
            state_pool.free(slot)
        cache.dec_lock_ref(node)
        if (i + 1) % 50 == 0:
            want = kv_pool.capacity // 4 - kv_pool.available_size()
            if want > 0:
                evicted_tokens += cache.evict(want)
                ops += 1
            want = state_pool.capacity // 4 - state_pool.available_size()
            if want > 0:
                evicted_states += cache.evict_mamba(want)
                ops += 1
    if tiered:
        cache.writing_check(write_back=True)
        cache.loading_check()
    elapsed = time.perf_counter() - start
    accounting_ok = (
        kv_pool.available_size() + cache.full_evictable_size() + cache.full_protected_size() == kv_pool.capacity
        and state_pool.available_size() + cache.mamba_evictable_size() + cache.mamba_protected_size() == state_pool.capacity
    )
    figures = {
        "requests": len(reqs),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(reqs) / elapsed, 1),
        "tree_ops_per_s": round(ops / elapsed, 1),
        "hit_rate": round(matched_total / prompt_total, 4),
        "evicted_tokens": evicted_tokens,
        "evicted_states": evicted_states,
        "accounting_ok": accounting_ok,
        "violations": len(hm.check_invariants(cache, held_kv=0, held_states=0)),
    }
    if tiered:
        cc = cache.cache_controller
        figures.update({
            "host_hit_tokens": host_hit_tokens,
            "bytes_device_to_host": cc.bytes_device_to_host,
            "bytes_host_to_device": cc.bytes_host_to_device,
            "host_kv_used": cache.host_kv_pool.used_size(),
            "write_policy": cache.config.write_policy,
        })
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True, help="JSON-lines trace (prompt_len, tokens per line)")
    ap.add_argument("--tiered", action="store_true", help="replay through HiMambaRadixCache (host tier 2x device)")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the reported speed is the median")
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    ap.add_argument("--write-policy", default="write_through", help="tiered cache's write policy")
    ap.add_argument("--record", action="store_true", help="also time each run with a Recorder-like listener")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reqs = load_trace(args.trace)[: args.limit]
    gc.collect()
    gc.freeze()  # the trace's millions of ints are long-lived: keep the collector off them
    runs, recorded, ratios, events = [], [], [], 0
    for _ in range(max(1, args.repeat)):  # with --record, plain and recorded runs alternate (same load)
        runs.append(replay(make_cache(args.tiered, args.write_policy), reqs))
        if args.record:
            log = EventLog()
            recorded.append(replay(make_cache(args.tiered, args.write_policy), reqs, log))
            ratios.append(recorded[-1]["seconds"] / runs[-1]["seconds"])
            events = len(log.events)
            del log
    best = dict(runs[-1])
    best["requests_per_s"] = statistics.median(r["requests_per_s"] for r in runs)
    best["tree_ops_per_s"] = statistics.median(r["tree_ops_per_s"] for r in runs)
    best["runs"] = len(runs)
    best["cache"] = "HiMambaRadixCache" if args.tiered else "MambaRadixCache"
    if args.record:
        best["record_requests_per_s"] = statistics.median(r["requests_per_s"] for r in recorded)
        best["record_overhead"] = round(statistics.median(ratios), 2)  # median of per-pair ratios
        best["record_events"] = events
        best["record_same_figures"] = all(r["hit_rate"] == best["hit_rate"] and r["evicted_tokens"] == best["evicted_tokens"]
                                          for r in recorded)
    print(json.dumps(best))
    return 0 if best["accounting_ok"] and best["violations"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
