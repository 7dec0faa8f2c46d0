"""Lookup and insert: match_prefix (§3.1), split (§3.2), insert (§3.3), on either cache.

A usable prefix ends at the deepest matched node that holds a state (on a tiered cache, a host
state too). Lookups that end inside an edge split it, and the upper half has no state, so such
lookups reuse nothing (B12, #22935). Insert walks the same path, frees the request's duplicate
KV slots, and hangs the rest as a new leaf that owns the request's slots and its state slot; a
host-only node on its path *unevicts* by adopting the request's device slots. What an
insert-time hit does (count it, back the node up) is the write policy's.

Size: over 300 lines because match_prefix, split and insert walk the same path with the same LRU and
retiming rules (§3.1-3.3); kept together so that the rules are read once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from himamba.cache.device_tier import DeviceTier
from himamba.cache.results import MatchResult, Request
from himamba.cache.tree import RadixTree
from himamba.cache.words import count
from himamba.core.key import RadixKey, as_key, preview
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError, UpstreamFailure
from himamba.memory import slot_ids
from himamba.observe.events import EventKind

ANCESTOR_TIME_STEP = 1e-5  # k-th ancestor of a match is retimed to t - k * step


class Lookup:
    """match_prefix, split and insert of one cache. ``cache`` is the facade (its write policy,
    its ``evict_mamba`` for copy-on-write); ``hosts`` the host tiers (none on a device cache).
    ``raise_like_upstream`` is legacy B19; ``load_back_from_last_host`` legacy B23 (read in
    :meth:`tiered_result`)."""

    def __init__(self, cache, tree: RadixTree, device: DeviceTier, hosts: tuple, *,
                 raise_like_upstream: bool = False, consumed_only: bool = False,
                 load_back_from_last_host: bool = False) -> None:
        self.cache, self.tree, self.device, self.hosts = cache, tree, device, hosts
        self.events = cache.events
        self.page_size = tree.page_size
        self.chunk = cache.config.mamba_cache_chunk_size
        self.raise_like_upstream = raise_like_upstream
        self.consumed_only = consumed_only
        self.load_back_from_last_host = load_back_from_last_host
        self.match_result = self.tiered_result if hosts else self.device_result

    def refresh(self, node: TreeNode) -> None:
        self.device.refresh_leaf(node)
        for host in self.hosts:
            host.refresh_leaf(node)

    # -- match_prefix ---------------------------------------------------------------------------
    def match_prefix(self, key: RadixKey | Sequence[int], req: Request | None = None, cow_mamba: bool = False
                     ) -> MatchResult:
        """See :meth:`RadixCacheBase.match_prefix <himamba.cache.facade.RadixCacheBase.match_prefix>`."""
        key = as_key(key)
        root = self.tree.root
        if len(key) == 0:
            empty = self.cache.empty_indices
            return MatchResult(empty, root, root, root)
        segs, best, best_len = self.match_walk(key.page_aligned(self.page_size))
        on_device = self.deepest_on_device(best)
        self.touch_match(best, on_device)
        result = self.match_result(segs, best, best_len, on_device)
        if cow_mamba and req is not None and best.mamba_value is not None:
            self.copy_state_to_request(best, req)
        return result

    def device_result(self, segs: list[torch.Tensor], best: TreeNode, best_len: int,
                      on_device: TreeNode) -> MatchResult:
        """The device tree's result: the usable prefix ends at ``best`` on every count."""
        indices = slot_ids.cat(segs[:best_len]) if best_len else self.cache.empty_indices
        return MatchResult(indices, best, best, best, 0, self.branching_seqlen(segs, best_len))

    def tiered_result(self, segs: list[torch.Tensor], best: TreeNode, best_len: int,
                      on_device: TreeNode) -> MatchResult:
        """The tiered result: ``device_indices`` covers the part on device; ``last_host_node`` is
        the deepest backed-up node of the usable prefix; ``best_match_node`` its last node
        (``best``), where ``init_load_back`` starts (#25088; legacy B23: ``last_host_node``, as
        SGLang 0.5.11, so a prefix on device but not backed up reloads an ancestor's host state);
        ``host_hit_length`` the host tokens above the device part that ``init_load_back`` could
        restore (1 when only a host state is missing on device at ``best_match_node``)."""
        root = self.tree.root
        host_hit, x = 0, best
        while x is not on_device:
            host_hit += len(x.host_value)
            x = x.parent
        last_host = best
        while last_host is not root and last_host.host_value is None:
            last_host = last_host.parent
        start = last_host if self.load_back_from_last_host else best
        state_only = int(start.mamba_host_value is not None and start.mamba_value is None)
        indices = slot_ids.cat(segs[:best_len]) if best_len else self.cache.empty_indices
        return MatchResult(indices, on_device, last_host, start, max(host_hit, state_only),
                           self.branching_seqlen(segs, best_len))

    def match_walk(self, key: RadixKey) -> tuple[list[torch.Tensor], TreeNode, int]:
        """Walk ``key`` down the tree (splitting the edge where it ends inside one).

        Returns the device KV segments of the matched nodes on device, the deepest matched node
        holding a state on some tier (``best``), and how many segments lie above it. The walk
        stops at a node with KV on no tier (defensive: I3 forbids them)."""
        ps = self.page_size
        node = best = self.tree.root
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
                child = self.split(child, p)
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

    def branching_seqlen(self, segs: list[torch.Tensor], best_len: int) -> int | None:
        """Where a state checkpoint would make the matched-but-unusable tail reusable."""
        if len(segs) <= best_len:
            return None
        chunk = self.chunk
        return (sum(s.shape[0] for s in segs) // chunk) * chunk or None

    def touch_match(self, best: TreeNode, on_device: TreeNode) -> None:
        """LRU refresh and retiming of a match's usable node and its ancestors (the full LRU from
        ``on_device``, the deepest of them with device KV): the k-th ancestor gets ``t - k*1e-5``.
        With ``consumed_only`` (eviction ``lru_consumed``) only ``best``'s state moves in the
        mamba list, the state the match consumed."""
        root = self.tree.root
        if best is root:
            return
        self.device.full_lru_list.reset_node_and_parents_mru(on_device, root)
        if not self.consumed_only:
            self.device.mamba_lru_list.reset_node_and_parents_mru(best, root)
        elif best.mamba_value is not None:
            self.device.mamba_lru_list.reset_node_mru(best)
        t = self.tree.tick()
        x, k = best, 0
        while x is not root:
            x.last_access_time = t - k * ANCESTOR_TIME_STEP
            x = x.parent
            k += 1
        if self.events.active:
            self.events.emit(EventKind.LRU_REFRESH, f"match refreshes #{best.id} and its {count(k - 1, 'ancestor')}", (best.id,))

    def deepest_on_device(self, node: TreeNode) -> TreeNode:
        """``node`` or its nearest ancestor whose KV is on device (the root at worst)."""
        root = self.tree.root
        while node is not root and node.value is None:
            node = node.parent
        return node

    def copy_state_to_request(self, best: TreeNode, req: Request) -> None:
        cache = self.cache
        if req.mamba_pool_idx is None:
            slot = cache.alloc_state(self.device.mamba_pool, cache.evict_mamba, lock_node=best)
            if slot is None:
                if self.raise_like_upstream:
                    raise UpstreamFailure("RuntimeError: Can not alloc mamba cache")
                raise InvalidInputError("no mamba state slot free for the request (all states are locked)")
            req.mamba_pool_idx = slot
        self.device.mamba_pool.copy_slot(req.mamba_pool_idx, best.mamba_value)

    # -- split -------------------------------------------------------------------------------
    def split(self, child: TreeNode, split_len: int) -> TreeNode:
        """Split ``child``'s edge after ``split_len`` tokens; return the new upper node.

        The upper node takes the first tokens and their slots on every tier, copies
        ``full_lock_ref`` (so every outstanding release stays balanced), has no state and
        ``hit_count`` 0; the child keeps the rest, its states, pins and hit count, and is retimed
        after the upper node."""
        upper = self.tree.split_edge(child, split_len)
        upper.last_access_time = self.tree.tick()
        child.last_access_time = self.tree.tick()
        self.device.split(upper, child, split_len)
        for host in self.hosts:
            host.split(upper, child, split_len)
        self.refresh(upper)
        self.refresh(child)
        if self.events.active:
            self.events.emit(
                EventKind.SPLIT,
                f"split #{child.id} after {split_len} tokens: new upper #{upper.id}{preview(upper.key.token_ids)} "
                f"(no state) over #{child.id}{preview(child.key.token_ids)}",
                (upper.id, child.id),
            )
        return upper
