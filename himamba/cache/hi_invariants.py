"""The tiered cache's extra invariants: host lists and leaves, in-flight protection, contiguity,
the tolerant form of I6, and host pool accounting (reference §2, §1.4-1.6).

The per-node host rules run inside the one tree pass of :func:`himamba.cache.invariants._scan`;
this module checks what spans the whole cache, from what that pass collected.

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

from himamba.cache.invariants import TreeScan, Violation, _check_leaf_set, _check_lru, _check_pool
from himamba.core.node import TreeNode


def check_host_invariants(cache, scan: TreeScan, out: list[Violation]) -> None:
    """The whole-cache host rules, given the tree pass ``scan``; appends to ``out``."""
    legacy_b5 = cache.config.has_legacy("B5")
    # Members hold a host state and no pin on it (before the B5 fix: any host state). The host
    # LRU list's order is not time order (I9 covers the device lists only).
    _check_lru(cache.mamba_host_lru_list, scan, "mamba_host_value", scan.host_lru_members, out,
               time_order=False, unpinned=None if legacy_b5 else "host_mamba_ref_counter")
    have = cache.evictable_full_host_leaves
    _check_leaf_set(have, scan.host_leaves, "host", out)
    for n in have & cache.evictable_full_device_leaves:
        out.append(Violation("I8", n.id, "in both the device-leaf and the host-leaf set"))
    _check_in_flight(cache, scan.in_tree, out)
    prefetch = cache.ongoing_prefetch.values()
    prefetch_kv = [entry[2] for entry in prefetch]
    prefetch_states = [entry[4] for entry in prefetch if entry[4] is not None]
    host_kv = scan.host_kv + prefetch_kv if prefetch_kv else scan.host_kv
    host_states = scan.host_states + prefetch_states if prefetch_states else scan.host_states
    _check_pool(out, "host KV", cache.host_kv_pool, host_kv, scan.host_kv_slots + sum(t.shape[0] for t in prefetch_kv),
                0, None, scan.nodes, "host_value")
    _check_pool(out, "host state", cache.host_mamba_pool, host_states, len(host_states), 0, None, scan.nodes,
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
