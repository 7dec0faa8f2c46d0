"""The host tier's invariants: host KV and states, host pins, the host LRU list and host-leaf
set, in-flight protection, contiguity and the host pools (reference §2, §1.4-1.6).

:class:`HostRules` is handed every node by the one tree pass of
:func:`himamba.cache.invariants.check_invariants`, right after the device rules
(:meth:`HostRules.visit`: I2 and I11 on the host fields, I3, I6, I13) and collects what the
whole-cache rules need; :meth:`HostRules.finish` then checks:

* **I6** (tolerant form): a childless non-root node with no state on any tier must be on its
  way out: in a leaf set (ordinary eviction will take it), or locked or pinned (the cascade
  stopped there and the release will make it a leaf). Under the unified cascade rule such nodes
  are the normal case and are only required to be in a leaf set or held.
* **I7/I8** host LRU membership (nodes with a host state and no host-state pin) and the
  host-leaf set (evicted, backed up, unpinned, childless).
* **I12** in-flight protection: write-through and load-back nodes are full-locked; storage
  backups and prefetch anchors are host-pinned; no pinned node is detached from the tree; every
  node named by an ack in flight is locked or pinned.
* **I13** contiguity under the write-through policies: a backed-up node's parent is root or
  backed up.
* **POOL** host KV and host states: owned once, allocated, and free + tree + in-flight prefetch
  slots = capacity.

The rules are written here from the reference, the legacy ``B5`` forms included; none asks the
cache (its leaf test, its lists' admission rules) for the answer.
"""

from __future__ import annotations

import torch

from himamba.cache.checks import (
    TreeWalk,
    Violation,
    check_leaf_set,
    check_lru,
    check_pool,
    shape_violation,
)
from himamba.core.node import TreeNode


def _b5_host_leaf(n: TreeNode) -> bool:
    """Legacy ``B5``'s host-leaf test for an evicted, backed-up node: no host pin and no child
    that is evicted and backed up (host-state pins and other children do not count)."""
    if n.host_ref_counter != 0:
        return False
    return not any(c.value is None and c.host_value is not None for c in n.children.values())


def _unpinned_host_state(n: TreeNode) -> bool:
    return n.mamba_host_value is not None and n.host_mamba_ref_counter == 0


def _host_state(n: TreeNode) -> bool:
    return n.mamba_host_value is not None


