"""Lookup and insert on the device tree: match_prefix (§3.1), split (§3.2), insert (§3.3).

A usable prefix ends at the deepest matched node that holds a state. Lookups that end inside an
edge split it, and the upper half has no state, so such lookups reuse nothing (B12, #22935).
Insert walks the same path, frees the request's duplicate KV slots, and hangs the rest as a new
leaf that owns the request's slots and its state slot.

Size: over 300 lines because match_prefix, split and insert walk the same path with the same LRU and
retiming rules (§3.1-3.3); kept together so that the rules are read once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from himamba.cache.results import InsertResult, MatchResult, Request
from himamba.cache.tree_base import TreeBase
from himamba.core.key import RadixKey, as_key, preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError, InvalidInputError, UpstreamFailure
from himamba.memory import slot_ids
from himamba.memory.device import check_on_device
from himamba.observe.events import EventKind, operation
from himamba.validate import check_int

ANCESTOR_TIME_STEP = 1e-5  # k-th ancestor of a match is retimed to t - k * step


class LookupMixin(TreeBase):
    """match_prefix, _split_node and insert of the single-tier cache."""

    # -- match_prefix ---------------------------------------------------------------------------
    @operation("match_prefix")
    def match_prefix(
        self, key: RadixKey | Sequence[int], req: Request | None = None, cow_mamba: bool = False
    ) -> MatchResult:
        """Longest usable cached prefix of ``key`` (on the tiered cache, across both tiers; see
        ``_match_result`` there for the host fields).

        Changes: may split the edge where the match ends; moves the usable node and its ancestors
        to the MRU end of both LRU lists and retimes them (the k-th ancestor gets ``t - k*1e-5``).
        With ``cow_mamba`` and a ``req``, copies the matched state into the request's state slot
        (allocating one, evicting states if needed, while the matched node is locked).
        Never frees memory except through that state eviction. Holds no locks afterwards.
        """
        key = as_key(key)
        root = self.root_node
        if len(key) == 0:
            return MatchResult(self._empty_indices, root, root, root)
        segs, best, best_len = self._match_walk(key.page_aligned(self.page_size))
        on_device = self._deepest_on_device(best)
        self._touch_match(best, on_device)
        result = self._match_result(segs, best, best_len, on_device)
        if cow_mamba and req is not None and best.mamba_value is not None:
            self._copy_state_to_request(best, req)
        return result

    def _match_result(self, segs: list[torch.Tensor], best: TreeNode, best_len: int,
                      on_device: TreeNode) -> MatchResult:
        """The device tree's result: the usable prefix ends at ``best`` on every count
        (``on_device``, the deepest node of the match with device KV, is ``best`` here)."""
        indices = slot_ids.cat(segs[:best_len]) if best_len else self._empty_indices
        return MatchResult(indices, best, best, best, 0, self._branching_seqlen(segs, best_len))

    def _match_walk(self, key: RadixKey) -> tuple[list[torch.Tensor], TreeNode, int]:
        """Walk ``key`` down the tree (splitting the edge where it ends inside one).

        Returns the device KV segments of the matched nodes on device, the deepest matched node
        holding a state on some tier (``best``), and how many segments lie above it. The walk
        stops at a node with KV on no tier (defensive: I3 forbids them)."""
        ps = self.page_size
        node = best = self.root_node
        segs: list[torch.Tensor] = []
        best_len = 0
        pos, n = 0, len(key)  # the walk has matched key[:pos]
        while pos < n and (ck := key.child_key_at(pos, ps)) in node.children:
            child = node.children[ck]
            if child.value is None and child.host_value is None:
                break
            if node.mamba_value is not None or node.mamba_host_value is not None:
                best, best_len = node, len(segs)
            p = child.key.match_at(key, pos, ps, share=True)  # the insert to come compares the same tokens
            if p < len(child.key.token_ids):  # (the list's len: RadixKey.__len__ is a Python call)
                child = self._split_node(child, p)
                if child.value is not None:
                    segs.append(child.value)
                node = child
                break
            if child.value is not None:
                segs.append(child.value)
            node, pos = child, pos + p
        if node.mamba_value is not None or node.mamba_host_value is not None:
            best, best_len = node, len(segs)
        return segs, best, best_len

    def _branching_seqlen(self, segs: list[torch.Tensor], best_len: int) -> int | None:
        """Where a state checkpoint would make the matched-but-unusable tail reusable."""
        if len(segs) <= best_len:
            return None
        chunk = self.config.mamba_cache_chunk_size
        return (sum(s.shape[0] for s in segs) // chunk) * chunk or None

    def _touch_match(self, best: TreeNode, on_device: TreeNode) -> None:
        """LRU refresh and retiming of a match's usable node and its ancestors (the full LRU from
        ``on_device``, the deepest of them with device KV)."""
        root = self.root_node
        if best is root:
            return
        self.full_lru_list.reset_node_and_parents_mru(on_device, root)
        self.mamba_lru_list.reset_node_and_parents_mru(best, root)
        t = self.tick()
        x, k = best, 0
        while x is not root:
            x.last_access_time = t - k * ANCESTOR_TIME_STEP
            x = x.parent
            k += 1
        if self.events.active:
            self.events.emit(EventKind.LRU_REFRESH, f"match refreshes #{best.id} and its {k - 1} ancestor(s)", (best.id,))

    def _deepest_on_device(self, node: TreeNode) -> TreeNode:
        """``node`` or its nearest ancestor whose KV is on device (the root at worst)."""
        while node is not self.root_node and node.value is None:
            node = node.parent
        return node

    def _copy_state_to_request(self, best: TreeNode, req: Request) -> None:
        if req.mamba_pool_idx is None:
            slot = self._alloc_state(self.mamba_pool, self.evict_mamba, lock_node=best)
            if slot is None:
                if self.config.has_legacy("B19"):
                    raise UpstreamFailure("RuntimeError: Can not alloc mamba cache")
                raise InvalidInputError("no mamba state slot free for the request (all states are locked)")
            req.mamba_pool_idx = slot
        self.mamba_pool.copy_slot(req.mamba_pool_idx, best.mamba_value)

    # -- split -------------------------------------------------------------------------------
    def _split_node(self, child: TreeNode, split_len: int) -> TreeNode:
        """Split ``child``'s edge after ``split_len`` tokens; return the new upper node.

        The upper node takes the first tokens and KV slots, copies ``full_lock_ref`` (so every
        outstanding release stays balanced), has no state and ``hit_count`` 0; the child keeps
        the rest, its states, pins and hit count, and is retimed after the upper node.
        """
        ps = self.page_size
        if not 0 < split_len < len(child.key) or split_len % ps:
            raise CacheAssertionError(f"invalid split of node #{child.id} at {split_len} (len {len(child.key)}, page {ps})")
        parent = child.parent
        upper = self._new_node(child.key[:split_len], parent)
        upper.full_lock_ref = child.full_lock_ref
        if child.value is not None:
            upper.value = child.value[:split_len]
            child.value = child.value[split_len:]
        upper.last_access_time = self.tick()
        child.last_access_time = self.tick()
        on_device = child.value is not None
        if on_device:
            self.full_lru_list.remove_node(child)
        if child.mamba_value is not None:
            self.mamba_lru_list.remove_node(child)
        parent.children[upper.key.child_key(ps)] = upper
        child.key = child.key[split_len:]
        child.parent = upper
        upper.children[child.key.child_key(ps)] = child
        if on_device:
            self.full_lru_list.insert_mru(upper)
            self.full_lru_list.insert_mru(child)
        if child.mamba_value is not None:
            self.mamba_lru_list.insert_mru(child)
        self._after_split(upper, child)
        if self.events.active:
            self.events.emit(
                EventKind.SPLIT,
                f"split #{child.id} after {split_len} tokens: new upper #{upper.id}{preview(upper.key.token_ids)} "
                f"(no state) over #{child.id}{preview(child.key.token_ids)}",
                (upper.id, child.id),
            )
        return upper

    def _after_split(self, upper: TreeNode, child: TreeNode) -> None:
        """Leaf-set bookkeeping after a split (the tiered cache also splits host values here)."""
        self._refresh_leaf_status(upper)
        self._refresh_leaf_status(child)

    # -- insert ------------------------------------------------------------------------------
    @operation("insert")
    def insert(
        self,
        key: RadixKey | Sequence[int],
        value: torch.Tensor,
        mamba_value: torch.Tensor,
        prev_prefix_len: int = 0,
        chunked: bool = False,
    ) -> InsertResult:
        """Cache ``key`` with the request's device KV slots ``value`` and state slot ``mamba_value``.

        Contract: ``value`` holds one allocated device slot per token of ``key``; its first
        ``prev_prefix_len`` entries are slots the caller got from the tree (they are never freed).
        Changes: slots of tokens the tree already holds (past ``prev_prefix_len``) are freed; the
        remainder becomes a new leaf owning its slots and ``mamba_value``; or, when the key ends
        on a stateless node, that node adopts ``mamba_value``. Visited nodes are retimed and
        refreshed. When ``mamba_exist`` is returned the caller still owns ``mamba_value`` and
        must free it. ``chunked`` (a chunk of a chunked prefill) does not count a hit.
        Raises :class:`InvalidInputError`, changing nothing, for mismatched or unaligned input.
        """
        key = as_key(key)
        if mamba_value is None:
            raise InvalidInputError("mamba_value must be a 1-element int64 tensor naming a device state slot")
        walked, ids, state_ids = self._check_insert_args(key, value, mamba_value, prev_prefix_len)
        if len(key) == 0:
            return InsertResult(0, True)
        return self._insert_helper(key, value, mamba_value, prev_prefix_len, chunked, walked, ids, state_ids)

    def _check_insert_args(
        self, key: RadixKey, value: torch.Tensor, mamba_value: torch.Tensor | None, prev_prefix_len: int
    ) -> tuple[list[TreeNode], np.ndarray, np.ndarray | None]:
        """Raise InvalidInputError unless insert(key, value, mamba_value, prev_prefix_len) is
        well formed. ``mamba_value=None`` skips the state checks (for callers that allocate the
        state slot only after validating). Returns what the insert reuses: the device nodes that
        the check's read-only walk found wholly matched by ``key`` (in order from the root), and
        the host ids of ``value`` and of ``mamba_value`` (``None`` without one) that it checked."""
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.int64:
            raise InvalidInputError("value must be a 1-D int64 tensor of device KV slots")
        n = len(key.token_ids)
        if value.shape[0] != n:
            raise InvalidInputError(f"value has {len(value)} slots but the key has {n} tokens")
        if n % self.page_size:
            raise InvalidInputError(f"key of {n} tokens is not a multiple of the page size {self.page_size}")
        if mamba_value is not None and (
            not isinstance(mamba_value, torch.Tensor) or mamba_value.numel() != 1 or mamba_value.dtype != torch.int64
        ):
            raise InvalidInputError("mamba_value must be a 1-element int64 tensor naming a device state slot")
        if type(prev_prefix_len) is not int or not 0 <= prev_prefix_len <= n:
            check_int(prev_prefix_len, "prev_prefix_len", 0, n)
        check_on_device(value, self.kv_pool.device, "value (device KV slots)")
        if mamba_value is not None:
            check_on_device(mamba_value, self.mamba_pool.device, "mamba_value (a device state slot)")
        kv = self.kv_pool.allocator
        ids = kv.host_ids(value)
        state_ids, state = None, None
        if mamba_value is not None:
            states = self.mamba_pool.allocator
            state_ids = states.host_ids(mamba_value)
            state = (states, state_ids, "mamba_value", "state")
        problem = kv.handover_problem(ids, prev_prefix_len, "value", "prev_prefix_len", "device KV", state=state)
        if problem is not None:
            raise InvalidInputError(problem)
        if not prev_prefix_len:
            return [], ids, state_ids
        reach, walked = self._device_reach(key, prev_prefix_len)
        if reach < prev_prefix_len:
            raise InvalidInputError(
                f"prev_prefix_len={prev_prefix_len} claims the first {prev_prefix_len} slots of value come from the tree, "
                f"but only {reach} tokens of this key are cached on device: the tree would adopt its own slots twice")
        return walked, ids, state_ids

    def _device_reach(self, key: RadixKey, limit: int) -> tuple[int, list[TreeNode]]:
        """How many leading tokens of ``key`` (counted up to ``limit`` or a little past) lie on
        device nodes of the tree, following the path an insert walks, and the nodes on the way
        that ``key`` matches wholly. Changes nothing."""
        ps = self.page_size
        node, pos, n = self.root_node, 0, len(key)
        walked: list[TreeNode] = []
        while pos < limit and pos < n and (ck := key.child_key_at(pos, ps)) in node.children:
            child = node.children[ck]
            if child.value is None:
                break
            p = child.key.match_at(key, pos, ps)
            pos += p
            if p < len(child.key.token_ids):
                break
            walked.append(child)
            node = child
        return pos, walked

    def _insert_helper(
        self, key: RadixKey, value: torch.Tensor, mamba_value: torch.Tensor, prev_prefix_len: int, chunked: bool,
        walked: list[TreeNode], ids: np.ndarray, state_ids: np.ndarray,
    ) -> InsertResult:
        """The insert's walk and changes, on arguments :meth:`_check_insert_args` passed (and
        what it returned). ``walked``: nodes the check found wholly matched, in order; reached
        again through the same children, their keys (which only a split changes, and a split
        puts a new node in the parent's place) need no new compare. ``ids``, ``state_ids``: the
        host ids of ``value`` and ``mamba_value``, so that no slot is read twice."""
        ps = self.page_size
        node = self.root_node
        full_lru, mamba_lru = self.full_lru_list, self.mamba_lru_list
        total = 0  # tokens counted towards prefix_len
        pos, n = 0, len(key)  # the walk has matched key[:pos] (and value[:pos])
        known = iter(walked)
        expect = next(known, None)
        while pos < n and (ck := key.child_key_at(pos, ps)) in node.children:
            node = node.children[ck]
            node.last_access_time = self.tick()
            self._refresh_insert_lru(node)
            if node is expect:
                p, expect = len(node.key.token_ids), next(known, None)
            else:
                p = node.key.match_at(key, pos, ps)
            if p < len(node.key.token_ids):
                node = self._split_node(node, p)
            total += self._take_matched_segment(node, value, ids, pos, p, prev_prefix_len, total, chunked)
            pos += p
        if pos < n:
            new = self._add_new_node(node, key[pos:], value, ids, pos, mamba_value, state_ids)
            self._inc_hit_count(new, chunked)
            return InsertResult(total, False)
        if node.mamba_value is None:
            self._attach_state(node, mamba_value, state_ids)
            return InsertResult(total, False)
        full_lru.reset_node_mru(node)
        mamba_lru.reset_node_mru(node)
        node.last_access_time = self.tick()
        return InsertResult(total, True)

    def _refresh_insert_lru(self, node: TreeNode) -> None:
        """An insert's LRU refresh of a node on its path: to the MRU end of the full list if
        its KV is on device, of the mamba list if it holds a device state (the root is never
        listed). Used by ``insert`` and by the storage tier's host insert."""
        if node is self.root_node:
            return
        if node.value is not None:
            self.full_lru_list.reset_node_mru(node)
        if node.mamba_value is not None:
            self.mamba_lru_list.reset_node_mru(node)

    def _take_matched_segment(
        self, node: TreeNode, value: torch.Tensor, ids: np.ndarray, pos: int, p: int, prev_prefix_len: int,
        total: int, chunked: bool
    ) -> int:
        """An insert walked through ``node`` (on device), over the request's slots ``value[pos:pos + p]``
        (host ids ``ids[pos:pos + p]``): free its duplicate slots past ``prev_prefix_len`` and
        count a hit. Returns the tokens that count towards ``prefix_len``."""
        if prev_prefix_len < total + p:
            dup = ids[pos + max(0, prev_prefix_len - total) : pos + p]
            self.kv_pool.free_owned(dup)  # checked with the whole value
            if self.events.active:
                self.events.emit(EventKind.DUPLICATE_FREED, f"#{node.id} already cached: freed {len(dup)} duplicate request slot(s)", (node.id,))
        self._inc_hit_count(node, chunked)
        return p

    def _inc_hit_count(self, node: TreeNode, chunked: bool) -> None:
        """Count an insert-time hit unless the insert is a chunk of a chunked prefill."""
        if not chunked:
            node.hit_count += 1

    def _add_new_node(self, parent: TreeNode, key: RadixKey, value: torch.Tensor, ids: np.ndarray, start: int,
                      mamba_value: torch.Tensor, state_ids: np.ndarray) -> TreeNode:
        """A new leaf under ``parent`` for ``key``, owning the request's slots ``value[start:]``
        (host ids ``ids``) and its state slot (host ids ``state_ids``): copies of both."""
        kv, states = self.kv_pool.allocator, self.mamba_pool.allocator
        node = self._new_node(key, parent)
        node.value = slot_ids.own_copy(value, ids, start, host_memory=kv.reads_tensor_memory)
        node.mamba_value = slot_ids.own_copy(mamba_value, state_ids, 0, host_memory=states.reads_tensor_memory)
        kv.mark_owned(ids[start:])
        states.mark_owned(state_ids)
        node.last_access_time = self.tick()
        parent.children[key.child_key(self.page_size)] = node
        self.full_lru_list.insert_mru(node)
        self.mamba_lru_list.insert_mru(node)
        self.full_evictable_size_ += len(key)
        self.mamba_evictable_size_ += 1
        self._refresh_leaf_status(node)
        self._refresh_leaf_status(parent)
        if self.events.active:
            self.events.emit(
                EventKind.NODE_CREATED,
                f"new leaf #{node.id}{preview(key.token_ids)} under #{parent.id} with {len(key)} tokens and a state",
                (node.id, parent.id),
            )
        return node

    def _attach_state(self, node: TreeNode, mamba_value: torch.Tensor, state_ids: np.ndarray) -> None:
        """A stateless node on the insert's path adopts the request's state slot (host ids ``state_ids``)."""
        states = self.mamba_pool.allocator
        node.mamba_value = slot_ids.own_copy(mamba_value, state_ids, 0, host_memory=states.reads_tensor_memory)
        states.mark_owned(state_ids)
        self.mamba_lru_list.insert_mru(node)
        self.mamba_evictable_size_ += 1
        self.full_lru_list.reset_node_mru(node)
        node.last_access_time = self.tick()
        if self.events.active:
            self.events.emit(EventKind.STATE_ATTACHED, f"tombstone #{node.id} adopts the request's state", (node.id,))

