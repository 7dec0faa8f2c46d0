"""The tiered cache's extra invariants: host lists and leaves, in-flight protection, contiguity,
the tolerant form of I6, and host pool accounting (reference §2, §1.4-1.6).

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
"""

from __future__ import annotations

from himamba.cache.invariants import Violation, _check_lru, _check_pool
from himamba.core.node import TreeNode


def check_host_invariants(cache, nodes: list[TreeNode], out: list[Violation]) -> None:
    root = cache.root_node
    legacy_b5 = cache.config.has_legacy("B5")
    in_tree = {n.id: n for n in nodes}
    host_lru_members = [
        n for n in nodes if n.mamba_host_value is not None and (n.host_mamba_ref_counter == 0 or legacy_b5)
    ]
    _check_lru_membership_only(cache, host_lru_members, out)
    want_leaves = {n for n in nodes if cache._is_host_leaf(n)}
    have = cache.evictable_full_host_leaves
    for n in have - want_leaves:
        out.append(Violation("I8", n.id, "in the host-leaf set but not an unpinned childless host-only node"))
    for n in want_leaves - have:
        out.append(Violation("I8", n.id, "an unpinned childless host-only node missing from the host-leaf set"))
    for n in have & cache.evictable_full_device_leaves:
        out.append(Violation("I8", n.id, "in both the device-leaf and the host-leaf set"))
    through = cache.config.write_policy != "write_back"
    for n in nodes:
        if n is root:
            continue
        if n.mamba_host_value is not None and n.host_value is None and n.value is None:
            out.append(Violation("I3", n.id, "host state on a node without KV"))
        if n.host_ref_counter < 0 or n.host_mamba_ref_counter < 0:
            out.append(Violation("I11", n.id, "negative host pin"))
        if (not n.children and n.mamba_value is None and n.mamba_host_value is None
                and n not in cache.evictable_full_device_leaves and n not in have
                and n.full_lock_ref == 0 and n.host_ref_counter == 0 and n.host_mamba_ref_counter == 0):
            out.append(Violation("I6", n.id, "childless full tombstone that no eviction can reach (in no leaf set, not held)"))
        if through and n.host_value is not None and n.parent is not root and n.parent.host_value is None:
            out.append(Violation("I13", n.id, f"backed up but parent #{n.parent.id} is not"))
    _check_in_flight(cache, in_tree, out)
    prefetch_kv = [entry[2] for entry in cache.ongoing_prefetch.values()]
    prefetch_states = [entry[4] for entry in cache.ongoing_prefetch.values() if entry[4] is not None]
    _check_pool(out, "host KV", cache.host_kv_pool,
                [n.host_value for n in nodes if n.host_value is not None and n is not root] + prefetch_kv,
                0, sum(n.host_value.shape[0] for n in nodes if n.host_value is not None and n is not root)
                + sum(t.shape[0] for t in prefetch_kv))
    _check_pool(out, "host state", cache.host_mamba_pool,
                [n.mamba_host_value for n in nodes if n.mamba_host_value is not None] + prefetch_states,
                0, sum(1 for n in nodes if n.mamba_host_value is not None) + len(prefetch_states))


def _check_lru_membership_only(cache, members: list[TreeNode], out: list[Violation]) -> None:
    """I7 for the host LRU list. Its order is not time order (I9 covers device lists only)."""
    found: list[Violation] = []
    _check_lru(cache, cache.mamba_host_lru_list, members, found)
    out.extend(v for v in found if v.invariant != "I9")


def _check_in_flight(cache, in_tree: dict[int, TreeNode], out: list[Violation]) -> None:
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
    held = {**cache.ongoing_write_through, **cache.ongoing_load_back}
    held.update({node.id: node for node, _ in cache.ongoing_backup.values()})
    held.update({entry[0].id: entry[0] for entry in cache.ongoing_prefetch.values()})
    for node_id, node in held.items():
        if node is not cache.root_node and in_tree.get(node_id) is not node:
            out.append(Violation("I12", node_id, "a node in flight (locked or pinned) is no longer in the tree"))
    for ack in cache.cache_controller.in_flight():
        for node_id in ack.node_ids:
            node = held.get(node_id)
            if node is None:
                out.append(Violation("I12", node_id, f"{ack.kind} ack {ack.ack_id} names a node that is not tracked in flight"))
            elif node.full_lock_ref <= 0 and node.host_ref_counter <= 0 and cache.config.write_policy != "write_back":
                out.append(Violation("I12", node_id, f"{ack.kind} ack {ack.ack_id} in flight but the node is neither locked nor pinned"))
