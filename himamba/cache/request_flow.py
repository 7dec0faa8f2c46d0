"""cache_finished_req / cache_unfinished_req: how a serving scheduler hands requests to the tree (§3.4).

A :class:`~himamba.cache.results.Request` owns device KV slots (``kv_indices``) and a running
state slot. When it finishes, the tree adopts what it can (its KV and, unless the tree already
had one there, its state) and the request's lock is released. During a chunked prefill, each
chunk is inserted with ``chunked=True`` so it does not count as a hit (legacy B2 drops the flag,
as upstream did before #23696); the request then re-matches and moves its lock to the new node.
"""

from __future__ import annotations

import numpy as np
import torch

from himamba.cache.results import Request
from himamba.core.key import RadixKey
from himamba.errors import CacheAssertionError, InvalidInputError
from himamba.memory import slot_ids
from himamba.validate import (
    check_bool,
    check_int,
    check_slot_tensor,
    check_token_ids,
)


class RequestFlow:
    """Request-level entry points of one cache, built on its public ``match_prefix``, ``insert``
    and locks (``cache`` is the facade, so that recordings nest those calls). Variants fixed at
    construction: ``forward_chunked`` (off with legacy B2), ``raise_like_upstream`` (legacy B19)."""

    def __init__(self, cache, *, forward_chunked: bool = True, raise_like_upstream: bool = False) -> None:
        self.cache = cache
        self.config = cache.config
        self.page_size = cache.page_size
        self.kv_pool = cache.kv_pool
        self.mamba_pool = cache.mamba_pool
        self.forward_chunked = forward_chunked
        self.raise_like_upstream = raise_like_upstream

    def cache_finished_req(self, req: Request, is_insert: bool = True) -> None:
        """Hand a finished request to the tree.

        With ``is_insert``: insert its tokens (all of them; in extra-buffer mode up to
        ``mamba_last_track_seqlen`` with the track slot as state) with
        ``prev_prefix_len = cache_protected_len``; KV past the inserted length is freed.
        Without: free the KV the tree does not own. Then free the request's state slots the tree
        did not adopt and release the request's lock on ``last_node``. Afterwards the request
        owns nothing (``kv_indices`` empty, state slots ``None``). Bad input raises before
        anything changes.
        """
        check_bool(is_insert, "is_insert")
        self._check_request(req)
        tokens, kv = self._committed(req)
        protected = req.cache_protected_len
        cache_len, state = 0, None
        if is_insert:
            if self.config.extra_buffer:
                cache_len, state = req.mamba_last_track_seqlen or 0, req.mamba_track_idx
            else:
                cache_len, state = len(tokens), req.mamba_pool_idx
            if cache_len % self.page_size:
                raise InvalidInputError(f"cache length {cache_len} is not page aligned (page size {self.page_size})")
            if state is None:
                cache_len = 0
        key = RadixKey(tokens[:cache_len], req.extra_key)
        if cache_len:
            self.cache.inserter.check_args(key, kv[:cache_len], state, min(protected, cache_len))
        self._check_request_slots(req, kv[max(cache_len, protected) :])
        tree_took_state = False
        if cache_len:
            result = self.cache.insert(key, kv[:cache_len], state, prev_prefix_len=min(protected, cache_len))
            tree_took_state = not result.mamba_exist
        self.kv_pool.free(kv[max(cache_len, protected) :])
        self._free_request_states(req, tree_took_state)
        if req.last_node is not None:
            self.cache.dec_lock_ref(req.last_node)
        req.last_node = None
        req.kv_indices = kv[:0]
        req.cache_protected_len = 0

    def cache_unfinished_req(self, req: Request, chunked: bool = False) -> None:
        """Insert the prefilled part of a running request and move its lock to the new last node.

        The tree receives a *copy* of the request's state (a fresh slot; in extra-buffer mode the
        track slot, the request getting a new one). The request's slots the tree already had are
        freed by insert and replaced in ``req.kv_indices`` by the tree's own. Afterwards
        ``req.last_node`` is locked and ``req.cache_protected_len`` tokens belong to the tree.
        Bad input raises before anything changes.
        """
        check_bool(chunked, "chunked")
        self._check_request(req)
        tokens = req.fill_ids
        kv = req.kv_indices
        if len(kv) < len(tokens):
            raise InvalidInputError(f"request has {len(kv)} KV slots for {len(tokens)} prefilled tokens")
        protected = req.cache_protected_len
        if self.config.extra_buffer:
            cache_len = req.mamba_last_track_seqlen
            if cache_len is None:
                req.prefix_indices = kv[:protected]
                return
            source = req.mamba_track_idx
            if source is None:
                raise InvalidInputError("request has no track slot (mamba_track_idx) in extra-buffer mode")
        else:
            cache_len = len(tokens)
            source = req.mamba_pool_idx
            if source is None:
                raise InvalidInputError("request has no running state slot (mamba_pool_idx)")
        if cache_len % self.page_size or cache_len > len(kv):
            raise InvalidInputError(f"cache length {cache_len} is not page aligned (page size {self.page_size}) or exceeds the request's KV")
        if not self.mamba_pool.allocator.all_allocated(source):
            raise InvalidInputError("the request's state slot is not allocated")
        key = RadixKey(tokens[:cache_len], req.extra_key)
        self.cache.inserter.check_args(key, kv[:cache_len], None, min(protected, cache_len))
        if self.config.extra_buffer:
            state = source
            req.mamba_track_idx = self._alloc_mamba_slot()
        else:
            state = self._alloc_mamba_slot()
            self.mamba_pool.copy_slot(state, source)
        forward = chunked and self.forward_chunked
        result = self.cache.insert(key, kv[:cache_len], state, prev_prefix_len=min(protected, cache_len), chunked=forward)
        if result.mamba_exist:
            self.mamba_pool.free(state)
        match = self.cache.match_prefix(key)
        new_indices, new_last = match.device_indices, match.last_device_node
        n = len(new_indices)
        states = self.mamba_pool.allocator
        if not result.mamba_exist and not np.array_equal(states.host_ids(new_last.mamba_value), states.host_ids(state)):
            raise CacheAssertionError("cache_unfinished_req: the donated state is not on the new last node")
        if protected > n + self.page_size - 1 or result.prefix_len > n:
            raise CacheAssertionError(f"cache_unfinished_req: matched {n} < protected {protected} / prefix {result.prefix_len}")
        slot_ids.assign(kv, protected, n, new_indices[protected:])
        if req.last_node is not None:
            self.cache.dec_lock_ref(req.last_node)
        self.cache.inc_lock_ref(new_last)
        req.prefix_indices = new_indices
        req.cache_protected_len = n
        req.last_node = new_last
        req.mamba_last_track_seqlen = None

    # -- helpers ---------------------------------------------------------------------------------
    def _check_request(self, req: Request) -> None:
        """Types and ranges of every field the request flow reads, and who owns each slot: the
        first ``cache_protected_len`` KV slots are the tree's, the rest and the state slots the
        request's. Raises before anything changes."""
        if not isinstance(req, Request):
            raise InvalidInputError(f"req must be a Request, got {type(req).__name__}")
        check_token_ids(req.token_ids, "req.token_ids")
        kv = req.kv_indices
        check_slot_tensor(kv, "req.kv_indices")
        if req.fill_len is not None:
            check_int(req.fill_len, "req.fill_len", 0, len(req.token_ids))
        protected = check_int(req.cache_protected_len, "req.cache_protected_len", 0, len(kv))
        if req.mamba_last_track_seqlen is not None:
            check_int(req.mamba_last_track_seqlen, "req.mamba_last_track_seqlen", 0, len(kv))
        alloc = self.mamba_pool.allocator
        for name in ("mamba_pool_idx", "mamba_track_idx"):
            slot = getattr(req, name)
            if slot is not None:
                check_slot_tensor(slot, f"req.{name}", one=True)
                problem = alloc.handover_problem(slot, 0, f"req.{name}", pool="state")
                if problem is not None:
                    raise InvalidInputError(problem)
        problem = self.kv_pool.allocator.handover_problem(kv, protected, "req.kv_indices", "req.cache_protected_len")
        if problem is not None:
            raise InvalidInputError(problem)
        if req.last_node is not None:
            self.cache.check_releasable(req.last_node)

    def _committed(self, req: Request) -> tuple[list[int], torch.Tensor]:
        kv = req.kv_indices
        if len(kv) > len(req.token_ids):
            raise InvalidInputError(f"request has {len(kv)} KV slots but only {len(req.token_ids)} tokens")
        return req.token_ids[: len(kv)], kv

    def _check_request_slots(self, req: Request, kv_tail: torch.Tensor) -> None:
        """The KV the request will free and its state slots must be allocated."""
        if len(kv_tail) and not self.kv_pool.allocator.all_allocated(kv_tail):
            raise InvalidInputError("the request's KV slots past the cached prefix are not allocated")
        for slot in (req.mamba_pool_idx, req.mamba_track_idx):
            if slot is not None and not self.mamba_pool.allocator.all_allocated(slot):
                raise InvalidInputError("a state slot of the request is not allocated")
        states = self.mamba_pool.allocator
        if req.mamba_pool_idx is not None and req.mamba_track_idx is not None and \
                np.array_equal(states.host_ids(req.mamba_pool_idx), states.host_ids(req.mamba_track_idx)):
            raise InvalidInputError("the request's running and track state slots are the same slot")

    def _alloc_mamba_slot(self) -> torch.Tensor:
        """One device state slot, evicting one state if none is free."""
        cache = self.cache
        slot = cache.alloc_state(self.mamba_pool, cache.evict_mamba)
        if slot is None and self.raise_like_upstream:
            raise CacheAssertionError("Can not alloc mamba cache")
        if slot is None:
            raise InvalidInputError("no device state slot can be freed (every state is locked)")
        return slot

    def _free_request_states(self, req: Request, tree_took_state: bool) -> None:
        donated = req.mamba_track_idx if self.config.extra_buffer else req.mamba_pool_idx
        for slot in (req.mamba_pool_idx, req.mamba_track_idx):
            if slot is not None and not (tree_took_state and slot is donated):
                self.mamba_pool.free(slot)
        req.mamba_pool_idx = None
        req.mamba_track_idx = None
