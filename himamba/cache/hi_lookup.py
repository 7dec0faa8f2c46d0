"""Lookup and insert on the tiered tree (§3.1-3.3 with host tiers).

Differences from the device tree: a match may run through host-only nodes (their KV can be
loaded back), so it reports ``host_hit_length``; a host state also ends a usable prefix; splits
also cut ``host_value``; an insert walking into a host-only node *unevicts* it by adopting the
request's device slots; and each insert-time hit may trigger a write-through backup.
"""

from __future__ import annotations

import numpy as np
import torch

from himamba.cache.hi_base import HiTreeBase
from himamba.cache.lookup import LookupMixin
from himamba.cache.results import MatchResult
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError
from himamba.memory import slot_ids
from himamba.observe.events import EventKind


class HiLookupMixin(LookupMixin, HiTreeBase):
    """match_prefix, split and insert of the tiered cache."""

    def _match_result(self, segs: list[torch.Tensor], best: TreeNode, best_len: int,
                      on_device: TreeNode) -> MatchResult:
        """The tiered result: ``device_indices`` covers the part on device; ``last_host_node`` is
        the deepest backed-up node of the usable prefix (also ``best_match_node``, as upstream)
        and ``host_hit_length`` the host tokens above the device part that ``init_load_back``
        could restore (1 when only a host state is missing on device)."""
        root = self.root_node
        host_hit, x = 0, best
        while x is not on_device:
            host_hit += len(x.host_value)
            x = x.parent
        last_host = best
        while last_host is not root and last_host.host_value is None:
            last_host = last_host.parent
        state_only = int(last_host.mamba_host_value is not None and last_host.mamba_value is None)
        indices = slot_ids.cat(segs[:best_len]) if best_len else self._empty_indices
        return MatchResult(indices, on_device, last_host, last_host, max(host_hit, state_only),
                           self._branching_seqlen(segs, best_len))

    # -- split ---------------------------------------------------------------------------------
    def _after_split(self, upper: TreeNode, child: TreeNode) -> None:
        if child.host_value is not None:
            n = len(upper.key)
            upper.host_value = child.host_value[:n]
            child.host_value = child.host_value[n:]
        super()._after_split(upper, child)

    # -- insert --------------------------------------------------------------------------------
    def _take_matched_segment(
        self, node: TreeNode, value: torch.Tensor, ids: np.ndarray, pos: int, p: int, prev_prefix_len: int,
        total: int, chunked: bool
    ) -> int:
        if node.value is None:
            self._unevict_node(node, value[pos:pos + p], ids[pos:pos + p])
            return 0
        return super()._take_matched_segment(node, value, ids, pos, p, prev_prefix_len, total, chunked)

    def _unevict_node(self, node: TreeNode, value: torch.Tensor, ids: np.ndarray) -> None:
        """A host-only node on an insert's path adopts the request's device slots ``value``
        (host ids ``ids``) (KV=DH)."""
        if node.value is not None or node.mamba_value is not None:
            raise CacheAssertionError(f"unevict: node #{node.id} is not evicted")
        kv = self.kv_pool.allocator
        node.value = slot_ids.own_copy(value, ids, 0, host_memory=kv.reads_tensor_memory)
        kv.mark_owned(ids)
        self.full_lru_list.insert_mru(node)
        self.full_evictable_size_ += len(value)
        self._refresh_leaf_status(node)
        self._refresh_leaf_status(node.parent)
        if self.events.active:
            self.events.emit(EventKind.UNEVICTED, f"host node #{node.id}{preview(node.key.token_ids)} takes the request's {len(value)} device slots (KV=DH)", (node.id,))

    def _inc_hit_count(self, node: TreeNode, chunked: bool) -> None:
        """Count a hit (not for chunks, not under write_back) and back up at the threshold."""
        if self.write_policy == "write_back" or chunked:
            return
        node.hit_count += 1
        if node.host_value is None and node.hit_count >= self.write_through_threshold:
            self.write_backup(node)
