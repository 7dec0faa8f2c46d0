"""The tombstone cascade (reference §3.10): after a leaf leaves the tree, delete the childless
ancestors that hold no state, one after another, until the cascade rule keeps one.

A childless node without a state can never end a usable match, so it is garbage even if it
still owns KV. Where the walk stops is the cache's :mod:`cascade rule <himamba.cache.policies>`
(single tier; tiered, which also stops at host states and host pins; unified, which keeps every
childless tombstone). The walk returns the deepest surviving ancestor, from which eviction
continues.
"""

from __future__ import annotations

from himamba.cache.device_tier import DeviceTier
from himamba.cache.host_tier import HostTier
from himamba.cache.policies import DeviceCascadeRule
from himamba.cache.tree import RadixTree
from himamba.cache.words import count
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError
from himamba.observe.events import EventBus, EventKind


class Cascade:
    """The cascade over one tree: ``rule`` decides where it stops; a deleted tombstone gives back
    its device KV and, on each host tier, its host KV unless pinned."""

    def __init__(self, tree: RadixTree, device: DeviceTier, hosts: tuple[HostTier, ...],
                 rule: DeviceCascadeRule, events: EventBus, refresh) -> None:
        self.tree, self.device, self.hosts, self.rule, self.events = tree, device, hosts, rule, events
        self.refresh = refresh
        self.what = "childless full tombstone" if hosts else "childless tombstone"

    def run(self, node: TreeNode) -> tuple[int, TreeNode]:
        """After ``node`` left the tree, delete childless stateless ancestors.

        Returns (device tokens freed by the cascade, the deepest surviving ancestor)."""
        freed = 0
        events = self.events
        root = self.tree.root
        rule = self.rule
        while True:
            parent = node.parent
            if parent.children:
                if events.active and parent is not root:
                    events.emit(EventKind.CASCADE, f"stop: parent #{parent.id} still has {count(len(parent.children), 'child', 'children')}", (parent.id,), stop=True)
                break
            reason = rule.stop_reason(parent, root)
            if reason is not None:
                if events.active:
                    events.emit(EventKind.CASCADE, f"stop: {reason}", (parent.id,), stop=True)
                break
            if events.active:
                events.emit(EventKind.CASCADE, f"parent #{parent.id} is a childless tombstone: delete it", (parent.id,), stop=False)
            freed += self.delete_tombstone(parent)
            node = parent
        survivor = node.parent
        self.refresh(survivor)
        return freed, survivor

    def delete_tombstone(self, node: TreeNode) -> int:
        """Delete a childless, stateless node met by the cascade. Returns device tokens freed."""
        if node.mamba_value is not None or node.mamba_host_value is not None or node.children:
            raise CacheAssertionError(f"cascade: node #{node.id} is not a {self.what}")
        freed = self.device.drop_kv(node, clear=False) if node.value is not None else 0
        self.device.forget(node)
        for host in self.hosts:
            host.forget(node)
        self.tree.detach(node)
        kept = "".join(host.release_deleted(node) for host in self.hosts)
        if self.events.active:
            self.events.emit(EventKind.NODE_DELETED, f"tombstone #{node.id}{preview(node.key.token_ids)} deleted ({count(freed, 'device token')}){kept}", (node.id,))
        return freed
