"""Eviction: ``evict`` (§3.6), ``evict_mamba`` (§3.7), ``evict_host`` and ``evict_mamba_host``
(§3.8), over the tree, the tiers and three policies.

* The **eviction policy** (:mod:`himamba.cache.eviction_policies`) orders the candidates: which
  evictable leaf goes first, which states are drained.
* The **write policy** (:mod:`himamba.cache.policies`) decides how a device leaf leaves the device:
  deleted (:meth:`Eviction.delete_leaf`), demoted to host (:meth:`Eviction.demote`), or written
  back first.
* The **cascade** (:mod:`himamba.cache.cascade`) deletes the childless tombstones a deletion
  leaves, and the deepest survivor may join the queue.

A state drained from a node with children only leaves it a *tombstone*; a childless one goes
whole.

Size: over 300 lines because the four evictions share one leaf loop and the two deletions (device
leaf, host leaf) that end in the cascade; a reader compares them side by side.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from himamba.cache.cascade import Cascade
from himamba.cache.device_tier import DeviceTier
from himamba.cache.host_tier import HostTier
from himamba.cache.tree import RadixTree
from himamba.cache.words import count
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError
from himamba.observe.events import EventKind

# The device tree's and the tiered tree's own words for a full-locked leaf met by evict_mamba.
DEVICE_LOCKED_LEAF = "evict leaf node invalid"
TIERED_LOCKED_LEAF = "evict device leaf: full_lock_ref mismatch"


class Eviction:
    """The evictions of one cache. ``cache`` is the facade: the write policy and the public
    operations a write-back calls are reached through it (so recordings nest them).

    Variants fixed at construction: ``queue_parent`` (legacy B16: after a cascade the loop queues
    ``x.parent`` instead of the deepest survivor), ``take_locked_leaf`` (legacy B8),
    ``strict_leaf`` (legacy B21 on the device tree), ``locked_leaf_words`` (which assertion a
    full-locked leaf meets), ``old_host_rule`` (legacy B5)."""

    def __init__(self, cache, tree: RadixTree, device: DeviceTier, hosts: tuple[HostTier, ...], cascade: Cascade,
                 policy, *, queue_parent: bool = False, take_locked_leaf: bool = False, strict_leaf: bool = False,
                 locked_leaf_words: str = DEVICE_LOCKED_LEAF, old_host_rule: bool = False) -> None:
        self.cache, self.tree, self.device, self.hosts, self.cascade = cache, tree, device, hosts, cascade
        self.policy = policy
        self.events = cache.events
        self.queue_parent = queue_parent
        self.take_locked_leaf = take_locked_leaf
        self.strict_leaf = strict_leaf
        self.locked_leaf_words = locked_leaf_words
        self.old_host_rule = old_host_rule
        self.why = ""  # while anyone listens: why the leaf being evicted came first (for its step text)

    def refresh(self, node: TreeNode) -> None:
        """Recompute every leaf-set membership of ``node`` after its structure changed."""
        self.device.refresh_leaf(node)
        for host in self.hosts:
            host.refresh_leaf(node)

    # -- the leaf loop -----------------------------------------------------------------------------
    def evict_leaves(self, leaves: set[TreeNode], evict_one: Callable[[TreeNode], tuple[int, TreeNode | None]],
                     budget: int) -> int:
        """The loop shared by ``evict`` and ``evict_host``: pop the first leaf of ``leaves`` in the
        policy's order (skipping stale entries), ``evict_one`` it, and queue the deepest surviving
        ancestor if it became a leaf; stop once the counts reach ``budget``."""
        policy = self.policy
        heap = policy.order(leaves)
        heapq.heapify(heap)
        events = self.events
        counted = 0
        outer_why = self.why  # a nested loop (a write-back's host room) keeps the outer leaf's reason
        while counted < budget and heap:
            _, x = heapq.heappop(heap)
            if x not in leaves:
                if events.active:
                    events.emit(EventKind.CASCADE, f"skip stale heap entry #{x.id} (no longer an evictable leaf)", (x.id,))
                continue
            if events.active:
                self.why = self._why_leaf(x, heap, leaves)
            n, survivor = evict_one(x)
            counted += n
            if self.queue_parent:
                survivor = x.parent
            if survivor in leaves:
                heapq.heappush(heap, (policy.requeue_key(survivor, leaves), survivor))
        self.why = outer_why
        return counted

    def _why_leaf(self, x: TreeNode, heap: list, leaves: set[TreeNode]) -> str:
        """The policy's rule, ``x``'s standing and the runner-up: "oldest evictable leaf #2, t=3,
        before #5, t=7" (only built while someone listens)."""
        policy = self.policy
        runner = next((n for _, n in sorted(heap) if n in leaves and n is not x), None)
        after = f", before #{runner.id}, {policy.describe(runner)}" if runner is not None else ", the only candidate"
        return f"{policy.rule} #{x.id}, {policy.describe(x)}{after}"

    def _why_state(self, x: TreeNode, lru) -> str:
        policy = self.policy
        runner = lru.prev_no_lock(x) if policy.name in ("lru", "lru_consumed") else None
        after = f", before #{runner.id}, {policy.describe(runner)}" if runner is not None else ""
        return f"{policy.state_rule} #{x.id}, {policy.describe(x)}{after}"

    def _because(self) -> str:
        return f" ({self.why})" if self.why else ""

    # -- device leaves ---------------------------------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` device tokens from unlocked leaves (see the facade)."""
        return self.evict_leaves(self.device.leaves, self.evict_device_leaf, num_tokens)

    def evict_device_leaf(self, node: TreeNode) -> tuple[int, TreeNode | None]:
        """One evictable device leaf leaves the device as the write policy says."""
        return self.cache.write_policy_object.evict_leaf(self.cache, node)

    def delete_leaf(self, node: TreeNode) -> tuple[int, TreeNode]:
        """Delete a childless device node that has no host copy: free its KV and states on every
        tier, detach it, run the cascade. Returns (device tokens freed, deepest survivor)."""
        if node.host_value is not None:
            raise CacheAssertionError(f"evict regular: node #{node.id} is backuped")
        if node.value is None:
            raise CacheAssertionError(f"evict regular: node #{node.id} is not on device")
        if node.children:
            raise CacheAssertionError(f"non-leaf, node.id={node.id}")
        if self.strict_leaf:
            if node.full_lock_ref or node.mamba_lock_ref:
                raise CacheAssertionError(f"evict leaf node invalid with x.id={node.id} x.full_lock_ref={node.full_lock_ref} x.mamba_lock_ref={node.mamba_lock_ref}")
            if node.mamba_value is None:
                raise CacheAssertionError(f"leaf node mamba value is not None, x.id={node.id}")
        n = self.device.drop_kv(node, clear=False)
        self.device.drop_state(node)
        for host in self.hosts:
            host.drop_state(node)
            host.forget(node)
        self.tree.detach(node)
        if self.events.active:
            self.events.emit(EventKind.LEAF_EVICTED, f"leaf #{node.id}{preview(node.key.token_ids)} deleted: freed {count(n, 'KV token')}{self._because()}", (node.id,))
        cascaded, survivor = self.cascade.run(node)
        return n + cascaded, survivor

    def demote(self, node: TreeNode) -> tuple[int, TreeNode]:
        """Demote a backed-up device leaf: free its device KV and device state; it stays in the
        tree on host (it may join the host-leaf set). No cascade."""
        if node.value is None:
            raise CacheAssertionError(f"evict to host: node #{node.id} is not on device")
        if node.host_value is None:
            raise CacheAssertionError(f"not backuped, node.id={node.id}")
        device = self.device
        n = device.drop_kv(node, clear=True, tolerant=device.tolerant_unlist)
        device.drop_state(node)
        self.refresh(node)
        self.refresh(node.parent)
        if self.events.active:
            self.events.emit(EventKind.DEMOTED, f"#{node.id}{preview(node.key.token_ids)} demoted to host: {count(n, 'device token')} freed (now KV=H M={node.state_tier()}){self._because()}", (node.id,))
        return n, node.parent

    # -- evict_mamba (device states) ----------------------------------------------------------------
    def evict_mamba(self, num_states: int) -> int:
        """Free up to ``num_states`` device states in the policy's order (see the facade)."""
        root = self.tree.root

        lru = self.device.mamba_lru_list
        outer_why = self.why

        def take(x: TreeNode) -> int:
            if x is root or x.mamba_lock_ref != 0 or x.mamba_value is None:
                raise CacheAssertionError(f"evict_mamba: bad candidate #{x.id}")
            if self.events.active:
                self.why = self._why_state(x, lru)
            if x.children:
                self.tombstone(x)
                return 1
            if x.full_lock_ref > 0 and not self.take_locked_leaf:
                return 0
            if x.full_lock_ref != 0:
                raise CacheAssertionError(f"{self.locked_leaf_words} with x.id={x.id} x.full_lock_ref={x.full_lock_ref} x.mamba_lock_ref={x.mamba_lock_ref}")
            self.evict_device_leaf(x)
            return 1

        try:
            return self.policy.drain_states(lru, num_states, take)
        finally:
            self.why = outer_why

    def tombstone(self, node: TreeNode) -> None:
        """Drop the device state of a node that has children; its KV stays."""
        self.device.drop_state(node)
        if self.events.active:
            self.events.emit(EventKind.TOMBSTONE, f"#{node.id} loses its device state (now a tombstone; KV kept){self._because()}", (node.id,))

    # -- host ---------------------------------------------------------------------------------------------
    def evict_host(self, host: HostTier, num_tokens: int) -> int:
        """Delete host-only leaves in the policy's order until the count reaches ``num_tokens``.
        Returns the host KV tokens actually freed."""
        before = host.host_kv_pool.available_size()
        self.evict_leaves(host.leaves, lambda x: self.delete_host_leaf(host, x), num_tokens)
        return host.host_kv_pool.available_size() - before

    def delete_host_leaf(self, host: HostTier, node: TreeNode) -> tuple[int, TreeNode]:
        """Delete a host-only leaf: free its host KV and host state, detach it, cascade."""
        pinned = node.host_ref_counter > 0 or (node.host_mamba_ref_counter > 0 and not self.old_host_rule)
        if node.value is not None or node.host_value is None or node.mamba_value is not None or pinned:
            raise CacheAssertionError(f"evict host leaf: node #{node.id} is not an unpinned host-only node")
        n = host.drop_kv(node)
        host.drop_state(node)
        self.device.forget(node)
        host.forget(node)
        self.tree.detach(node)
        self.refresh(node.parent)
        if self.events.active:
            self.events.emit(EventKind.HOST_LEAF_EVICTED, f"host leaf #{node.id}{preview(node.key.token_ids)} deleted: freed {count(n, 'host token')}{self._because()}", (node.id,))
        cascaded, survivor = self.cascade.run(node)
        return n + cascaded, survivor

    def evict_mamba_host(self, host: HostTier, num_states: int) -> int:
        """Free up to ``num_states`` host states in the policy's order: a host-only leaf goes
        whole, any other node only loses its host state."""
        outer_why = self.why

        def take(x: TreeNode) -> int:
            if self.events.active:
                self.why = self._why_state(x, host.mamba_host_lru_list)
            if x in host.leaves:
                self.delete_host_leaf(host, x)
                return 1
            if self.old_host_rule and x.host_ref_counter > 0:
                return 0
            if x.host_mamba_ref_counter != 0:
                raise CacheAssertionError(f"evict_mamba_host: node #{x.id} has a pinned host state")
            host.drop_state(x)
            if self.events.active:
                self.events.emit(EventKind.HOST_STATE_DROPPED, f"#{x.id} loses its host state (KV={x.kv_tier()}){self._because()}", (x.id,))
            return 1

        try:
            return self.policy.drain_states(host.mamba_host_lru_list, num_states, take)
        finally:
            self.why = outer_why
