"""Seeded random stress of the device-tier cache, checked after every operation.

The driver below plays a small serving workload against a cache with tight pools, in the style
of sortedcontainers' ``_check()`` tests: a seeded RNG picks one operation at a time and the whole
cache is checked after each one. Operations:

* ``insert``: sequences built from a few shared "system prompts" plus random continuations,
  multi-turn growth of earlier sequences, prefixes that end on split points (a stateless node
  adopts the state), with and without reuse of the matched prefix (duplicate slots freed);
* ``match``: whole sequences, prefixes ending mid-edge (splits), diverging queries;
* ``lock`` / ``unlock``: ``inc_lock_ref`` on matched nodes, held for many operations and
  released later with ``dec_lock_ref``;
* ``evict`` / ``evict_mamba``;
* requests (:class:`himamba.Request`): start (match, optionally copy-on-write of the matched
  state, lock), chunked prefill via ``cache_unfinished_req``, finish via ``cache_finished_req``
  and abort (``is_insert=False``).

Every KV slot and state slot is written with its deterministic content, and a request's running
state slot always holds the state of its prefilled tokens, so ``check_integrity`` can verify the
bytes. After **every** operation the driver calls ``check_invariants`` with exact pool accounting
(``held_kv`` / ``held_states`` = what the driver's requests own). ``check_integrity`` runs after
every ``integrity_every``-th operation; the tests below use ``integrity_every=1`` (every
operation): 2 x 10,000 operations took about 40 s in all on a 2-core CPU machine.

:func:`run_stress` is reusable: it only uses the public API shared by the device-tier and the
tiered cache, and takes the health check as a parameter.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from helpers import alloc_kv, alloc_state, assert_healthy, make_cache, put

import himamba as hm
from himamba.memory.content import state_matches, write_state

HealthCheck = Callable[..., None]


@dataclass
class StressStats:
    """What a run did: operations per kind, tokens/states freed, and other tallies."""

    ops: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    freed: Counter = field(default_factory=Counter)


@dataclass
class _Running:
    req: hm.Request
    full: list[int]


class StressDriver:
    """Seeded random driver of a radix cache (see the module docstring)."""

    def __init__(
        self,
        cache,
        seed: int,
        *,
        check: HealthCheck = assert_healthy,
        integrity_every: int = 1,
        vocab: int = 24,
        max_pages: int = 12,
        max_requests: int = 3,
        max_locks: int = 5,
    ) -> None:
        self.cache = cache
        self.rng = random.Random(seed)
        self.ps = cache.page_size
        self.check = check
        self.integrity_every = integrity_every
        self.vocab = vocab
        self.max_pages = max_pages
        self.max_requests = max_requests
        self.max_locks = max_locks
        self.extra_buffer = cache.config.extra_buffer
        self.prompts = [self._tokens(self.rng.randint(2, 5)) for _ in range(4)]
        self.history: list[list[int]] = []
        self.locks: list[tuple[hm.TreeNode, int]] = []  # (node, release after op #)
        self.reqs: list[_Running] = []
        self.stats = StressStats()
        self.step = 0

    # -- accounting -------------------------------------------------------------------------
    def held_kv(self) -> int:
        return sum(len(r.req.kv_indices) - r.req.cache_protected_len for r in self.reqs)

    def held_states(self) -> int:
        return sum((r.req.mamba_pool_idx is not None) + (r.req.mamba_track_idx is not None) for r in self.reqs)

    def verify(self) -> None:
        integrity = self.step % self.integrity_every == 0
        self.check(self.cache, held_kv=self.held_kv(), held_states=self.held_states(), integrity=integrity)

    # -- token sequences ----------------------------------------------------------------------
    def _tokens(self, pages: int) -> list[int]:
        return [self.rng.randrange(self.vocab) for _ in range(pages * self.ps)]

    def _new_sequence(self) -> list[int]:
        """A prompt plus a continuation, an earlier sequence grown by a turn, or noise."""
        rng = self.rng
        r = rng.random()
        if r < 0.35 and self.history:
            base = rng.choice(self.history)  # multi-turn growth of an earlier sequence
        elif r < 0.9:
            base = rng.choice(self.prompts)
        else:
            base = []
        room = self.max_pages - len(base) // self.ps
        if room < 1:
            base = base[: (self.max_pages // 2) * self.ps]
            room = self.max_pages - len(base) // self.ps
        return base + self._tokens(rng.randint(1, min(room, 6)))

    def _query(self) -> tuple[str, list[int]]:
        rng = self.rng
        if not self.history:
            return "random", self._tokens(rng.randint(1, 4))
        seq = rng.choice(self.history)
        r = rng.random()
        if r < 0.3:
            return "whole", list(seq)
        if r < 0.75:  # ends anywhere inside the sequence: often mid-edge
            return "prefix", seq[: rng.randint(1, len(seq))]
        cut = rng.randint(0, len(seq))
        return "diverging", seq[:cut] + self._tokens(rng.randint(1, 3))

    def _remember(self, seq: list[int]) -> None:
        self.history.append(list(seq))
        if len(self.history) > 60:
            self.history.pop(self.rng.randrange(len(self.history)))

    # -- room in the pools --------------------------------------------------------------------
    def _ensure_kv(self, n: int) -> bool:
        pool = self.cache.kv_pool
        short = n - pool.available_size()
        if short > 0:
            self.stats.freed["evict_for_room"] += self.cache.evict(short)
        return pool.available_size() >= n

    def _ensure_states(self, n: int = 1) -> bool:
        pool = self.cache.mamba_pool
        short = n - pool.available_size()
        if short > 0:
            self.stats.freed["evict_mamba_for_room"] += self.cache.evict_mamba(short)
        return pool.available_size() >= n

    def _stuck(self, kind: str) -> None:
        """Pools are full of locked memory: give a lock back so the run keeps moving."""
        self.stats.events[f"skipped_{kind}"] += 1
        if self.locks:
            node, _ = self.locks.pop(0)
            self.cache.dec_lock_ref(node)

    # -- plain tree operations ------------------------------------------------------------------
    def op_insert(self) -> None:
        rng = self.rng
        r = rng.random()
        stateless = [n for n in self.cache.nodes() if n.mamba_value is None and n is not self.cache.root_node]
        if r < 0.1 and stateless:
            # exactly the path of a stateless node (split point or tombstone): it adopts the state
            seq = self.cache.path_tokens(rng.choice(stateless))
        elif r < 0.2 and (stateful := self._stateful_nodes()):
            seq = self.cache.path_tokens(rng.choice(stateful))  # cached already: mamba_exist
        elif r < 0.3 and self.history:
            seq = rng.choice(self.history)  # a page-aligned prefix of a known sequence
            seq = seq[: self.ps * rng.randint(1, len(seq) // self.ps)]
        else:
            seq = self._new_sequence()
        if not (self._ensure_kv(len(seq)) and self._ensure_states(1)):
            return self._stuck("insert")
        end = _find_node(self.cache, seq)
        if end is not None and end.mamba_value is None:
            self.stats.events["insert_onto_tombstone"] += 1
        reuse = rng.random() < 0.8
        result = put(self.cache, seq, reuse=reuse, chunked=rng.random() < 0.2)
        self.stats.events["insert_reuse" if reuse else "insert_no_reuse"] += 1
        if result.mamba_exist:
            self.stats.events["insert_mamba_exist"] += 1
        if result.prefix_len:
            self.stats.events["insert_with_prefix"] += 1
        self._remember(seq)
        if rng.random() < 0.5:  # what was just inserted must be fully usable
            got = self.cache.match_prefix(seq).prefix_len
            assert got == len(seq), f"inserted {len(seq)} tokens, match finds {got}"

    def op_match(self) -> None:
        cache = self.cache
        kind, query = self._query()
        nodes_before = cache.num_nodes()
        res = cache.match_prefix(query)
        if cache.num_nodes() > nodes_before:
            self.stats.events["match_split"] += 1
        self.stats.events[f"match_{kind}"] += 1
        self._check_match(query, res)

    def _check_match(self, query: list[int], res: hm.MatchResult) -> None:
        cache = self.cache
        n = res.prefix_len
        node = res.last_device_node
        assert n % self.ps == 0 and n <= len(query)
        assert cache.path_tokens(node) == query[:n], "match result does not end at the matched prefix"
        assert node is cache.root_node or node.mamba_value is not None, "usable prefix ends without a state"
        path, x = [], node
        while x is not cache.root_node:
            path.append(x.value)
            x = x.parent
        want = torch.cat(path[::-1]) if path else torch.empty(0, dtype=torch.int64)
        assert torch.equal(res.device_indices, want), "device_indices are not the path's slots"
        if n:
            self.stats.events["match_hit"] += 1

    def _stateful_nodes(self) -> list[hm.TreeNode]:
        return [n for n in self.cache.nodes() if n.mamba_value is not None]

    def op_lock(self) -> None:
        if len(self.locks) >= self.max_locks:
            return self.op_unlock(force=True)
        cache, rng = self.cache, self.rng
        stateless = [n for n in cache.nodes() if n.mamba_value is None and n is not cache.root_node]
        if stateless and rng.random() < 0.2:
            # a lock on a stateless node (split point or tombstone); it may adopt a state later
            node = rng.choice(stateless)
            self.stats.events["lock_on_stateless_node"] += 1
        else:
            stateful = self._stateful_nodes()
            if stateful and rng.random() < 0.5:
                query = cache.path_tokens(rng.choice(stateful))
            else:
                query = list(rng.choice(self.history)) if self.history else self._tokens(1)
            res = cache.match_prefix(query)
            self._check_match(query, res)
            node = res.last_device_node
            if node is cache.root_node:
                self.stats.events["lock_on_root_skipped"] += 1
                return
        had_state = node.mamba_value is not None
        cache.inc_lock_ref(node)
        assert node.full_lock_ref >= 1 and node.mamba_lock_ref >= had_state
        self.locks.append((node, self.step + self.rng.randint(10, 600)))

    def op_unlock(self, force: bool = False) -> None:
        if not self.locks:
            self.stats.events["unlock_nothing_held"] += 1
            return
        due = [i for i, (_, t) in enumerate(self.locks) if t <= self.step]
        if due:
            i = due[0]
        elif force or self.rng.random() < 0.25:
            i = self.rng.randrange(len(self.locks))
        else:
            self.stats.events["unlock_none_due"] += 1
            return
        node, _ = self.locks.pop(i)
        evictable = self.cache.full_evictable_size()
        delta = self.cache.dec_lock_ref(node)
        assert delta >= 0 and self.cache.full_evictable_size() == evictable + delta
        self.stats.events["lock_released"] += 1

    def op_evict(self) -> None:
        cache = self.cache
        n = self.rng.randint(1, max(1, cache.kv_pool.capacity // 4))
        total, free = cache.total_size(), cache.kv_pool.available_size()
        freed = cache.evict(n)
        assert freed >= 0
        assert cache.total_size() == total - freed, "evict's return value disagrees with the tree size"
        assert cache.kv_pool.available_size() == free + freed, "evict's return value disagrees with the pool"
        self.stats.freed["evict"] += freed
        if freed:
            self.stats.events["evict_freed_something"] += 1

    def op_evict_mamba(self) -> None:
        cache = self.cache
        n = self.rng.randint(1, 3)
        free = cache.mamba_pool.available_size()
        freed = cache.evict_mamba(n)
        assert 0 <= freed <= n
        assert cache.mamba_pool.available_size() == free + freed, "evict_mamba's return value disagrees with the pool"
        self.stats.freed["evict_mamba"] += freed
        if freed:
            self.stats.events["evict_mamba_freed_something"] += 1

    # -- requests -----------------------------------------------------------------------------
    def op_req_start(self) -> None:
        if len(self.reqs) >= self.max_requests:
            return self.op_req_finish()
        cache, rng = self.cache, self.rng
        full = self._new_sequence()
        need_states = 2 if self.extra_buffer else 1
        if not self._ensure_states(need_states):
            return self._stuck("req_start")
        req = hm.Request(token_ids=full, kv_indices=torch.empty(0, dtype=torch.int64), rid=f"r{self.step}")
        cow = rng.random() < 0.5
        res = cache.match_prefix(full, req=req, cow_mamba=cow)
        self._check_match(full, res)
        n = res.prefix_len
        if req.mamba_pool_idx is not None:
            self.stats.events["req_cow_copy"] += 1
            assert state_matches(cache.mamba_pool, req.mamba_pool_idx, full[:n]), "copy-on-write gave the wrong state"
        else:
            req.mamba_pool_idx = alloc_state(cache, full[:n])
        if self.extra_buffer:
            req.mamba_track_idx = alloc_state(cache, full[:n])
        req.kv_indices = res.device_indices.clone()
        req.prefix_indices = res.device_indices
        req.cache_protected_len = n
        req.fill_len = n
        req.last_node = res.last_device_node
        cache.inc_lock_ref(req.last_node)
        self.reqs.append(_Running(req, full))

    def _prefill(self, run: _Running, upto: int) -> bool:
        """Compute KV for ``full[fill_len:upto]`` and the running state after ``upto`` tokens."""
        req = run.req
        start = len(req.kv_indices)
        if upto > start:
            if not self._ensure_kv(upto - start):
                return False
            req.kv_indices = torch.cat((req.kv_indices, alloc_kv(self.cache, run.full[start:upto], start)))
        req.fill_len = upto
        write_state(self.cache.mamba_pool, req.mamba_pool_idx, run.full[:upto])
        return True

    def op_req_chunk(self) -> None:
        todo = [r for r in self.reqs if r.req.fill_len < len(r.full)]
        if not todo:
            return self.op_req_start()
        cache, rng = self.cache, self.rng
        run = rng.choice(todo)
        req = run.req
        upto = min(len(run.full), req.fill_len + self.ps * rng.randint(1, 4))
        if not (self._prefill(run, upto) and self._ensure_states(1)):
            return self._stuck("req_chunk")
        if self.extra_buffer:
            if rng.random() < 0.15:
                req.mamba_last_track_seqlen = None  # no track this chunk: only refreshes prefix_indices
                self.stats.events["req_chunk_untracked"] += 1
            else:
                write_state(cache.mamba_pool, req.mamba_track_idx, run.full[:upto])
                req.mamba_last_track_seqlen = upto
        old_last = req.last_node
        cache.cache_unfinished_req(req, chunked=True)
        if req.last_node is not old_last:
            self.stats.events["req_lock_moved"] += 1
        p = req.cache_protected_len
        assert cache.path_tokens(req.last_node) == run.full[:p]
        assert torch.equal(req.kv_indices[:p], req.prefix_indices[:p])
        assert req.last_node is cache.root_node or req.last_node.full_lock_ref >= 1

    def op_req_finish(self, insert: bool = True) -> None:
        if not self.reqs:
            return self.op_req_start()
        cache, rng = self.cache, self.rng
        run = self.reqs[rng.randrange(len(self.reqs))]
        req = run.req
        cache_len = len(run.full)
        if insert:
            if not self._prefill(run, len(run.full)):  # rest of prefill and decode
                return self._stuck("req_finish")
            if self.extra_buffer:
                # the track slot holds the state at the last tracked page boundary
                lo = max(req.cache_protected_len // self.ps, 1)
                cache_len = self.ps * rng.randint(lo, len(run.full) // self.ps)
                write_state(cache.mamba_pool, req.mamba_track_idx, run.full[:cache_len])
                req.mamba_last_track_seqlen = cache_len
        self.reqs.remove(run)
        cache.cache_finished_req(req, is_insert=insert)
        assert req.mamba_pool_idx is None and req.mamba_track_idx is None and req.last_node is None
        assert len(req.kv_indices) == 0
        self.stats.events["req_finished" if insert else "req_aborted"] += 1
        if insert:
            self._remember(run.full[:cache_len])
            got = cache.match_prefix(run.full[:cache_len]).prefix_len
            assert got == cache_len, f"finished request cached {cache_len} tokens, match finds {got}"

    def op_req_abort(self) -> None:
        self.op_req_finish(insert=False)

    # -- the run ----------------------------------------------------------------------------------
    OPS: dict[str, float] = {
        "insert": 18,
        "match": 16,
        "lock": 7,
        "unlock": 7,
        "evict": 7,
        "evict_mamba": 6,
        "req_start": 9,
        "req_chunk": 16,
        "req_finish": 8,
        "req_abort": 2,
    }

    def run(self, n_ops: int) -> StressStats:
        names = list(self.OPS)
        weights = [self.OPS[k] for k in names]
        self.verify()
        for self.step in range(1, n_ops + 1):
            name = self.rng.choices(names, weights)[0]
            self.stats.ops[name] += 1
            getattr(self, f"op_{name}")()
            self.verify()
        self.drain()
        return self.stats

    def drain(self) -> None:
        """Finish every request, release every lock; then nothing is protected and a full
        eviction empties the tree and both pools."""
        cache = self.cache
        while self.reqs:
            self.op_req_finish(insert=self.rng.random() < 0.5)
            self.verify()
        while self.locks:
            node, _ = self.locks.pop()
            cache.dec_lock_ref(node)
            self.verify()
        assert cache.full_protected_size() == 0 and cache.mamba_protected_size() == 0
        freed = cache.evict(cache.kv_pool.capacity)
        self.stats.freed["evict"] += freed
        assert cache.num_nodes() == 0, cache.tree_text()
        assert cache.kv_pool.available_size() == cache.kv_pool.capacity
        assert cache.mamba_pool.available_size() == cache.mamba_pool.capacity
        self.check(cache, held_kv=0, held_states=0, integrity=True)


def _find_node(cache, tokens: list[int]) -> hm.TreeNode | None:
    """The node whose edge ends exactly after ``tokens``, or None (touches nothing)."""
    node, rest, ps = cache.root_node, list(tokens), cache.page_size
    while rest:
        child = node.children.get(hm.RadixKey(rest).child_key(ps))
        if child is None or child.key.token_ids != rest[: len(child.key)]:
            return None
        node, rest = child, rest[len(child.key) :]
    return node


def run_stress(
    cache,
    n_ops: int,
    seed: int,
    *,
    check: HealthCheck = assert_healthy,
    integrity_every: int = 1,
    **driver_options,
) -> StressStats:
    """Drive ``cache`` through ``n_ops`` random operations (seeded), calling
    ``check(cache, held_kv=..., held_states=..., integrity=...)`` after each; then drain it.
    Returns the tallies. Reusable for any cache with the device-tier public API."""
    driver = StressDriver(cache, seed, check=check, integrity_every=integrity_every, **driver_options)
    return driver.run(n_ops)


# -- the tests -------------------------------------------------------------------------------------

OPS_PER_RUN = 10_000


def _small_cache(page_size: int):
    return make_cache(page_size=page_size, device_kv_tokens=40 * page_size, device_mamba_slots=14)


def _assert_coverage(stats: StressStats, page_size: int) -> None:
    assert sum(stats.ops.values()) == OPS_PER_RUN
    total_weight = sum(StressDriver.OPS.values())
    for kind, weight in StressDriver.OPS.items():
        assert stats.ops[kind] >= OPS_PER_RUN * weight / total_weight / 2, (kind, stats.ops)
    events = [
        "insert_reuse", "insert_no_reuse", "insert_mamba_exist", "insert_with_prefix",
        "insert_onto_tombstone", "match_split", "match_prefix", "match_whole", "match_diverging",
        "match_hit", "lock_released", "lock_on_stateless_node", "req_cow_copy", "req_lock_moved", "req_finished",
        "req_aborted", "evict_freed_something", "evict_mamba_freed_something",
    ]
    if page_size > 1:
        events.append("req_chunk_untracked")
    for event in events:
        assert stats.events[event] >= 50, (event, stats.events)
    # evictions really freed memory, both when asked and to make room for new slots
    assert stats.freed["evict"] >= 1000, stats.freed
    assert stats.freed["evict_mamba"] >= 200, stats.freed
    assert stats.freed["evict_for_room"] >= 100 and stats.freed["evict_mamba_for_room"] >= 100, stats.freed


@pytest.mark.slow
@pytest.mark.parametrize("page_size", [1, 4])
def test_random_operations_keep_the_device_cache_healthy(page_size):
    cache = _small_cache(page_size)
    stats = run_stress(cache, OPS_PER_RUN, seed=1000 + page_size, integrity_every=1)
    _assert_coverage(stats, page_size)


def test_chunked_prefill_duplicates_do_not_corrupt_the_free_list():
    """Regression found by the driver: SlotAllocator.free kept the caller's index tensor in its
    free list (page size 1); cache_unfinished_req then overwrote that tensor after insert had
    freed duplicate slots from it, and alloc handed out slots the tree owns."""
    cache = make_cache(device_kv_tokens=16, device_mamba_slots=4)
    tokens = [1, 2, 3, 4]
    req = hm.Request(token_ids=tokens, kv_indices=alloc_kv(cache, tokens, 0), mamba_pool_idx=alloc_state(cache, tokens))
    put(cache, [*tokens, 5])  # meanwhile another request caches the same tokens
    cache.cache_unfinished_req(req, chunked=True)  # insert frees req's 4 duplicate slots
    assert_healthy(cache, held_kv=0, held_states=1)
    owned = {int(i) for n in cache.nodes() if n is not cache.root_node for i in n.value}
    handed_out = set(cache.kv_pool.alloc(cache.kv_pool.available_size()).tolist())
    assert not handed_out & owned, f"alloc handed out slots the tree owns: {sorted(handed_out & owned)}"
    assert handed_out == set(range(16)) - owned


def test_driver_smoke_each_page_size():
    """A short run of the driver, so that it is exercised even when slow tests are skipped."""
    for page_size in (1, 2):
        stats = run_stress(_small_cache(page_size), 400, seed=7 + page_size)
        assert sum(stats.ops.values()) == 400
        assert all(stats.ops[k] > 0 for k in StressDriver.OPS), stats.ops


def test_driver_notices_a_corrupted_state():
    """The check really runs after each operation: a state overwritten behind the cache's
    back is reported by the next check."""
    cache = _small_cache(4)
    corrupted = []

    def check(c, **kw):
        if not corrupted and c.mamba_evictable_size() > 2:
            node = next(n for n in c.nodes() if n.mamba_value is not None)
            write_state(c.mamba_pool, node.mamba_value, [99, 98, 97])
            corrupted.append(node.id)
        assert_healthy(c, **kw)

    with pytest.raises(AssertionError, match="INTEGRITY"):
        run_stress(cache, 200, seed=3, check=check)
    assert corrupted
