"""The policy replay: the shared replay protocol under an admission policy, priced in FLOPs and bytes.

Per request, in order (the protocol of :mod:`himamba.sim.protocol`, with admission in step 4):

1. for ``branch_point``, a dry-run walk finds where the key leaves the tree
   (:func:`himamba.sim.admission.branch_point`: nothing changes);
2. ``match_prefix(key[:prompt_len])``; a host hit on the tiered cache is loaded back;
3. the admission policy names the depths past the match where states are kept
   (:meth:`~himamba.sim.admission.Admission.ends`); with none the request inserts nothing;
4. lock the last matched node; allocate KV for the elements up to the last depth and one state
   slot per depth (on a shortage ``evict(short + headroom)`` / ``evict_mamba(short + 7)``, which
   is the protocol's ``evict_mamba(8)`` for one state, and retry; a request keeps at most a
   quarter of the state pool, its deepest depths, so ``every_n`` fits small pools);
   insert ``key[:depth]`` with its state for each depth in order, the tree's own slots before
   it (a state the tree already had is freed); unlock. On a device-only cache the depths take one
   walk from the root, not one each (:meth:`Insert.insert_after
   <himamba.cache.insert.Insert.insert_after>`), which leaves the cache exactly as an insert per
   depth would;
5. every ``sweep_every`` requests, evict down to 25% free KV and 25% free states.

The inserts of step 4 go straight to the cache's insert walk (``cache.inserter.insert``), not
through the public ``insert`` and its argument check (about half of an insert's CPU time): what
they hand over is built here from this cache's own match and allocations, and every replay
ends by checking the invariants and the pools' accounting (``violations``, ``accounting_ok``).
``tests/test_policy_lab_eviction.py`` shows that every such insert passes the public check.

Eviction is the cache's: :func:`make_cache` hands ``eviction`` to ``CacheConfig`` when it is not
``"lru"`` (the default, SGLang 0.5.11's order); :mod:`himamba.sim.policy_setup` gives
``flop_aware`` its model, block size and tuned α and ``farthest_next_use`` the trace's future. Figures: hit rates over prompt elements and
tokens, the share of prefill FLOPs the hits saved (``model``'s :meth:`ModelSpec.prefill_flops`,
token counts from the trace), and the bytes of KV and states the tree kept at ``model``'s sizes
(a block mode KV slot is ``block_tokens`` tokens), at the end and averaged over the sweeps.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from himamba.cache.config import CacheConfig
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.cache.mamba import MambaRadixCache
from himamba.core.key import RadixKey
from himamba.errors import InvalidInputError
from himamba.memory import slot_ids
from himamba.memory.model import ModelSpec
from himamba.sim import policy_setup
from himamba.sim.admission import Admission, PolicyItem, branch_point, parse_admission
from himamba.sim.mooncake import BLOCK_TOKENS, MooncakeRequest
from himamba.sim.policy_figures import figures, flops_share
from himamba.sim.serving import load_host_hit
from himamba.validate import check_int, check_token_ids

DEFAULT_EVICTION = "lru"


class PolicyItems(tuple):
    """Policy items whose keys hold checked ids (from :func:`block_items`, :func:`token_items` or
    :func:`check_items`), with ``block_tokens``: the replay builds keys from them unchecked."""

    block_tokens: int = BLOCK_TOKENS

    def __getitem__(self, index):
        """An item, or (a slice) the items of a trace prefix, still checked and in the same mode."""
        if isinstance(index, slice):
            return _items(tuple.__getitem__(self, index), self.block_tokens)
        return tuple.__getitem__(self, index)


def _items(rows: Iterable[PolicyItem], block_tokens: int) -> PolicyItems:
    out = PolicyItems(rows)
    out.block_tokens = block_tokens
    return out


def block_items(trace: Sequence[MooncakeRequest]) -> PolicyItems:
    """Items of a Mooncake trace (block mode): key = hash ids, every block matched, ``full_len``
    its whole blocks, weighed by ``input_length`` tokens."""
    block = trace[0].block_tokens if trace else BLOCK_TOKENS
    return _items(((check_token_ids(list(r.hash_ids), f"request {i} hash_ids"), len(r.hash_ids), r.full_blocks,
                    r.input_length) for i, r in enumerate(trace)), block)


def token_items(trace: Sequence[tuple[int, list[int]]]) -> PolicyItems:
    """Items of a token trace (``(prompt_len, tokens)`` pairs, the shared multi-turn trace):
    key = prompt + output tokens, the prompt matched, every token whole."""
    return _items(((check_token_ids(tokens, f"request {i} tokens"), plen, len(tokens), None)
                   for i, (plen, tokens) in enumerate(trace)), 1)


def check_items(items: Sequence[PolicyItem], block_tokens: int = BLOCK_TOKENS) -> PolicyItems:
    """``items`` with every key checked; InvalidInputError names the first bad one."""
    if isinstance(items, PolicyItems):
        return items
    rows = []
    for i, item in enumerate(items):
        try:
            key, plen, full, weight = item
        except (TypeError, ValueError):
            raise InvalidInputError(f"policy item {i} must be (key, prompt_len, full_len, prompt_tokens)") from None
        key = check_token_ids(key, f"policy item {i} key")
        check_int(plen, f"policy item {i} prompt_len", 0, len(key))
        check_int(full, f"policy item {i} full_len", 0, len(key))
        if weight is not None:
            check_int(weight, f"policy item {i} prompt_tokens", 0)
        rows.append((key, plen, full, weight))
    return _items(rows, block_tokens)


def make_cache(device_kv: int, device_states: int, *, eviction: str = DEFAULT_EVICTION, host_kv: int = 0,
               host_states: int = 0, write_policy: str = "write_through", **config: object) -> MambaRadixCache:
    """A replay cache on the CPU, page size 1, the tiny model (pools count elements: blocks in
    block mode). Tiered when ``host_kv`` > 0 (``host_states`` defaults to twice the device's).
    ``eviction`` goes to ``CacheConfig(eviction=...)`` only when it is not ``"lru"``."""
    base = {"device": "cpu", "page_size": 1, "device_kv_tokens": device_kv, "device_mamba_slots": device_states, **config}
    if eviction != DEFAULT_EVICTION:
        if "eviction" not in CacheConfig.__dataclass_fields__:
            raise InvalidInputError(f"eviction={eviction!r}: this himamba's CacheConfig knows only 'lru'")
        base["eviction"] = eviction
    if not host_kv:
        return MambaRadixCache(CacheConfig(**base))
    return HiMambaRadixCache(CacheConfig(**base, host_kv_tokens=host_kv, host_mamba_slots=host_states or 2 * device_states,
                                         write_policy=write_policy))


def replay(cache, items: Sequence[PolicyItem], admission: str | Admission = "sequence_end", *,
           model: ModelSpec | None = None, headroom: int = 256, sweep_every: int = 50) -> dict:
    """Run the protocol (module docstring) once over ``items``; returns :func:`figures`.
    ``model`` prices FLOPs and bytes (default :meth:`ModelSpec.attention_mamba2_7b`, Marconi's).
    RuntimeError when a request cannot get memory even after eviction."""
    policy = parse_admission(admission)
    check_int(headroom, "headroom", 0)
    check_int(sweep_every, "sweep_every", 1)
    model = model or ModelSpec.attention_mamba2_7b()
    model.flop_coefficients()  # fails here, before the run, without widths
    items = check_items(items)
    return _replay(cache, items, policy, model, headroom, sweep_every, items.block_tokens)


def _replay(cache, items: PolicyItems, policy: Admission, model: ModelSpec, headroom: int, sweep_every: int,
            block: int, tune: bool = True) -> dict:
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    tiered = getattr(cache, "tiered", False)
    c = dict.fromkeys(("matched", "prompt", "matched_tokens", "prompt_tokens", "hit_sq", "prompt_sq", "evicted_kv",
                       "evicted_states", "host_hits", "inserts", "states_admitted", "kept_kv", "kept_states",
                       "samples"), 0)
    trusted, needs_branch, root = RadixKey._trusted, policy.needs_branch, cache.root_node
    future, tune = policy_setup.prepare(cache, items, model, block)
    started_new = tune and is_new(cache)  # a new cache's run up to the window is a tuning run of its own alpha
    window, tuned = None, None
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, (tokens, plen, full, weight) in enumerate(items):
        if future is not None:
            future.now = i
        if tune and i == window:  # Marconi's bootstrap window is over: keep the best alpha, once
            def run(fresh, prefix):
                return _replay(fresh, prefix, policy, model, headroom, sweep_every, block, tune=False)

            # from a new cache, this run has just replayed items[:window] at its own alpha (1): its
            # counters are that alpha's tuning run, so tuning need not run it again
            own = {policy_setup.eviction_policy(cache).alpha: flops_share(c, model)} if started_new else None
            tuning = time.process_time()
            tuned = policy_setup.tune_alpha(cache, items, window, run, known=own)
            tuning = time.process_time() - tuning
            policy_setup.eviction_policy(cache).alpha = tuned[0]
            tune = False
        branch = branch_point(root, tokens) if needs_branch else 0
        key = trusted(tokens, None)
        m = cache.match_prefix(key[:plen] if plen < len(tokens) else key)
        prefix, node = m.device_indices, m.last_device_node
        if tiered:
            if m.host_hit_length > 0:
                prefix, node, loaded = load_host_hit(cache, m.best_match_node, prefix, node)
                c["host_hits"] += loaded
            cache.check_hicache_events()
        matched = prefix.shape[0]
        hit_tokens = matched if weight is None else min(matched * block, weight)
        prompt_tokens = plen if weight is None else weight
        c["matched"] += matched
        c["prompt"] += plen
        c["matched_tokens"] += hit_tokens
        c["prompt_tokens"] += prompt_tokens
        c["hit_sq"] += hit_tokens * hit_tokens
        c["prompt_sq"] += prompt_tokens * prompt_tokens
        ends = policy.ends(len(tokens), full, matched, branch)
        if ends:
            cache.inc_lock_ref(node)
            _admit(cache, key, prefix, matched, ends, c, headroom, i)
            cache.dec_lock_ref(node)
        if (i + 1) % sweep_every == 0:
            c["samples"] += 1
            c["kept_kv"] += cache.full_evictable_size() + cache.full_protected_size()
            c["kept_states"] += cache.mamba_evictable_size() + cache.mamba_protected_size()
            want = kv_pool.capacity // 4 - kv_pool.available_size()
            if want > 0:
                c["evicted_kv"] += cache.evict(want)
            want = state_pool.capacity // 4 - state_pool.available_size()
            if want > 0:
                c["evicted_states"] += cache.evict_mamba(want)
        if tune and window is None and (c["evicted_kv"] or c["evicted_states"]):
            window = policy_setup.BOOTSTRAP_FACTOR * (i + 1)
    if tiered:
        cache.writing_check(write_back=True)
        cache.loading_check()
    c["cpu_seconds"] = time.process_time() - cpu_start
    out = figures(cache, len(items), time.perf_counter() - start, c, model, block)
    evictor = policy_setup.eviction_policy(cache)
    out["eviction"] = getattr(evictor, "name", "lru")
    if out["eviction"] == "flop_aware":
        out["alpha"] = evictor.alpha
        out["alpha_window"] = window if tuned else None  # None: alpha given, or the window never ended
        if tuned:
            out["alpha_shares"] = tuned[1]  # each alpha's share of prefill FLOPs saved on the window
            out["alpha_tuning_cpu_s"] = round(tuning, 3)  # the tuning's replays (inside cpu_seconds)
    return out


def is_new(cache) -> bool:
    """Is ``cache`` as it was built: the root alone, ids and clock at their start, every slot of
    every pool free? (Then a replay on it is the replay on a new cache, node ids and times too.)"""
    tree = cache.tree
    pools = [cache.kv_pool, cache.mamba_pool]
    if getattr(cache, "tiered", False):
        pools += [cache.host_kv_pool, cache.host_mamba_pool]
    return (not tree.root.children and tree.next_id == 1 and tree.clock == 0.0
            and all(p.available_size() == p.capacity for p in pools))


def _admit(cache, key: RadixKey, prefix, matched: int, ends: list[int], c: dict, headroom: int, i: int) -> None:
    """Step 4: KV slots up to the last depth and a state slot per depth, then one insert per depth."""
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    need = ends[-1] - matched
    new = kv_pool.alloc(need)
    if new is None:
        c["evicted_kv"] += cache.evict(need - kv_pool.available_size() + headroom)
        new = kv_pool.alloc(need)
        if new is None:
            raise RuntimeError(f"request {i}: cannot allocate {need} KV slots after eviction")
    if len(ends) > max(1, state_pool.capacity // 4):
        ends = ends[-max(1, state_pool.capacity // 4):]
    k = len(ends)
    slots = state_pool.alloc(k)
    if slots is None:
        c["evicted_states"] += cache.evict_mamba(k - state_pool.available_size() + 7)
        slots = state_pool.alloc(k)
        if slots is None:
            raise RuntimeError(f"request {i}: cannot allocate {k} state slot(s) after eviction")
    value = slot_ids.cat((prefix, new)) if matched else new
    done = matched
    inserter, kv_ids = cache.inserter, kv_pool.allocator.host_ids
    kv_host, state_host = kv_ids(value), state_pool.allocator.host_ids(slots)  # read once: a depth's are a slice
    last = ends[-1]  # = len(value): its insert takes the whole of value
    # several depths on a device-only cache: one walk from the root, not one per depth (the first
    # insert records its path, the middle ones go on below it, the last walks it all again, which
    # leaves the cache as an insert per depth would: Insert.insert_after)
    path = [] if k > 1 and inserter.defers_walks else None
    for j, end in enumerate(ends):
        slot, slot_id = (slots, state_host) if k == 1 else (slots[j:j + 1], state_host[j:j + 1])
        # the insert's walk on what this function built (see the module docstring: trusted input)
        head, head_ids = (value, kv_host) if end == last else (value[:end], kv_host[:end])
        if path is not None and j > 0 and end < last:  # a middle depth goes on below the one before
            result = inserter.insert_after(path, key[:end], head, slot, done, head_ids, slot_id)
        else:  # from the root: the first depth records its path, the last walks it all again
            again = path is not None and j > 0
            result = inserter.insert(key[:end], head, slot, done, False, path if again else [], head_ids, slot_id,
                                     None if again else path)
        c["inserts"] += 1
        if result.mamba_exist:
            state_pool.free(slot)
        else:
            c["states_admitted"] += 1
        if result.prefix_len > done and end < last:
            # the tree already held some of these elements and freed our copies: what follows
            # the next insert's prefix must be the tree's own slots
            value = slot_ids.cat((tree_slots(cache.root_node, key.token_ids, end), value[end:]))
            kv_host = kv_ids(value)
        done = end


def tree_slots(root, tokens: list[int], n: int):
    """The device KV slots the tree holds for ``tokens[:n]`` (every node on that path must be on
    the device), read from ``node.value`` along the path; changes nothing."""
    parts, node, pos = [], root, 0
    while pos < n:
        node = node.children[tokens[pos]]
        take = min(len(node.key.token_ids), n - pos)
        parts.append(node.value[:take])
        pos += take
    return slot_ids.cat(parts)
