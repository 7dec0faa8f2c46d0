"""The tombstone cascade (reference §3.10): after a leaf leaves the tree, delete the childless
ancestors that hold no state, one after another, until a *stop rule* keeps one.

A childless node without a state can never end a usable match, so it is garbage even if it
still owns KV. Two stop rules:

* single tier (:class:`DeviceCascadeMixin`): stop at the root, at a parent that holds a device
  state, at a locked parent;
* tiered (:class:`HiCascadeMixin`, extending the single-tier rule): also at a parent with a host
  state, at a host-pinned parent (the #23696 fix; legacy B1 drops it) and, under
  ``cascade_rule="unified"``, at every childless tombstone (SGLang's unified tree keeps them as
  leaves that ordinary eviction removes later).

The walk returns the deepest surviving ancestor, from which eviction continues.
"""

from __future__ import annotations

from himamba.cache.hi_base import HiTreeBase
from himamba.cache.tree_base import TreeBase
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError
from himamba.observe.events import EventKind


class DeviceCascadeMixin(TreeBase):
    """The cascade with the single-tier stop rule."""

    def _cascade_stop_reason(self, parent: TreeNode) -> str | None:
        """Why the cascade must keep ``parent`` (``None``: delete it). Single-tier rule."""
        if parent is self.root_node:
            return "parent is the root"
        if parent.mamba_value is not None:
            return f"parent #{parent.id} holds a device state"
        if parent.full_lock_ref > 0 or parent.mamba_lock_ref > 0:
            return f"parent #{parent.id} is locked (full_lock_ref={parent.full_lock_ref})"
        return None

    def _iteratively_delete_tombstone_leaf(self, node: TreeNode) -> tuple[int, TreeNode]:
        """After ``node`` left the tree, delete childless stateless ancestors (the cascade).

        Returns (device tokens freed by the cascade, the deepest surviving ancestor).
        """
        freed = 0
        events = self.events
        while True:
            parent = node.parent
            if parent.children:
                if events.active and parent is not self.root_node:
                    events.emit(EventKind.CASCADE, f"stop: parent #{parent.id} still has {len(parent.children)} child(ren)", (parent.id,), stop=True)
                break
            reason = self._cascade_stop_reason(parent)
            if reason is not None:
                if events.active:
                    events.emit(EventKind.CASCADE, f"stop: {reason}", (parent.id,), stop=True)
                break
            if events.active:
                events.emit(EventKind.CASCADE, f"parent #{parent.id} is a childless tombstone: delete it", (parent.id,), stop=False)
            freed += self._delete_tombstone_leaf(parent)
            node = parent
        survivor = node.parent
        self._refresh_leaf_status(survivor)
        return freed, survivor

    def _delete_tombstone_leaf(self, node: TreeNode) -> int:
        """Delete a childless, stateless node met by the cascade. Returns device tokens freed."""
        if node.mamba_value is not None or node.children:
            raise CacheAssertionError(f"cascade: node #{node.id} is not a childless tombstone")
        freed = 0
        if node.value is not None:
            freed = node.value.shape[0]
            self.kv_pool.free_owned(node.value)
            self.full_evictable_size_ -= freed
            self.full_lru_list.remove_node(node)
        self.evictable_full_device_leaves.discard(node)
        self._detach(node)
        if self.events.active:
            self.events.emit(EventKind.NODE_DELETED, f"tombstone #{node.id}{preview(node.key.token_ids)} deleted ({freed} device tokens)", (node.id,))
        return freed


class HiCascadeMixin(DeviceCascadeMixin, HiTreeBase):
    """The cascade with the tiered stop rule; a deleted tombstone also frees its host KV
    unless pinned."""

    def _cascade_stop_reason(self, parent: TreeNode) -> str | None:
        """The single-tier rule, then: a host state, a host pin (the #23696 fix; legacy B1 drops
        it), and under ``cascade_rule="unified"`` every childless tombstone stays."""
        reason = super()._cascade_stop_reason(parent)
        if reason is not None:
            return reason
        if parent.mamba_host_value is not None:
            return f"parent #{parent.id} holds a host state"
        if (parent.host_ref_counter > 0 or parent.host_mamba_ref_counter > 0) and not self.config.has_legacy("B1"):
            return f"host pin: parent #{parent.id} has host_ref_counter={parent.host_ref_counter}"
        if self.config.cascade_rule == "unified":
            tier = "device" if parent.value is not None else "host"
            return f"unified rule: parent #{parent.id} stays as a {tier} leaf (its KV is on {tier})"
        return None

    def _delete_tombstone_leaf(self, node: TreeNode) -> int:
        if node.mamba_value is not None or node.mamba_host_value is not None or node.children:
            raise CacheAssertionError(f"cascade: node #{node.id} is not a childless full tombstone")
        freed = 0
        if node.value is not None:  # upstream leaves node.value set on the detached node
            freed = self.cache_controller.evict_device(node.value)
            self.full_evictable_size_ -= freed
            self.full_lru_list.remove_node(node)
        self.evictable_full_device_leaves.discard(node)
        self.evictable_full_host_leaves.discard(node)
        self._detach(node)
        kept = ""
        if node.host_value is not None:
            if node.host_ref_counter == 0 and node.host_mamba_ref_counter == 0:
                self.cache_controller.evict_host(node.host_value)
                node.host_value = None
            else:
                kept = f"; its pinned host KV stays allocated (hr={node.host_ref_counter})"
        if self.events.active:
            self.events.emit(EventKind.NODE_DELETED, f"tombstone #{node.id}{preview(node.key.token_ids)} deleted ({freed} device tokens){kept}", (node.id,))
        return freed
