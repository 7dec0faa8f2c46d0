"""cache_finished_req / cache_unfinished_req: how a serving scheduler hands requests to the tree (§3.4).

A :class:`~himamba.cache.results.Request` owns device KV slots (``kv_indices``) and a running
state slot. When it finishes, the tree adopts what it can (its KV and, unless the tree already
had one there, its state) and the request's lock is released. During a chunked prefill, each
chunk is inserted with ``chunked=True`` so it does not count as a hit (legacy B2 drops the flag,
as upstream did before #23696); the request then re-matches and moves its lock to the new node.
"""

from __future__ import annotations

import torch

from himamba.cache.results import Request
from himamba.cache.tree_base import TreeBase
from himamba.core.key import RadixKey
from himamba.errors import CacheAssertionError, InvalidInputError
from himamba.observe.events import operation


class RequestFlowMixin(TreeBase):
    """Request-level entry points built on match_prefix, insert and the locks."""

    @operation("cache_finished_req")
    def cache_finished_req(self, req: Request, is_insert: bool = True) -> None:
        """Hand a finished request to the tree.

        With ``is_insert``: insert its tokens (all of them; in extra-buffer mode up to
        ``mamba_last_track_seqlen`` with the track slot as state) with
        ``prev_prefix_len = cache_protected_len``; KV past the inserted length is freed.
        Without: free the KV the tree does not own. Then free the request's state slots the tree
        did not adopt and release the request's lock on ``last_node``. Afterwards the request
        owns nothing (``kv_indices`` empty, state slots ``None``).
        """
        tokens, kv = self._committed(req)
        protected = req.cache_protected_len
        tree_took_state = False
        if is_insert:
            if self.config.extra_buffer:
                cache_len = req.mamba_last_track_seqlen or 0
                state = req.mamba_track_idx
            else:
                cache_len, state = len(tokens), req.mamba_pool_idx
            if cache_len % self.page_size:
                raise InvalidInputError(f"cache length {cache_len} is not page aligned (page size {self.page_size})")
            self.kv_pool.free(kv[max(cache_len, protected) :])
            if cache_len and state is not None:
                result = self.insert(
                    RadixKey(tokens[:cache_len], req.extra_key), kv[:cache_len], state, prev_prefix_len=min(protected, cache_len)
                )
                tree_took_state = not result.mamba_exist
            else:
                self.kv_pool.free(kv[protected:cache_len])
        else:
            self.kv_pool.free(kv[protected:])
        self._free_request_states(req, tree_took_state)
        if req.last_node is not None:
            self.dec_lock_ref(req.last_node)
        req.last_node = None
        req.kv_indices = kv[:0]
        req.cache_protected_len = 0

    @operation("cache_unfinished_req")
    def cache_unfinished_req(self, req: Request, chunked: bool = False) -> None:
        """Insert the prefilled part of a running request and move its lock to the new last node.

        The tree receives a *copy* of the request's state (a fresh slot; in extra-buffer mode the
        track slot, the request getting a new one). The request's slots the tree already had are
        freed by insert and replaced in ``req.kv_indices`` by the tree's own. Afterwards
        ``req.last_node`` is locked and ``req.cache_protected_len`` tokens belong to the tree.
        """
        tokens = req.fill_ids
        kv = req.kv_indices
        if len(kv) < len(tokens):
            raise InvalidInputError(f"request has {len(kv)} KV slots for {len(tokens)} prefilled tokens")
        if self.config.extra_buffer:
            cache_len = req.mamba_last_track_seqlen
            if cache_len is None:
                req.prefix_indices = kv[: req.cache_protected_len]
                return
            state = req.mamba_track_idx
            req.mamba_track_idx = self._alloc_mamba_slot()
        else:
            cache_len = len(tokens)
            if req.mamba_pool_idx is None:
                raise InvalidInputError("request has no running state slot (mamba_pool_idx)")
            state = self._alloc_mamba_slot()
            self.mamba_pool.copy_slot(state, req.mamba_pool_idx)
        if cache_len % self.page_size:
            raise InvalidInputError(f"cache length {cache_len} is not page aligned (page size {self.page_size})")
        protected = req.cache_protected_len
        forward = chunked and not self.config.has_legacy("B2")
        key = RadixKey(tokens[:cache_len], req.extra_key)
        result = self.insert(key, kv[:cache_len], state, prev_prefix_len=protected, chunked=forward)
        if result.mamba_exist:
            self.mamba_pool.free(state)
        match = self.match_prefix(key)
        new_indices, new_last = match.device_indices, match.last_device_node
        n = len(new_indices)
        if not result.mamba_exist and not torch.equal(new_last.mamba_value, state.view(1)):
            raise CacheAssertionError("cache_unfinished_req: the donated state is not on the new last node")
        if protected > n + self.page_size - 1 or result.prefix_len > n:
            raise CacheAssertionError(f"cache_unfinished_req: matched {n} < protected {protected} / prefix {result.prefix_len}")
        kv[protected:n] = new_indices[protected:]
        if req.last_node is not None:
            self.dec_lock_ref(req.last_node)
        self.inc_lock_ref(new_last)
        req.prefix_indices = new_indices
        req.cache_protected_len = n
        req.last_node = new_last
        req.mamba_last_track_seqlen = None

    # -- helpers ---------------------------------------------------------------------------------
    def _committed(self, req: Request) -> tuple[list[int], torch.Tensor]:
        kv = req.kv_indices
        if len(kv) > len(req.token_ids):
            raise InvalidInputError(f"request has {len(kv)} KV slots but only {len(req.token_ids)} tokens")
        return req.token_ids[: len(kv)], kv

    def _alloc_mamba_slot(self) -> torch.Tensor:
        """One device state slot, evicting one state if none is free."""
        slot = self.mamba_pool.alloc(1)
        if slot is None:
            self.evict_mamba(1)
            slot = self.mamba_pool.alloc(1)
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
