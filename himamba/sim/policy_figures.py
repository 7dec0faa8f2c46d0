"""The figures of one policy replay, from its counters: hit rates over prompt elements and tokens,
the share of prefill FLOPs the hits saved, the bytes of KV and states the tree kept, evictions,
speed, and whether the pools' accounting and the invariants hold at the end
(:mod:`himamba.sim.policy_replay` keeps the counters)."""

from __future__ import annotations

from himamba.cache.invariants import check_invariants
from himamba.memory.model import ModelSpec


def flops_share(c: dict, model: ModelSpec) -> float:
    """The share of prefill FLOPs the hits counted in ``c`` saved, rounded to 6 places."""
    a, b = model.flop_coefficients()
    saved = a * c["matched_tokens"] + b * c["hit_sq"]
    total = a * c["prompt_tokens"] + b * c["prompt_sq"]
    return round(saved / total, 6) if total else 0.0


def figures(cache, n: int, elapsed: float, c: dict, model: ModelSpec, block: int) -> dict:
    """The figures of one run: speed, hit rates (``hit_rate`` over prompt elements, ``hit_rate_tokens``
    over prompt tokens), ``flops_saved`` (share of prefill FLOPs), KV and state bytes kept at the
    end and on average (``*_mean``, sampled before each sweep), evictions, pool accounting and
    the invariant check. ``requests_per_cpu_s`` counts this process's CPU time only."""
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    kv_bytes = block * model.kv_bytes_per_token
    kept_kv = cache.full_evictable_size() + cache.full_protected_size()
    kept_states = cache.mamba_evictable_size() + cache.mamba_protected_size()
    samples = c["samples"] or 1
    accounting_ok = (kv_pool.available_size() + kept_kv == kv_pool.capacity
                     and state_pool.available_size() + kept_states == state_pool.capacity)
    out = {
        "requests": n,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "requests_per_cpu_s": round(n / c["cpu_seconds"], 1) if c["cpu_seconds"] else 0.0,
        "hit_rate": round(c["matched"] / (c["prompt"] or 1), 6),
        "hit_rate_tokens": round(c["matched_tokens"] / (c["prompt_tokens"] or 1), 6),
        "flops_saved": flops_share(c, model),
        "prompt_elements": c["prompt"],
        "hit_elements": c["matched"],
        "host_hit_elements": c["host_hits"],
        "inserts": c["inserts"],
        "states_admitted": c["states_admitted"],
        "evicted_kv": c["evicted_kv"],
        "evicted_states": c["evicted_states"],
        "kv_bytes_kept": kept_kv * kv_bytes,
        "state_bytes_kept": kept_states * model.state_bytes_per_slot,
        "kv_bytes_kept_mean": round(c["kept_kv"] * kv_bytes / samples),
        "state_bytes_kept_mean": round(c["kept_states"] * model.state_bytes_per_slot / samples),
        "accounting_ok": accounting_ok,
        "violations": len(check_invariants(cache, held_kv=0, held_states=0)),
    }
    return out
