"""The device tier's invariants: device KV and states, their locks, the device LRU lists, the
device-leaf set, the size counters and the device pools (reference §2).

:class:`DeviceRules` is handed every node by the one tree pass of
:func:`himamba.cache.invariants.check_invariants` (:meth:`DeviceRules.visit`: I2, I4, I5, I11 and,
on the device-only cache, I3) and collects what the whole-cache rules need; :meth:`DeviceRules.finish`
then checks I7 and I9 (the ``full`` and ``mamba`` lists), I8 (the device-leaf set), I10 (the size
counters) and POOL (device KV and states). Every rule is written here from the reference; none
asks the cache (its leaf test, its lists' admission rules) for the answer.
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


def _on_device(node: TreeNode) -> bool:
    return node.value is not None


def _has_device_state(node: TreeNode) -> bool:
    return node.mamba_value is not None


class DeviceRules:
    """The device rules of one check: :meth:`visit` per node, then :meth:`finish` once.

    ``only_tier``: the cache has no host tier, so a node without device KV holds KV nowhere (I3);
    on the tiered cache I3 is the host rules' business."""

    def __init__(self, cache, out: list[Violation], *, only_tier: bool) -> None:
        self.cache, self.out, self.only_tier = cache, out, only_tier
        self.root = root = cache.root_node
        self.kv: list[torch.Tensor] = []
        self.states: list[torch.Tensor] = []
        self.leaves: set[TreeNode] = set()
        self.kv_slots = self.full_evictable = self.full_protected = 0
        self.mamba_evictable = self.mamba_protected = 0
        if root.full_lock_ref != 1 or root.mamba_lock_ref != 1:
            out.append(Violation("I11", root.id, "root must keep full_lock_ref = mamba_lock_ref = 1"))

    def visit(self, n: TreeNode, parent: TreeNode, k: int) -> None:
        """The per-node device rules for ``n`` (``k`` tokens), reached from ``parent``."""
        out = self.out
        v, mv = n.value, n.mamba_value
        fl, ml = n.full_lock_ref, n.mamba_lock_ref
        # One size test per tensor: 8 bytes a slot. A tensor of another dtype or rank that
        # passes it is caught by the pool check's concatenation (see checks.check_pool).
        if v is not None:
            if v.nbytes != k << 3:
                out.append(shape_violation(n, "value", k))
            else:
                self.kv.append(v)
                self.kv_slots += k
            root = self.root
            if parent is not root and parent.value is None:
                out.append(Violation("I4", n.id, f"on device but parent #{parent.id} is not"))
            elif parent is not root and parent.full_lock_ref < fl:
                out.append(Violation("I11", n.id, f"full_lock_ref {fl} exceeds parent #{parent.id}'s {parent.full_lock_ref}"))
            if fl == 0:
                self.full_evictable += k
                for c in n.children.values():
                    if c.value is not None:
                        break
                else:
                    self.leaves.add(n)
            else:
                self.full_protected += k
        elif fl > 0:
            out.append(Violation("I11", n.id, f"full_lock_ref {fl} on a node whose KV is not on device"))
        if mv is not None:
            if mv.nbytes != 8:
                out.append(shape_violation(n, "mamba_value", 1))
            else:
                self.states.append(mv)
            if v is None:
                out.append(Violation("I5", n.id, "device state without device KV"))
            if ml == 0:
                self.mamba_evictable += 1
            else:
                self.mamba_protected += 1
        elif ml > 0:
            out.append(Violation("I11", n.id, f"mamba_lock_ref {ml} without a device state"))
        if fl < 0 or ml < 0:
            out.append(Violation("I11", n.id, f"negative lock (fl={fl}, ml={ml})"))
        if ml > fl:
            out.append(Violation("I11", n.id, f"mamba_lock_ref {ml} > full_lock_ref {fl}"))
        if v is None and self.only_tier:
            out.append(Violation("I3", n.id, "KV on no tier (evicted and not backed up) but still in the tree"))

    def finish(self, tree: TreeWalk, held_kv: int | None, held_states: int | None) -> None:
        """The whole-cache device rules, after every node was visited."""
        cache, out = self.cache, self.out
        check_lru(cache.full_lru_list, tree, _on_device, len(self.kv), out, root=self.root)
        # under lru_consumed a match moves only the state it consumed: the mamba list is in
        # consumption order, not in last-access order (I9 holds for the full list alone)
        state_time_order = not getattr(cache.policy_objects["eviction"], "consumed_only", False)
        check_lru(cache.mamba_lru_list, tree, _has_device_state, len(self.states), out, time_order=state_time_order)
        check_leaf_set(cache.evictable_full_device_leaves, self.leaves, "device", out)
        for label, have, want in (
            ("full_evictable_size_", cache.full_evictable_size_, self.full_evictable),
            ("full_protected_size_", cache.full_protected_size_, self.full_protected),
            ("mamba_evictable_size_", cache.mamba_evictable_size_, self.mamba_evictable),
            ("mamba_protected_size_", cache.mamba_protected_size_, self.mamba_protected),
        ):
            if have != want:
                out.append(Violation("I10", None, f"{label} is {have}, the tree holds {want}"))
        check_pool(out, "device KV", cache.kv_pool, self.kv, self.kv_slots, held_kv,
                   cache.full_evictable_size_ + cache.full_protected_size_, tree.nodes, "value")
        check_pool(out, "device state", cache.mamba_pool, self.states, len(self.states), held_states,
                   cache.mamba_evictable_size_ + cache.mamba_protected_size_, tree.nodes, "mamba_value")