class HostRules:
    """The host rules of one check: :meth:`visit` per node, then :meth:`finish` once."""

    def __init__(self, cache, out: list[Violation]) -> None:
        self.cache, self.out = cache, out
        self.root = cache.root_node
        self.legacy_b5 = cache.config.has_legacy("B5")
        self.through = cache.config.write_policy != "write_back"
        self.device_leaves = cache.evictable_full_device_leaves
        self.host_leaf_set = cache.evictable_full_host_leaves
        self.kv: list[torch.Tensor] = []
        self.states: list[torch.Tensor] = []
        self.leaves: set[TreeNode] = set()
        self.kv_slots = self.lru_members = 0

    def visit(self, n: TreeNode, parent: TreeNode, k: int) -> None:
        """The per-node host rules for ``n`` (``k`` tokens), reached from ``parent``."""
        out = self.out
        v, hv, mh = n.value, n.host_value, n.mamba_host_value
        hr, hmr = n.host_ref_counter, n.host_mamba_ref_counter
        if hv is not None:
            if hv.nbytes != k << 3:
                out.append(shape_violation(n, "host_value", k))
            else:
                self.kv.append(hv)
                self.kv_slots += k
            if self.through and parent is not self.root and parent.host_value is None:
                out.append(Violation("I13", n.id, f"backed up but parent #{parent.id} is not"))
            if v is None and (_b5_host_leaf(n) if self.legacy_b5 else (hr == 0 and hmr == 0 and not n.children)):
                self.leaves.add(n)
        elif v is None:
            out.append(Violation("I3", n.id, "KV on no tier (evicted and not backed up) but still in the tree"))
        if mh is not None:
            if mh.nbytes != 8:
                out.append(shape_violation(n, "mamba_host_value", 1))
            else:
                self.states.append(mh)
            if hv is None and v is None:
                out.append(Violation("I3", n.id, "host state on a node without KV"))
            if hmr == 0 or self.legacy_b5:
                self.lru_members += 1
        elif (n.mamba_value is None and not n.children and n.full_lock_ref == 0 and hr == 0 and hmr == 0
              and n not in self.device_leaves and n not in self.host_leaf_set):
            out.append(Violation("I6", n.id, "childless full tombstone that no eviction can reach (in no leaf set, not held)"))
        if hr < 0 or hmr < 0:
            out.append(Violation("I11", n.id, "negative host pin"))

    def finish(self, tree: TreeWalk) -> None:
        """The whole-cache host rules, after every node was visited."""
        cache, out = self.cache, self.out
        # Members hold a host state and no pin on it (before the B5 fix: any host state). The host
        # LRU list's order is not time order (I9 covers the device lists only).
        check_lru(cache.mamba_host_lru_list, tree, _host_state if self.legacy_b5 else _unpinned_host_state,
                  self.lru_members, out, time_order=False)
        have = self.host_leaf_set
        check_leaf_set(have, self.leaves, "host", out)
        for n in have & self.device_leaves:
            out.append(Violation("I8", n.id, "in both the device-leaf and the host-leaf set"))
        _check_in_flight(cache, tree.in_tree, out)
        prefetch = cache.ongoing_prefetch.values()
        prefetch_kv = [entry[2] for entry in prefetch]
        prefetch_states = [entry[4] for entry in prefetch if entry[4] is not None]
        host_kv = self.kv + prefetch_kv if prefetch_kv else self.kv
        host_states = self.states + prefetch_states if prefetch_states else self.states
        check_pool(out, "host KV", cache.host_kv_pool, host_kv, self.kv_slots + sum(t.shape[0] for t in prefetch_kv),
                   0, None, tree.nodes, "host_value")
        check_pool(out, "host state", cache.host_mamba_pool, host_states, len(host_states), 0, None, tree.nodes,
                   "mamba_host_value")


def _check_in_flight(cache, in_tree: set[TreeNode], out: list[Violation]) -> None:
    """I12: everything a transfer or storage operation is working on is protected."""
    through = cache.config.write_policy != "write_back"
    for node_id, node in cache.ongoing_write_through.items():
        if through and node.full_lock_ref <= 0:
            out.append(Violation("I12", node_id, "write-through in flight but the node is not locked"))
    for node_id, node in cache.ongoing_load_back.items():
        if node.full_lock_ref <= 0:
            out.append(Violation("I12", node_id, "load-back in flight but the node is not locked"))
    for op_id, (node, mamba_pinned) in cache.ongoing_backup.items():
        if node.host_ref_counter <= 0 or (mamba_pinned and node.host_mamba_ref_counter <= 0):
            out.append(Violation("I12", node.id, f"storage backup {op_id} in flight but the node is not pinned"))
    for req_id, entry in cache.ongoing_prefetch.items():
        anchor = entry[0]
        if anchor.host_ref_counter <= 0:
            out.append(Violation("I12", anchor.id, f"prefetch anchor of {req_id!r} is not pinned"))
    acks = cache.cache_controller.in_flight()
    if not (cache.ongoing_write_through or cache.ongoing_load_back or cache.ongoing_backup
            or cache.ongoing_prefetch or acks):
        return
    held = {**cache.ongoing_write_through, **cache.ongoing_load_back}
    held.update({node.id: node for node, _ in cache.ongoing_backup.values()})
    held.update({entry[0].id: entry[0] for entry in cache.ongoing_prefetch.values()})
    for node_id, node in held.items():
        if node is not cache.root_node and node not in in_tree:
            out.append(Violation("I12", node_id, "a node in flight (locked or pinned) is no longer in the tree"))
    for ack in acks:
        for node_id in ack.node_ids:
            node = held.get(node_id)
            if node is None:
                out.append(Violation("I12", node_id, f"{ack.kind} ack {ack.ack_id} names a node that is not tracked in flight"))
            elif node.full_lock_ref <= 0 and node.host_ref_counter <= 0 and cache.config.write_policy != "write_back":
                out.append(Violation("I12", node_id, f"{ack.kind} ack {ack.ack_id} in flight but the node is neither locked nor pinned"))
