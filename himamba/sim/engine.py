"""Engine: drives a cache the way a serving scheduler does, one step at a time.

Requests wait in a queue (FIFO; a request whose ``session`` has one running waits for it). Each
:meth:`Engine.step`:

1. processes transfer acks (tiered cache: ``check_hicache_events``; with manual acks, every ack
   in flight is completed first, so a transfer lands one step after it was issued);
2. admits requests while fewer than ``max_running`` run: ``match_prefix(prompt)``; on the
   tiered cache with ``host_hit_length > 0``, ``init_load_back(best_match_node)`` (the loads are
   started with ``ready_to_load_host_cache`` once admission is over); then the request locks its
   last node and takes a state slot (two in extra-buffer mode), ``evict_mamba(1)`` on shortage;
3. advances every running request by one chunk of prefill (``chunk_size`` tokens; then
   ``cache_unfinished_req(req, chunked=True)``, or ``chunked=False`` after the last chunk, as
   SGLang does when prefill completes) or by ``decode_tokens`` output tokens; KV is allocated per
   chunk, ``evict(shortage)`` when short;
4. hands finished requests to ``cache_finished_req``;
5. records the step's metrics (:mod:`himamba.sim.metrics`).

KV rows and states hold real content (:mod:`himamba.memory.content`), so
``hm.check_integrity(cache)`` holds after every step, and ``hm.check_invariants(cache,
held_kv=engine.held_kv(), held_states=engine.held_states())`` balances the pools exactly.

Checkpoint policy (``checkpoint``): ``None`` keeps a state where SGLang's scheduler does (every
chunk end and the end of prefill, then the end of the sequence); ``"sequence_end"`` inserts only
when the request finishes (one state at the end of its sequence); ``"page_aligned"`` does the
same but cuts a request that names its ``aligned_len`` (a block-mode prompt whose last block is
partial, :func:`himamba.sim.mooncake.to_requests`) to those full blocks, and counts its whole prompt
in ``prompt_tokens`` (the partial block is a miss, as for the ceilings).

Clock (``step_ms``): when given, every step lasts ``step_ms`` milliseconds, a request is admitted
no earlier than its ``arrival_ms`` and, when nothing runs, the clock jumps to the next arrival;
``max_running`` is the concurrency limit. Step rows carry ``time_ms`` (the step's start).

When no running request can get memory in a step, the newest is retracted (its KV and slots
released, re-queued at the front; admission pauses until a request finishes). A request that
cannot run even alone raises :class:`EngineStall`. With ``page_size > 1`` each request is cut
to whole pages (the tail of fewer than a page is not simulated) and chunks are whole pages.

Size: over 300 lines because one scheduler step (acks, admission, prefill chunks, decode, finish) is
one state machine over the same running requests; its argument checks and metrics live in
engine_args.py and metrics.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from himamba.cache.facade import RadixCacheBase
from himamba.cache.results import MatchResult, Request
from himamba.cache.tree import depth
from himamba.core.node import TreeNode
from himamba.errors import HiMambaError, InvalidInputError
from himamba.memory import slot_ids
from himamba.memory.content import prefix_fingerprint, write_kv, write_state_of
from himamba.sim.engine_args import CHECKPOINTS, check_engine_args
from himamba.sim.metrics import STEP_COLUMNS, TRANSFERS, SimMetrics
from himamba.sim.probe import EvictionProbe
from himamba.sim.request import PackedWorkload, SimRequest
from himamba.validate import check_optional_count

__all__ = ["CHECKPOINTS", "Engine", "EngineStall", "check_engine_args"]


class EngineStall(HiMambaError, RuntimeError):
    """A request cannot run even alone: the pools are too small for it."""


@dataclass(slots=True)
class _Live:
    """A running request: the cache's Request plus the engine's progress."""

    item: SimRequest
    req: Request
    tokens: list[int]  # prompt + output, cut to whole pages
    prompt_end: int
    fill: int  # tokens whose KV exists
    record: dict = field(default_factory=dict)
    fp: int = 0  # fingerprint of tokens[:fp_len]
    fp_len: int = 0


class Engine:
    """A small serving scheduler around ``cache`` (a MambaRadixCache or HiMambaRadixCache).

    ``chunk_size``: prefill tokens per request per step. ``decode_tokens``: output tokens each
    decoding request generates per step (1 = token by token). ``max_running``: batch size.
    ``load_back_quota``: ``mem_quota`` passed to ``init_load_back``. ``evict_headroom``: extra
    tokens evicted on a KV shortage. ``probe``: subscribe an :class:`EvictionProbe` so that the
    metrics count evictions (slower: the cache then builds its events). ``keep_steps`` /
    ``keep_requests``: keep per-step / per-request rows (totals are always kept).

    The engine is the only user of the cache while it runs (it assumes nobody else holds pool
    slots). Call :meth:`close` (or use ``with``) to unsubscribe the probe.
    """

    def __init__(self, cache, *, chunk_size: int = 512, decode_tokens: int = 16, max_running: int = 4,
                 load_back_quota: int | None = None, evict_headroom: int = 0, probe: bool = True,
                 keep_steps: bool = True, keep_requests: bool = True, checkpoint: str | None = None,
                 step_ms: float | None = None) -> None:
        check_engine_args(chunk_size=chunk_size, decode_tokens=decode_tokens, max_running=max_running,
                          load_back_quota=load_back_quota, evict_headroom=evict_headroom, checkpoint=checkpoint,
                          step_ms=step_ms)
        if not isinstance(cache, RadixCacheBase):
            raise InvalidInputError(f"Engine needs a cache (MambaRadixCache or HiMambaRadixCache), got {type(cache).__name__}")
        self.checkpoint, self.step_ms, self.clock_ms = checkpoint, step_ms, 0.0
        self.cache = cache
        self.tiered = bool(getattr(cache, "tiered", False))
        ps = cache.page_size
        self.extra_buffer = cache.config.extra_buffer
        self.chunk_size = max(ps, chunk_size - chunk_size % ps)
        self.decode_tokens = -(-decode_tokens // ps) * ps
        self.max_running, self.load_back_quota, self.evict_headroom = max_running, load_back_quota, evict_headroom
        self.metrics = SimMetrics(keep_steps, keep_requests)
        self.probe = EvictionProbe(cache).attach() if probe else None
        self.running: list[_Live] = []
        self.step_index = 0
        self._queue: deque[SimRequest] = deque()
        self._feeds: deque[list] = deque()  # [sequence, next index]
        self._sessions: set[int] = set()
        self._admit_paused = False
        self._loads_queued = False
        self._retractions: dict[int, int] = {}
        cc = getattr(cache, "cache_controller", None)
        self._moved = _moved(cc) if cc is not None else {}

    # -- public ---------------------------------------------------------------------------------
    def submit(self, requests: Iterable[SimRequest]) -> None:
        """Queue requests (kept as given and read one at a time, so a PackedWorkload stays packed)."""
        seq = requests if isinstance(requests, Sequence) else list(requests)
        if not isinstance(seq, PackedWorkload):
            bad = next((r for r in seq if not isinstance(r, SimRequest)), None)
            if bad is not None:
                raise InvalidInputError(f"submit takes SimRequests (see SimRequest.make), got a {type(bad).__name__}")
        if len(seq):
            self._feeds.append([seq, 0])

    @property
    def waiting(self) -> int:
        return len(self._queue) + sum(len(s) - i for s, i in self._feeds)

    @property
    def idle(self) -> bool:
        """Nothing running and nothing waiting."""
        return not self.running and self._peek() is None

    def held_kv(self) -> int:
        """Device KV slots held by running requests and not owned by the tree."""
        return sum(len(lv.req.kv_indices) - lv.req.cache_protected_len for lv in self.running)

    def held_states(self) -> int:
        """Device state slots held by running requests."""
        return sum((lv.req.mamba_pool_idx is not None) + (lv.req.mamba_track_idx is not None) for lv in self.running)

    def run(self, requests: Iterable[SimRequest] | None = None, *, max_steps: int | None = None,
            progress: bool | None = None, on_step: Callable[[Engine, dict], None] | None = None) -> SimMetrics:
        """Submit ``requests`` (if any) and step until idle (or ``max_steps``); when it ended idle,
        land every transfer in flight. ``progress``: a tqdm bar over requests (default: shown from 1,000
        requests on). ``on_step(engine, row)`` is called after every step. Returns the metrics."""
        check_optional_count(max_steps, "max_steps")
        if requests is not None:
            self.submit(requests)
        total = self.waiting + len(self.running)
        show = total >= 1000 if progress is None else progress
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="req", desc="simulating")
        try:
            steps = 0
            while not self.idle and (max_steps is None or steps < max_steps):
                done = self.metrics.requests_done
                row = self.step()
                steps += 1
                if bar is not None:
                    bar.update(self.metrics.requests_done - done)
                if on_step is not None:
                    on_step(self, row)
        finally:
            if bar is not None:
                bar.close()
        if self.idle:
            self.drain()
        return self.metrics

    def drain(self) -> None:
        """Start queued loads and process every ack (the tiered cache ends with nothing in flight)."""
        if self.tiered:
            self.cache.ready_to_load_host_cache()
            for ack in self.cache.cache_controller.in_flight():
                ack.wait()
            self.cache.check_hicache_events()

    def close(self) -> None:
        """Unsubscribe the eviction probe."""
        if self.probe is not None:
            self.probe.detach()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one step -------------------------------------------------------------------------------
    def step(self) -> dict[str, int]:
        """One scheduler iteration (see the module docstring); returns the step's metrics row."""
        self.step_index += 1
        row = dict.fromkeys(STEP_COLUMNS, 0)
        row["step"] = self.step_index
        if self.step_ms is not None:
            nxt = self._peek()
            if not self.running and nxt is not None and nxt.arrival_ms is not None and nxt.arrival_ms > self.clock_ms:
                self.clock_ms = nxt.arrival_ms  # nothing to do until the next arrival
            row["time_ms"] = self.clock_ms
        before = dict(self.probe.counts) if self.probe is not None else None
        if self.tiered:
            self._process_acks()
        progressed = self._admit(row)
        if self._loads_queued:
            self.cache.ready_to_load_host_cache()
            self._loads_queued = False
        for live in list(self.running):
            progressed |= self._advance(live, row)
        if self.running and not progressed:
            self._resolve_stall(row)
        self._close_row(row, before)
        self.metrics.add_step(row)
        if self.step_ms is not None:
            self.clock_ms += self.step_ms
        return row

    def _close_row(self, row: dict[str, int], before: dict[str, int] | None) -> None:
        cache = self.cache
        if before is not None:
            for k, v in self.probe.counts.items():
                row[k] = v - before[k]
        row["waiting"], row["running"] = self.waiting, len(self.running)
        row["device_kv_used"] = cache.kv_pool.used_size()
        row["device_kv_cached"] = cache.full_evictable_size_ + cache.full_protected_size_
        row["device_states_used"] = cache.mamba_pool.used_size()
        row["device_states_cached"] = cache.mamba_evictable_size_ + cache.mamba_protected_size_
        if self.tiered:
            moved = _moved(cache.cache_controller)
            for k, v in moved.items():
                row[k] = v - self._moved[k]
            self._moved = moved
            row["host_kv_used"] = cache.host_kv_pool.used_size()
            row["host_states_used"] = cache.host_mamba_pool.used_size()

    def _process_acks(self) -> None:
        cc = self.cache.cache_controller
        if cc.manual_acks:
            for ack in cc.in_flight():
                cc.complete(ack)
        self.cache.check_hicache_events()

    # -- admission ------------------------------------------------------------------------------
    def _peek(self) -> SimRequest | None:
        if self._queue:
            return self._queue[0]
        while self._feeds:
            feed = self._feeds[0]
            seq, i = feed
            if i < len(seq):
                feed[1] = i + 1
                self._queue.append(seq[i])
                return self._queue[0]
            self._feeds.popleft()
        return None

    def _admit(self, row: dict[str, int]) -> bool:
        admitted = False
        while len(self.running) < self.max_running and not self._admit_paused:
            item = self._peek()
            if item is None or (item.session is not None and item.session in self._sessions):
                break
            if self.step_ms is not None and item.arrival_ms is not None and item.arrival_ms > self.clock_ms:
                break
            started = self._start(item, row)
            if started is None:
                if not self.running:
                    raise EngineStall(f"request {item.rid} cannot get a state slot even with nothing running")
                break
            self._queue.popleft()
            admitted = True
            if started is not True:
                self.running.append(started)
                if item.session is not None:
                    self._sessions.add(item.session)
        return admitted

    def _start(self, item: SimRequest, row: dict[str, int]) -> _Live | bool | None:
        """Match, load back, lock, take state slots. Returns the live request, True when there is
        nothing to simulate (shorter than a page), or None when no state slot can be had."""
        cache, ps = self.cache, self.cache.page_size
        tokens = item.tokens
        limit = len(tokens)
        whole_prompt = self.checkpoint == "page_aligned" and item.aligned_len is not None
        if whole_prompt:
            limit = min(limit, item.aligned_len)
        total_end = limit - limit % ps
        if total_end == 0:
            row["admitted"] += 1
            row["prompt_tokens"] += item.prompt_len if whole_prompt else 0
            self._record(item, row, self._admission(0, 0, 0, 0, False))
            return True
        del tokens[total_end:]
        prompt_end = min(item.prompt_len - item.prompt_len % ps, total_end)
        match = cache.match_prefix(tokens[:prompt_end])
        prefix, node, loaded, from_host = self._usable_prefix(match)
        cache.inc_lock_ref(node)
        slots = [self._alloc_state() for _ in range(2 if self.extra_buffer else 1)]
        if any(s is None for s in slots):
            for s in slots:
                if s is not None:
                    cache.mamba_pool.free(s)
            cache.dec_lock_ref(node)
            return None
        n = len(prefix)
        req = Request(tokens[:prompt_end], prefix.clone(), slots[0], last_node=node, cache_protected_len=n,
                      rid=str(item.rid))
        if self.extra_buffer:
            req.mamba_track_idx = slots[1]
        row["admitted"] += 1
        row["prompt_tokens"] += item.prompt_len if whole_prompt else prompt_end
        row["device_hit_tokens"] += n - loaded
        row["host_hit_tokens"] += loaded
        row["load_backs"] += loaded > 0
        if node is not cache.root_node:
            row["state_hits_host" if from_host else "state_hits_device"] += 1
        return _Live(item, req, tokens, prompt_end, n, self._admission(prompt_end, total_end, n, loaded, from_host))

    def _admission(self, prompt_len: int, total_len: int, cached: int, loaded: int, from_host: bool) -> dict:
        """The request record's fields known at admission (``_record`` adds the rest)."""
        return {"prompt_len": prompt_len, "total_len": total_len, "cached_tokens": cached,
                "host_loaded_tokens": loaded, "state_from_host": from_host, "admitted_step": self.step_index}

    def _usable_prefix(self, m: MatchResult) -> tuple[torch.Tensor, TreeNode, int, bool]:
        """(device KV of the prefix the request can start from, its last node — on device with a
        device state, or the root —, tokens loaded back, whether its state came from host)."""
        node, prefix = m.last_device_node, m.device_indices
        if not self.tiered or m.host_hit_length == 0:
            return prefix, node, 0, False
        cache, target = self.cache, m.best_match_node
        restore = target.mamba_value is None and target.mamba_host_value is not None
        # best_match_node is last_host_node (upstream TODO); when it is on device *above* the
        # deepest device node, the load locks only it, so keep our device prefix locked meanwhile.
        guard = target is not node and target.value is not None
        if guard:
            cache.inc_lock_ref(node)
        loaded, last = cache.init_load_back(target, self.load_back_quota)
        if guard:
            cache.dec_lock_ref(node)
        self._loads_queued = True
        if len(loaded):
            return slot_ids.cat((prefix, loaded)), last, len(loaded), restore
        if node is cache.root_node or node.mamba_value is not None:
            return prefix, node, 0, restore and node is target
        return prefix[: depth(last)], last, 0, restore and last is target

    # -- progress -------------------------------------------------------------------------------
    def _advance(self, live: _Live, row: dict[str, int]) -> bool:
        """One chunk of prefill or one batch of decode for ``live``; False if memory was short."""
        total_end = len(live.tokens)
        start = live.fill
        if start < live.prompt_end:
            end = min(start + self.chunk_size, live.prompt_end)
            if not self._extend(live, end):
                return False
            row["prefill_tokens"] += end - start
            if self.checkpoint is not None:  # one state, at the end of the sequence
                live.req.fill_len = end if end < live.prompt_end else None
                if end == total_end:
                    self._finish(live, row)
            elif end < live.prompt_end:
                live.req.fill_len = end
                self._insert_unfinished(live, chunked=True)
            else:
                live.req.fill_len = None
                if end < total_end:
                    self._insert_unfinished(live, chunked=False)
                else:
                    self._finish(live, row)
            return True
        end = min(start + self.decode_tokens, total_end)
        if end > start:
            if not self._extend(live, end):
                return False
            live.req.token_ids.extend(live.tokens[start:end])
            row["decode_tokens"] += end - start
        if end == total_end:
            self._finish(live, row)
        return True

    def _extend(self, live: _Live, end: int) -> bool:
        """Allocate and fill KV for ``tokens[fill:end]``."""
        n = end - live.fill
        idx = self._alloc_kv(n)
        if idx is None:
            return False
        write_kv(self.cache.kv_pool, idx, live.tokens[live.fill : end], live.fill)
        live.req.kv_indices = slot_ids.cat((live.req.kv_indices, idx))
        live.fill = end
        return True

    def _alloc_kv(self, n: int) -> torch.Tensor | None:
        return self._alloc(self.cache.kv_pool, n, self.cache.evict, self.evict_headroom)

    def _alloc_state(self) -> torch.Tensor | None:
        return self._alloc(self.cache.mamba_pool, 1, self.cache.evict_mamba, 0)

    def _alloc(self, pool, n: int, evict: Callable[[int], int], headroom: int) -> torch.Tensor | None:
        """``n`` slots of ``pool``; on a shortage ``evict`` what is missing (plus ``headroom``) and
        try again, and on the tiered cache once more after processing acks (write-through locks
        drop then). ``None`` when memory stays short."""
        idx = pool.alloc(n)
        if idx is None:
            evict(max(0, n - pool.available_size()) + headroom)
            idx = pool.alloc(n)
        if idx is None and self.tiered:
            self._process_acks()
            evict(max(0, n - pool.available_size()))
            idx = pool.alloc(n)
        return idx

    def _write_state(self, live: _Live, slot: torch.Tensor) -> None:
        """Put the state that ends ``tokens[:fill]`` into ``slot`` (fingerprints are incremental)."""
        live.fp = prefix_fingerprint(live.tokens[live.fp_len : live.fill], live.fp)
        live.fp_len = live.fill
        write_state_of(self.cache.mamba_pool, slot, live.fp)

    def _donate_state(self, live: _Live) -> None:
        if self.extra_buffer:
            self._write_state(live, live.req.mamba_track_idx)
            live.req.mamba_last_track_seqlen = live.fill
        else:
            self._write_state(live, live.req.mamba_pool_idx)

    def _insert_unfinished(self, live: _Live, chunked: bool) -> None:
        """cache_unfinished_req, when a state slot for the tree's copy can be had (else skipped:
        the next insert covers these tokens)."""
        pool = self.cache.mamba_pool
        if pool.available_size() == 0:
            self.cache.evict_mamba(1)
            if pool.available_size() == 0:
                return
        self._donate_state(live)
        self.cache.cache_unfinished_req(live.req, chunked=chunked)

    def _finish(self, live: _Live, row: dict[str, int]) -> None:
        self._donate_state(live)
        self.cache.cache_finished_req(live.req)
        self._drop(live)
        self._admit_paused = False
        self._record(live.item, row, live.record)

    def _record(self, item: SimRequest, row: dict[str, int], record: dict) -> None:
        row["finished"] += 1
        record.update(rid=item.rid, session=item.session, finished_step=self.step_index,
                      retractions=self._retractions.pop(item.rid, 0))
        self.metrics.add_request(record)

    def _drop(self, live: _Live) -> None:
        self.running.remove(live)
        if live.item.session is not None:
            self._sessions.discard(live.item.session)

    def _resolve_stall(self, row: dict[str, int]) -> None:
        """No running request got memory: retract the newest (or give up if it runs alone)."""
        if len(self.running) == 1:
            live = self.running[0]
            raise EngineStall(
                f"request {live.item.rid} ({len(live.tokens)} tokens) cannot get device memory even alone: "
                f"device KV {self.cache.kv_pool.capacity} tokens, {self.cache.mamba_pool.capacity} state slots")
        live = self.running[-1]
        self.cache.cache_finished_req(live.req, is_insert=False)
        self._drop(live)
        self._queue.appendleft(live.item)
        self._retractions[live.item.rid] = self._retractions.get(live.item.rid, 0) + 1
        self._admit_paused = True
        row["retracted"] += 1


def _moved(cc) -> dict[str, int]:
    """The transfer controller's running totals, by step column (bytes and slots per direction)."""
    return {k: getattr(cc, k) for k in TRANSFERS}

