"""Requests held across operations: started, prefilled chunk by chunk, finished or aborted later.

The fuzzer's other operations complete within themselves; these three keep a
:class:`~himamba.cache.results.Request` running between operations, as a scheduler does, so that
evictions, locks and other requests happen while it holds KV, a running state (and, in
extra-buffer mode, a track slot) and a lock on its last node:

* ``req_start`` (``tokens``, ``cow``): ``match_prefix`` with the request (copy-on-write of the
  matched state when ``cow``), a state slot holding the matched prefix's state, a lock;
* ``req_chunk`` (``k``, ``pages``, ``track``): the k-th unfinished request computes ``pages``
  more pages (KV and running state) and calls ``cache_unfinished_req(chunked=True)``; without
  ``track`` (extra-buffer mode) the chunk records no track state;
* ``req_finish`` (``k``, ``insert``, ``cut``): the k-th request prefills the rest and calls
  ``cache_finished_req`` (``insert`` false: an abort); in extra-buffer mode the track slot holds
  the state at a page boundary chosen by ``cut``.

Every slot is filled with its deterministic content, so ``check_integrity`` can verify the
bytes; :func:`held_kv` and :func:`held_states` say what the requests own, for exact pool
accounting. Each returns what it did in a word (``"cow"`` or ``"started"``; ``"chunked"``,
``"untracked"``, ``"moved"`` when the lock moved to a new node; ``"finished"`` or ``"aborted"``)
or ``None`` when it did nothing. Each operation checks what the reference promises about its results and raises
:class:`~himamba.errors.OracleError` otherwise. When memory cannot be found an operation does
nothing (evictions aside), and one that names a request when none is running does nothing, so
any sub-list of a script stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from himamba.cache.results import MatchResult, Request
from himamba.errors import OracleError
from himamba.memory import slot_ids
from himamba.memory.content import state_matches, write_kv, write_state

MAX_HELD = 3  # running requests at most; a req_start beyond them does nothing


@dataclass
class HeldRequest:
    """A running request and all the tokens it will have once finished."""

    req: Request
    tokens: list[int]


def held_kv(held: list[HeldRequest]) -> int:
    """Device KV slots the running requests own (not yet the tree's)."""
    return sum(len(h.req.kv_indices) - h.req.cache_protected_len for h in held)


def held_states(held: list[HeldRequest]) -> int:
    """Device state slots the running requests own."""
    return sum((h.req.mamba_pool_idx is not None) + (h.req.mamba_track_idx is not None) for h in held)


def make_room(cache, kv: int = 0, states: int = 0) -> bool:
    """Evict so that ``kv`` KV slots and ``states`` state slots are free; whether they are."""
    kv_pool, state_pool = cache.kv_pool, cache.mamba_pool
    if kv_pool.available_size() < kv:
        cache.evict(kv - kv_pool.available_size())
    if state_pool.available_size() < states:
        cache.evict_mamba(states - state_pool.available_size())
    return kv_pool.available_size() >= kv and state_pool.available_size() >= states


def check_match(cache, query: list[int], res: MatchResult) -> None:
    """What a device-only cache's match result must be: whole pages of ``query``, ending at a
    node with a state (or the root) whose path is that prefix, with the path's device slots. (On
    the tiered cache the result may end at a node whose state is on the host only; not checked.)"""
    if getattr(cache, "tiered", False):
        return
    n = len(res.device_indices)
    node = res.last_device_node
    if n % cache.page_size or n > len(query) or cache.path_tokens(node) != query[:n]:
        raise OracleError(f"match_prefix: {n} tokens matched but the result ends at #{node.id}, not at that prefix")
    if node is not cache.root_node and node.mamba_value is None:
        raise OracleError(f"match_prefix: the usable prefix ends at #{node.id}, which has no state")
    path = []
    while node is not cache.root_node:
        path.append(node.value)
        node = node.parent
    want = slot_ids.cat(path[::-1]) if path else res.device_indices[:0]
    if not torch.equal(res.device_indices, want):
        raise OracleError("match_prefix: device_indices are not the slots of the matched path")


def start(cache, held: list[HeldRequest], tokens: list[int], cow: bool, rid: str) -> str | None:
    """``req_start`` (see the module docstring)."""
    track = cache.config.extra_buffer
    if len(held) >= MAX_HELD or not make_room(cache, states=2 if track else 1):
        return None
    req = Request(token_ids=list(tokens), kv_indices=torch.empty(0, dtype=torch.int64), rid=rid)
    res = cache.match_prefix(tokens, req=req, cow_mamba=cow)
    check_match(cache, tokens, res)
    n = len(res.device_indices)
    pool = cache.mamba_pool
    copied = req.mamba_pool_idx is not None
    if copied:
        if not state_matches(pool, req.mamba_pool_idx, tokens[:n]):
            raise OracleError("match_prefix(cow_mamba=True) copied the wrong state into the request")
    else:
        req.mamba_pool_idx = _state_slot(cache, tokens[:n])
    if track:
        req.mamba_track_idx = _state_slot(cache, tokens[:n])
    req.kv_indices = res.device_indices.clone()
    req.prefix_indices = res.device_indices
    req.cache_protected_len = req.fill_len = n
    req.last_node = res.last_device_node
    cache.inc_lock_ref(req.last_node)
    held.append(HeldRequest(req, list(tokens)))
    return "cow" if copied else "started"


def _state_slot(cache, prefix: list[int]) -> torch.Tensor:
    slot = cache.mamba_pool.alloc(1)
    if slot is None:  # make_room made room for every slot a start needs
        raise OracleError("no state slot after evicting for one")
    write_state(cache.mamba_pool, slot, prefix)
    return slot


def _prefill(cache, h: HeldRequest, upto: int) -> bool:
    """Compute KV for ``tokens[len(kv_indices):upto]`` and the running state after ``upto``."""
    req = h.req
    done = len(req.kv_indices)
    if upto > done:
        if not make_room(cache, kv=upto - done):
            return False
        new = cache.kv_pool.alloc(upto - done)
        write_kv(cache.kv_pool, new, h.tokens[done:upto], done)
        req.kv_indices = slot_ids.cat((req.kv_indices, new))
    req.fill_len = upto
    write_state(cache.mamba_pool, req.mamba_pool_idx, h.tokens[:upto])
    return True


def chunk(cache, held: list[HeldRequest], k: int, pages: int, track: bool) -> str | None:
    """``req_chunk`` (see the module docstring)."""
    todo = [h for h in held if h.req.fill_len < len(h.tokens)]
    if not todo:
        return None
    h = todo[k % len(todo)]
    req = h.req
    upto = min(len(h.tokens), req.fill_len + cache.page_size * max(1, pages))
    if not (_prefill(cache, h, upto) and make_room(cache, states=1)):
        return None
    untracked = cache.config.extra_buffer and not track
    if cache.config.extra_buffer:
        if track:
            write_state(cache.mamba_pool, req.mamba_track_idx, h.tokens[:upto])
            req.mamba_last_track_seqlen = upto
        else:
            req.mamba_last_track_seqlen = None  # no track this chunk: only prefix_indices refresh
    locked = req.last_node
    cache.cache_unfinished_req(req, chunked=True)
    p = req.cache_protected_len
    if cache.path_tokens(req.last_node) != h.tokens[:p] or not torch.equal(req.kv_indices[:p], req.prefix_indices[:p]):
        raise OracleError(f"cache_unfinished_req: the request's {p} protected tokens are not its last node's path")
    if req.last_node is not cache.root_node and req.last_node.full_lock_ref < 1:
        raise OracleError(f"cache_unfinished_req: the request's last node #{req.last_node.id} is not locked")
    return "untracked" if untracked else "moved" if req.last_node is not locked else "chunked"


def finish(cache, held: list[HeldRequest], k: int, insert: bool, cut: int) -> str | None:
    """``req_finish`` (see the module docstring)."""
    if not held:
        return None
    h = held[k % len(held)]
    req, ps = h.req, cache.page_size
    cached = len(h.tokens)
    if insert:
        if not _prefill(cache, h, len(h.tokens)):  # the rest of prefill and decode
            return None
        if cache.config.extra_buffer:  # the track slot holds the state at a tracked page boundary
            lo, hi = max(req.cache_protected_len // ps, 1), len(h.tokens) // ps
            cached = ps * (lo + cut % (hi - lo + 1))
            write_state(cache.mamba_pool, req.mamba_track_idx, h.tokens[:cached])
            req.mamba_last_track_seqlen = cached
    held.remove(h)
    cache.cache_finished_req(req, is_insert=insert)
    if req.mamba_pool_idx is not None or req.mamba_track_idx is not None or req.last_node is not None or len(req.kv_indices):
        raise OracleError("cache_finished_req: the request still owns slots or a lock")
    if insert:
        got = len(cache.match_prefix(h.tokens[:cached]).device_indices)
        if got != cached:
            raise OracleError(f"cache_finished_req cached {cached} tokens, but match_prefix finds {got}")
    return "finished" if insert else "aborted"
