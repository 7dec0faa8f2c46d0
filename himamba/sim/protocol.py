"""The shared replay protocol (``../shared/bench/README.md``), in token mode and in block mode.

Per request, in order, the way a serving scheduler uses the cache:

1. ``match_prefix(prompt key)``; ``matched`` = length of the returned device indices (on the
   tiered cache a host hit is loaded back with ``init_load_back`` and counts as a host hit);
2. lock the last device node;
3. allocate device KV for the ``len(insert key) - matched`` new elements (on a shortage
   ``evict(short + headroom)`` and retry) and one state slot (on a shortage ``evict_mamba(8)``
   and retry);
4. ``insert(insert key, matched ++ new slots, the slot, prev_prefix_len=matched)``; free the state
   slot if the tree did not adopt it;
5. unlock. Every ``sweep_every`` requests, evict down to 25% free KV and 25% free states.

A request is a :data:`ReplayItem` ``(key, prompt_len, insert_len, prompt_tokens)``: the match
key is ``key[:prompt_len]``, the insert key ``key[:insert_len]``. Token mode (the shared
multi-turn trace): ``key`` is prompt + output tokens, ``insert_len = len(key)``. Block mode (a
Mooncake trace, :mod:`himamba.sim.mooncake`): ``key`` is the hash ids, one element per block,
``prompt_len = len(key)`` and ``insert_len`` what the checkpoint policy inserts; when it is not
longer than the match, the request inserts nothing (and takes no slots). ``prompt_tokens``
weighs matched blocks in tokens (``None`` in token mode).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from himamba.cache.config import CacheConfig
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.cache.invariants import check_invariants
from himamba.cache.mamba import MambaRadixCache
from himamba.core.key import RadixKey
from himamba.errors import InvalidInputError
from himamba.memory import slot_ids
from himamba.sim.mooncake import BLOCK_TOKENS, MooncakeRequest, check_checkpoint
from himamba.sim.serving import load_host_hit
from himamba.validate import check_token_ids

ReplayItem = tuple[list[int], int, int, "int | None"]


class CheckedItems(tuple):
    """Replay items whose keys hold checked ids (made by :func:`token_items`, :func:`block_items`
    or :func:`check_items`; a tuple, so nothing is added after the check): the replay builds
    its keys from them without checking again."""
PROTOCOL = {"device_kv_tokens": 300_000, "device_mamba_slots": 600, "page_size": 1}


def token_items(trace: Sequence[tuple[int, list[int]]]) -> list[ReplayItem]:
    """Replay items of a token trace (``(prompt_len, tokens)`` pairs): match the prompt, insert
    every token. Every token list is checked here (ints in ``0 .. 2**63 - 1``), once, so that
    the replay builds its keys from them without checking them again."""
    return CheckedItems((check_token_ids(tokens, f"request {i} tokens"), plen, len(tokens), None)
                        for i, (plen, tokens) in enumerate(trace))


def check_items(items: Sequence[ReplayItem]) -> CheckedItems:
    """``items`` with every key checked (ids ints in ``0 .. 2**63 - 1``; ``prompt_len`` and
    ``insert_len`` within the key); :class:`InvalidInputError` names the first bad one."""
    if isinstance(items, CheckedItems):
        return items
    out = []
    for i, item in enumerate(items):
        try:
            key, plen, ilen, weight = item
        except (TypeError, ValueError):
            raise InvalidInputError(f"replay item {i} must be (key, prompt_len, insert_len, prompt_tokens)") from None
        key = check_token_ids(key, f"replay item {i} key")
        if type(plen) is not int or type(ilen) is not int or not 0 <= ilen <= len(key) or not 0 <= plen <= len(key):
            raise InvalidInputError(f"replay item {i}: prompt_len and insert_len must be ints in 0..{len(key)}")
        out.append((key, plen, ilen, weight))
    return CheckedItems(out)


def block_items(trace: Sequence[MooncakeRequest], checkpoint: str) -> list[ReplayItem]:
    """Replay items of a Mooncake trace: match every prompt block, insert what ``checkpoint``
    keeps (``sequence_end``: every block; ``page_aligned``: the full blocks)."""
    check_checkpoint(checkpoint)
    items = []
    for i, r in enumerate(trace):
        key = check_token_ids(list(r.hash_ids), f"request {i} hash_ids")
        items.append((key, len(key), len(key) if checkpoint == "sequence_end" else r.full_blocks, r.input_length))
    return CheckedItems(items)


def make_cache(device_kv: int = PROTOCOL["device_kv_tokens"], device_states: int = PROTOCOL["device_mamba_slots"], *,
               tiered: bool = False, host_kv: int | None = None, host_states: int | None = None,
               write_policy: str = "write_through") -> MambaRadixCache:
    """The protocol's cache on the CPU, page size 1, the tiny model (block mode counts its KV
    slots as blocks). Tiered: host pools default to twice the device pools."""
    base = {"device": "cpu", "page_size": 1, "device_kv_tokens": device_kv, "device_mamba_slots": device_states}
    if not tiered:
        return MambaRadixCache(CacheConfig(**base))
    return HiMambaRadixCache(CacheConfig(**base, host_kv_tokens=host_kv or 2 * device_kv,
                                         host_mamba_slots=host_states or 2 * device_states, write_policy=write_policy))


def replay(cache, items: Sequence[ReplayItem], *, listener=None, headroom: int = 256, sweep_every: int = 50,
           block_tokens: int = BLOCK_TOKENS) -> dict:
    """Run the protocol once over ``items``; returns its figures (see :func:`figures`).
    ``listener`` (if any) is subscribed to the cache's events for the run and unsubscribed after.
    Raises RuntimeError when a request cannot get memory even after eviction."""
    if type(headroom) is not int or headroom < 0:
        raise InvalidInputError(f"headroom must be a non-negative int, got {headroom!r}")
    if type(sweep_every) is not int or sweep_every < 1:
        raise InvalidInputError(f"sweep_every must be a positive int, got {sweep_every!r}")
    items = check_items(items)
    unsubscribe = cache.events.subscribe(listener) if listener is not None else None
    try:
        return _replay(cache, items, headroom, sweep_every, block_tokens)
    finally:
        if unsubscribe is not None:
            unsubscribe()


def _replay(cache, items: Sequence[ReplayItem], headroom: int, sweep_every: int, block_tokens: int) -> dict:
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    tiered = getattr(cache, "tiered", False)
    c = dict.fromkeys(("matched", "prompt", "matched_tokens", "prompt_tokens", "ops", "evicted_kv",
                       "evicted_states", "host_hits", "device_hits", "inserts"), 0)
    trusted = RadixKey._trusted  # items hold checked ids (token_items, block_items)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, (tokens, plen, ilen, weight) in enumerate(items):
        full = trusted(tokens, None)
        m = cache.match_prefix(full[:plen] if plen < len(tokens) else full)
        c["ops"] += 1
        prefix, node = m.device_indices, m.last_device_node
        matched = prefix.shape[0]  # not len(): Tensor.__len__ runs in Python
        c["device_hits"] += matched
        if tiered:
            if m.host_hit_length > 0:
                c["ops"] += 1
                prefix, node, loaded = load_host_hit(cache, m.best_match_node, prefix, node)
                c["host_hits"] += loaded
            cache.check_hicache_events()
            matched = prefix.shape[0]
        c["matched"] += matched
        c["prompt"] += plen
        if weight is not None:
            c["matched_tokens"] += min(matched * block_tokens, weight)
            c["prompt_tokens"] += weight
        if ilen > matched:
            cache.inc_lock_ref(node)
            _insert(cache, full[:ilen] if ilen < len(tokens) else full, prefix, matched, c, headroom, i)
            cache.dec_lock_ref(node)
        if (i + 1) % sweep_every == 0:
            want = kv_pool.capacity // 4 - kv_pool.available_size()
            if want > 0:
                c["evicted_kv"] += cache.evict(want)
                c["ops"] += 1
            want = state_pool.capacity // 4 - state_pool.available_size()
            if want > 0:
                c["evicted_states"] += cache.evict_mamba(want)
                c["ops"] += 1
    if tiered:
        cache.writing_check(write_back=True)
        cache.loading_check()
    c["cpu_seconds"] = time.process_time() - cpu_start
    return figures(cache, len(items), time.perf_counter() - start, c, block_mode=items[0][3] is not None if items else False)


def _insert(cache, key: RadixKey, prefix: torch.Tensor, matched: int, c: dict, headroom: int, i: int) -> None:
    """Steps 3 and 4: new KV slots and a state slot (evicting on shortage), then the insert."""
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    need = len(key) - matched
    new = kv_pool.alloc(need)
    if new is None:
        c["evicted_kv"] += cache.evict(need - kv_pool.available_size() + headroom)
        c["ops"] += 1
        new = kv_pool.alloc(need)
        if new is None:
            raise RuntimeError(f"request {i}: cannot allocate {need} KV slots after eviction")
    slot = state_pool.alloc(1)
    if slot is None:
        c["evicted_states"] += cache.evict_mamba(8)
        c["ops"] += 1
        slot = state_pool.alloc(1)
        if slot is None:
            raise RuntimeError(f"request {i}: cannot allocate a state slot after eviction")
    value = slot_ids.cat((prefix, new)) if matched else new
    result = cache.insert(key, value, slot, prev_prefix_len=matched)
    c["ops"] += 1
    c["inserts"] += 1
    if result.mamba_exist:
        state_pool.free(slot)


def figures(cache, n: int, elapsed: float, c: dict, *, block_mode: bool) -> dict:
    """The JSON figures of one run: speed, hit rates, evictions, pool accounting, invariants.
    ``requests_per_cpu_s`` counts this process's CPU time only (steadier than wall time on a
    machine shared with other work)."""
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    unit = "blocks" if block_mode else "tokens"
    accounting_ok = (
        kv_pool.available_size() + cache.full_evictable_size() + cache.full_protected_size() == kv_pool.capacity
        and state_pool.available_size() + cache.mamba_evictable_size() + cache.mamba_protected_size() == state_pool.capacity
    )
    prompt = c["prompt"] or 1
    out = {
        "requests": n,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(n / elapsed, 1) if elapsed > 0 else 0.0,
        "tree_ops_per_s": round(c["ops"] / elapsed, 1) if elapsed > 0 else 0.0,
        "requests_per_cpu_s": round(n / c["cpu_seconds"], 1) if c.get("cpu_seconds") else 0.0,
        "hit_rate": round(c["matched"] / prompt, 6),
        f"prompt_{unit}": c["prompt"],
        f"device_hit_{unit}": c["device_hits"],
        f"evicted_{unit}": c["evicted_kv"],
        "evicted_states": c["evicted_states"],
        "inserts": c["inserts"],
        "accounting_ok": accounting_ok,
        "violations": len(check_invariants(cache, held_kv=0, held_states=0)),
    }
    if block_mode:
        out["hit_rate_tokens"] = round(c["matched_tokens"] / (c["prompt_tokens"] or 1), 6)
        out["device_hit_rate"] = round(c["device_hits"] / prompt, 6)
    if getattr(cache, "tiered", False):
        cc = cache.cache_controller
        out.update({
            f"host_hit_{unit}": c["host_hits"],
            "host_hit_rate": round(c["host_hits"] / prompt, 6),
            "bytes_device_to_host": cc.bytes_device_to_host,
            "bytes_host_to_device": cc.bytes_host_to_device,
            f"host_kv_used_{unit}": cache.host_kv_pool.used_size(),
            "write_policy": cache.config.write_policy,
        })
    return out
