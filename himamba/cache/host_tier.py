"""HostTier: what lives in host memory — the host KV and state pools, the host state LRU list,
the host-leaf set — and its primitives: drop host KV, drop a host state, the host-leaf test,
and host pins (reference §1.4-1.6, §3.13).

A node's KV lives on the device (``value``), on the host (``host_value``) or both; likewise its
state (``mamba_value`` / ``mamba_host_value``). Host pins (``host_ref_counter``,
``host_mamba_ref_counter``) keep host copies in place while storage operations or a load-back
read them.
"""

from __future__ import annotations

from himamba.core.node import TreeNode, host_mamba_lru_list
from himamba.memory.pools import KVPool, MambaPool
from himamba.observe.events import EventBus, EventKind


class HostTier:
    """The host half of a tiered cache. ``old_leaf_rule`` is legacy B5 (the host-leaf test and
    pin handling before upstream's fix), fixed at construction."""

    def __init__(self, host_kv_pool: KVPool, host_mamba_pool: MambaPool, events: EventBus, *,
                 old_leaf_rule: bool = False) -> None:
        self.host_kv_pool = host_kv_pool
        self.host_mamba_pool = host_mamba_pool
        self.events = events
        self.old_leaf_rule = old_leaf_rule
        self.mamba_host_lru_list = host_mamba_lru_list()
        self.root: TreeNode | None = None
        self.leaves: set[TreeNode] = set()

    def reset(self, root: TreeNode) -> None:
        self.root = root
        self.leaves = set()

    def lru_lists(self) -> tuple:
        return (self.mamba_host_lru_list,)

    def free_node(self, node: TreeNode) -> None:
        """Return every host slot ``node`` owns to its pool (for ``reset``)."""
        if node.host_value is not None and node is not self.root:
            self.host_kv_pool.free(node.host_value)
        if node.mamba_host_value is not None:
            self.host_mamba_pool.free(node.mamba_host_value)

    # -- host leaf set (reference §1.5) -----------------------------------------------------------
    def is_leaf(self, node: TreeNode) -> bool:
        """An evictable host leaf: host KV only, unpinned, childless (B5: no pinned host KV and no
        evicted backed-up child)."""
        if node is self.root or node.value is not None or node.host_value is None:
            return False
        if self.old_leaf_rule:
            if node.host_ref_counter != 0:
                return False
            return not any(c.value is None and c.host_value is not None for c in node.children.values())
        return node.host_ref_counter == 0 and node.host_mamba_ref_counter == 0 and not node.children

    def refresh_leaf(self, node: TreeNode) -> None:
        if self.is_leaf(node):
            self.leaves.add(node)
        else:
            self.leaves.discard(node)

    def forget(self, node: TreeNode) -> None:
        """``node`` leaves the tree: it is no host leaf any more."""
        self.leaves.discard(node)

    def split(self, upper: TreeNode, child: TreeNode, n: int) -> None:
        """After ``tree.split_edge``: the upper node takes the first ``n`` host KV slots."""
        if child.host_value is not None:
            upper.host_value = child.host_value[:n]
            child.host_value = child.host_value[n:]

    def admits(self, node: TreeNode) -> bool:
        """May a node with a host state be in the host LRU list? (Pinned states are kept out.)"""
        return node.host_mamba_ref_counter == 0 or self.old_leaf_rule

    # -- drop ---------------------------------------------------------------------------------------
    def drop_state(self, node: TreeNode) -> None:
        """Free ``node``'s host state slot (if any); it leaves the host LRU list. Nothing else
        (host KV, leaf sets) changes."""
        if node.mamba_host_value is None:
            return
        self.host_mamba_pool.free(node.mamba_host_value)
        self.mamba_host_lru_list.discard(node)
        node.mamba_host_value = None

    def drop_kv(self, node: TreeNode) -> int:
        """Free ``node``'s host KV and set ``host_value`` to None. Returns the tokens freed."""
        n = len(node.host_value)
        self.host_kv_pool.free_owned(node.host_value)
        node.host_value = None
        return n

    def release_deleted(self, node: TreeNode) -> str:
        """``node`` was deleted by the cascade: free its host KV unless pinned (a pinned copy stays
        allocated until the pin's owner releases it). Returns a note for the step text."""
        if node.host_value is None:
            return ""
        if node.host_ref_counter == 0 and node.host_mamba_ref_counter == 0:
            self.drop_kv(node)
            return ""
        return f"; its pinned host KV stays allocated (hr={node.host_ref_counter})"

    # -- host pins (reference §3.13) ------------------------------------------------------------------
    def pin(self, node: TreeNode, mamba: bool) -> None:
        """Take one host pin on ``node`` (and its host state with ``mamba``): it leaves the
        host-leaf set (and its state the host LRU list, unless B5)."""
        node.protect_host()
        self.leaves.discard(node)
        if mamba:
            node.protect_host_mamba()
            if not self.old_leaf_rule:
                self.mamba_host_lru_list.discard(node)
        if self.events.active:
            self.events.emit(EventKind.PIN, f"pin #{node.id} (hr={node.host_ref_counter}, hmr={node.host_mamba_ref_counter})", (node.id,))

    def unpin(self, node: TreeNode, mamba: bool) -> None:
        """Release one pin taken by :meth:`pin`. An unpinned host state rejoins the host LRU list at
        its MRU end; an unpinned node may become a host leaf."""
        node.release_host()
        if mamba:
            node.release_host_mamba()
            if (node.host_mamba_ref_counter == 0 and node.mamba_host_value is not None
                    and not self.mamba_host_lru_list.in_list(node)):
                self.mamba_host_lru_list.insert_mru(node)
        if node.host_ref_counter == 0 and node.host_mamba_ref_counter == 0:
            self.refresh_leaf(node)
        if self.events.active:
            self.events.emit(EventKind.UNPIN, f"unpin #{node.id} (hr={node.host_ref_counter}, hmr={node.host_mamba_ref_counter})", (node.id,))
