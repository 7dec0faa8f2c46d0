"""Eviction on the tiered tree: device demotion (§3.6) and host eviction (§3.8); the tiered
cascade's stop rule (§3.10) is in :mod:`himamba.cache.cascade`.

A device leaf leaves the device in one of three ways: it is already backed up, so it is
*demoted* (device KV and state freed, host copy kept); under ``write_back`` it is written to host
first and then demoted; otherwise it is deleted. Host-only leaves are deleted by ``evict_host``.

"""

from __future__ import annotations

from himamba.cache.cascade import HiCascadeMixin
from himamba.cache.device_eviction import DeviceEvictionMixin
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError
from himamba.observe.events import EventKind, operation
from himamba.validate import check_count


class HiEvictionMixin(DeviceEvictionMixin, HiCascadeMixin):
    """Device demotion, host eviction and the tiered cascade."""

    # -- device leaves -------------------------------------------------------------------------
    def _evict_device_leaf(self, node: TreeNode) -> tuple[int, TreeNode | None]:
        if node.host_value is not None:
            return self._evict_to_host(node)
        if self.write_policy == "write_back":
            written = self._write_backup(node, write_back=True)
            self.writing_check(write_back=True)
            if written or self.config.has_legacy("B7"):
                return self._evict_to_host(node)
            if node.children:
                if self.events.active:
                    self.events.emit(EventKind.CASCADE, f"#{node.id}: backup failed and it has host children: kept on device", (node.id,))
                return 0, None
        return self._evict_regular(node)

    def _evict_to_host(self, node: TreeNode) -> tuple[int, TreeNode]:
        """Demote a backed-up device leaf: free its device KV and device state; it stays in the
        tree on host (it may join the host-leaf set). No cascade."""
        if node.value is None:
            raise CacheAssertionError(f"evict to host: node #{node.id} is not on device")
        if node.host_value is None:
            raise CacheAssertionError(f"not backuped, node.id={node.id}")
        n = self.cache_controller.evict_device(node.value)
        if node.full_lock_ref == 0:
            self.full_evictable_size_ -= n
        else:
            self.full_protected_size_ -= n
        if self.config.has_legacy("B18"):  # the node may have been deleted meanwhile (upstream tolerates it)
            self.full_lru_list.discard(node)
        else:
            self.full_lru_list.remove_node(node)
        self._free_device_state(node)
        node.value = None
        self._refresh_leaf_status(node)
        self._refresh_leaf_status(node.parent)
        if self.events.active:
            self.events.emit(EventKind.DEMOTED, f"#{node.id}{preview(node.key.token_ids)} demoted to host: {n} device tokens freed (now KV=H M={node.state_tier()})", (node.id,))
        return n, node.parent

    def _evict_regular(self, node: TreeNode) -> tuple[int, TreeNode]:
        if node.host_value is not None:
            raise CacheAssertionError(f"evict regular: node #{node.id} is backuped")
        return super()._evict_regular(node)

    def _release_leaf_extras(self, node: TreeNode) -> None:
        self._free_host_state(node)
        self.evictable_full_host_leaves.discard(node)

    # -- evict_host ----------------------------------------------------------------------------
    @operation("evict_host")
    def evict_host(self, num_tokens: int) -> int:
        """Free host KV by deleting host-only leaves, oldest first (then the cascade).

        The loop stops once its count reaches ``num_tokens``; that count, as upstream's, adds
        each leaf's host tokens and the cascade's *device* tokens but not the cascade's host
        tokens (B11). Returns the host KV tokens actually freed. Pinned nodes are never taken.
        """
        check_count(num_tokens, "evict_host(num_tokens)")
        before = self.host_kv_pool.available_size()
        self._evict_leaves_by_time(self.evictable_full_host_leaves, self._evict_host_leaf, num_tokens)
        return self.host_kv_pool.available_size() - before

    def _evict_host_leaf(self, node: TreeNode) -> tuple[int, TreeNode]:
        """Delete a host-only leaf: free its host KV and host state, detach it, cascade."""
        pinned = node.host_ref_counter > 0 or (node.host_mamba_ref_counter > 0 and not self.config.has_legacy("B5"))
        if node.value is not None or node.host_value is None or node.mamba_value is not None or pinned:
            raise CacheAssertionError(f"evict host leaf: node #{node.id} is not an unpinned host-only node")
        n = self.cache_controller.evict_host(node.host_value)
        node.host_value = None
        self._free_host_state(node)
        self.evictable_full_device_leaves.discard(node)
        self.evictable_full_host_leaves.discard(node)
        self._detach(node)
        self._refresh_leaf_status(node.parent)
        if self.events.active:
            self.events.emit(EventKind.HOST_LEAF_EVICTED, f"host leaf #{node.id}{preview(node.key.token_ids)} deleted: freed {n} host tokens", (node.id,))
        cascaded, survivor = self._iteratively_delete_tombstone_leaf(node)
        return n + cascaded, survivor

    # -- evict_mamba_host ------------------------------------------------------------------------
    @operation("evict_mamba_host")
    def evict_mamba_host(self, num_states: int) -> int:
        """Free up to ``num_states`` host state slots, least recently used first.

        A host-only leaf goes whole (host KV too, then the cascade); any other node only loses
        its host state. Returns the host states freed.
        """
        check_count(num_states, "evict_mamba_host(n)")
        lru = self.mamba_host_lru_list
        old_rule = self.config.has_legacy("B5")

        def take(x: TreeNode) -> int:
            if x in self.evictable_full_host_leaves:
                self._evict_host_leaf(x)
                return 1
            if old_rule and x.host_ref_counter > 0:
                return 0
            if x.host_mamba_ref_counter != 0:
                raise CacheAssertionError(f"evict_mamba_host: node #{x.id} has a pinned host state")
            self._free_host_state(x)
            if self.events.active:
                self.events.emit(EventKind.HOST_STATE_DROPPED, f"#{x.id} loses its host state (KV={x.kv_tier()})", (x.id,))
            return 1

        return lru.drain(num_states, take)
