"""Device eviction: evict (§3.6) and evict_mamba (§3.7); the cascade is in :mod:`himamba.cache.cascade`.

KV eviction takes the evictable device leaves in access-time order (a heap, not the full LRU
list). State eviction walks the mamba LRU list from its least recently used end: an internal
node just loses its state and becomes a *tombstone*; a childless node is evicted whole.

Deleting a leaf can leave its parent childless; the **tombstone cascade**
(:mod:`himamba.cache.cascade`) then deletes such parents one after another.
"""

from __future__ import annotations

import heapq

from himamba.cache.cascade import DeviceCascadeMixin
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError
from himamba.observe.events import EventKind, operation
from himamba.validate import check_count


class DeviceEvictionMixin(DeviceCascadeMixin):
    """evict, evict_mamba and the cascade of the single-tier cache."""

    # -- evict (KV) ----------------------------------------------------------------------------
    @operation("evict")
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` device KV tokens if unlocked leaves allow it.

        Leaves go oldest first (by ``last_access_time``); a parent that becomes a leaf joins
        the queue. Returns the device tokens freed, cascade deletions included. Locked nodes are
        never touched.

        On the tiered cache under ``write_back`` a leaf is written to host first; when that write
        has to make host room, ``evict_host`` deletes host leaves and their cascade may delete
        device tombstones above them. Those device tokens leave the tree but are not in the
        count, as in SGLang 0.5.11 (its count adds the evicted leaves and their own cascades).
        """
        check_count(num_tokens, "evict(num_tokens)")
        return self._evict_leaves_by_time(self.evictable_full_device_leaves, self._evict_device_leaf, num_tokens)

    def _evict_leaves_by_time(self, leaves: set[TreeNode], evict_one, budget: int) -> int:
        """The eviction loop shared by ``evict`` and ``evict_host``: pop the oldest leaf of
        ``leaves`` (skipping stale heap entries), ``evict_one`` it, and queue the deepest
        surviving ancestor if it became a leaf; stop once the counts reach ``budget``."""
        heap = [(n.last_access_time, n.id, n) for n in leaves]
        heapq.heapify(heap)
        legacy_parent = self.config.has_legacy("B16") and self.tiered
        counted = 0
        while counted < budget and heap:
            _, _, x = heapq.heappop(heap)
            if x not in leaves:
                if self.events.active:
                    self.events.emit(EventKind.CASCADE, f"skip stale heap entry #{x.id} (no longer an evictable leaf)", (x.id,))
                continue
            n, survivor = evict_one(x)
            counted += n
            if legacy_parent:
                survivor = x.parent
            if survivor in leaves:
                heapq.heappush(heap, (survivor.last_access_time, survivor.id, survivor))
        return counted

    def _evict_device_leaf(self, node: TreeNode) -> tuple[int, TreeNode]:
        """Remove one evictable device leaf. Returns (device tokens freed, the deepest surviving
        ancestor, which may now be a leaf)."""
        return self._evict_regular(node)

    def _evict_regular(self, node: TreeNode) -> tuple[int, TreeNode]:
        """Delete a childless device node: free its KV and state, detach it, run the cascade."""
        if node.value is None:
            raise CacheAssertionError(f"evict regular: node #{node.id} is not on device")
        if node.children:
            raise CacheAssertionError(f"non-leaf, node.id={node.id}")
        if not self.tiered and self.config.has_legacy("B21"):
            if node.full_lock_ref or node.mamba_lock_ref:
                raise CacheAssertionError(f"evict leaf node invalid with x.id={node.id} x.full_lock_ref={node.full_lock_ref} x.mamba_lock_ref={node.mamba_lock_ref}")
            if node.mamba_value is None:
                raise CacheAssertionError(f"leaf node mamba value is not None, x.id={node.id}")
        n = node.value.shape[0]
        self.kv_pool.free_owned(node.value)
        if node.full_lock_ref == 0:
            self.full_evictable_size_ -= n
        else:
            self.full_protected_size_ -= n
        self.full_lru_list.remove_node(node)
        self._free_device_state(node)
        self._release_leaf_extras(node)
        self.evictable_full_device_leaves.discard(node)
        self._detach(node)
        if self.events.active:
            self.events.emit(EventKind.LEAF_EVICTED, f"leaf #{node.id}{preview(node.key.token_ids)} deleted: freed {n} KV tokens", (node.id,))
        cascaded, survivor = self._iteratively_delete_tombstone_leaf(node)
        return n + cascaded, survivor

    def _release_leaf_extras(self, node: TreeNode) -> None:
        """Hook for the tiered cache: free what a deleted device leaf holds on other tiers."""

    def _free_device_state(self, node: TreeNode) -> None:
        """Free ``node``'s device state slot (if any), fix the counters, leave the mamba LRU."""
        if node.mamba_value is None:
            return
        self.mamba_pool.free_owned(node.mamba_value)
        if node.mamba_lock_ref == 0:
            self.mamba_evictable_size_ -= 1
        else:
            self.mamba_protected_size_ -= 1
        node.mamba_lock_ref = 0
        if self.config.has_legacy("B18"):  # see _evict_to_host
            self.mamba_lru_list.discard(node)
        else:
            self.mamba_lru_list.remove_node(node)
        node.mamba_value = None

    # -- evict_mamba (states) ----------------------------------------------------------------------
    @operation("evict_mamba")
    def evict_mamba(self, num_states: int) -> int:
        """Free up to ``num_states`` device state slots, least recently used first.

        An unlocked node with children only loses its state (it becomes a tombstone; its KV
        stays). A childless one is evicted as a whole leaf (KV too, then the cascade). Nodes with
        ``mamba_lock_ref > 0`` are skipped; so are childless nodes with ``full_lock_ref > 0``
        unless legacy B8 is on, which evicts them anyway and asserts as upstream does.
        Returns the states freed.
        """
        check_count(num_states, "evict_mamba(n)")
        legacy_b8 = self.config.has_legacy("B8")

        def take(x: TreeNode) -> int:
            if x is self.root_node or x.mamba_lock_ref != 0 or x.mamba_value is None:
                raise CacheAssertionError(f"evict_mamba: bad candidate #{x.id}")
            if x.children:
                self._tombstone_internal_node(x)
                return 1
            if x.full_lock_ref > 0 and not legacy_b8:
                return 0
            if x.full_lock_ref != 0 and not self.tiered:  # the device tree's own assertion
                raise CacheAssertionError(f"evict leaf node invalid with x.id={x.id} x.full_lock_ref={x.full_lock_ref} x.mamba_lock_ref={x.mamba_lock_ref}")
            if x.full_lock_ref != 0:
                raise CacheAssertionError(f"evict device leaf: full_lock_ref mismatch with x.id={x.id} x.full_lock_ref={x.full_lock_ref} x.mamba_lock_ref={x.mamba_lock_ref}")
            self._evict_device_leaf(x)
            return 1

        return self.mamba_lru_list.drain(num_states, take)

    def _tombstone_internal_node(self, node: TreeNode) -> None:
        """Drop the device state of a node that has children; its KV stays."""
        self.mamba_pool.free_owned(node.mamba_value)
        self.mamba_lru_list.remove_node(node)
        self.mamba_evictable_size_ -= 1
        node.mamba_value = None
        if self.events.active:
            self.events.emit(EventKind.TOMBSTONE, f"#{node.id} loses its device state (now a tombstone; KV kept)", (node.id,))
