"""DeviceTier: what lives on the device — the KV and state pools, the full and mamba LRU lists,
the evictable-leaf set, the four size counters — and the primitives every path uses on them:
adopt and drop KV, adopt and drop a state, the leaf test, and the lock walks (reference §3.5).

Each bookkeeping sequence is written here once: a node that gains device KV joins the full LRU
list and the evictable count; one that loses it leaves both (and the leaf set); likewise for a
device state and the mamba list. The tier knows nothing of the host: what a host tier adds, the
cache composes around these primitives.

Size: over 300 lines because the lock walks move the very counters and leaf set that adopt and
drop keep; apart, a reader would lose the rule that every device token is counted exactly once.
"""

from __future__ import annotations

import numpy as np
import torch

from himamba.cache.words import count
from himamba.core.node import TreeNode, full_lru_list, mamba_lru_list
from himamba.errors import CacheAssertionError, LockError
from himamba.memory import slot_ids
from himamba.memory.pools import KVPool, MambaPool
from himamba.observe.events import EventBus, EventKind


class DeviceTier:
    """The device half of a cache. ``root`` is the tree's root (never listed, never a leaf).

    Variants fixed at construction (see :mod:`himamba.cache.legacy`):
    ``guard_lock_release`` (off with legacy B10), ``strict_release`` (the device tree's
    assertion of legacy B21), ``tolerant_unlist`` (legacy B18: a node losing its state or being
    demoted may already be out of the lists).
    """

    def __init__(self, kv_pool: KVPool, mamba_pool: MambaPool, events: EventBus, *,
                 guard_lock_release: bool = True, strict_release: bool = False,
                 tolerant_unlist: bool = False) -> None:
        self.kv_pool = kv_pool
        self.mamba_pool = mamba_pool
        self.events = events
        self.full_lru_list = full_lru_list()
        self.mamba_lru_list = mamba_lru_list()
        self.guard_lock_release = guard_lock_release
        self.strict_release = strict_release
        self.tolerant_unlist = tolerant_unlist
        self.split_moves_state = True  # off under eviction lru_consumed (splits leave the mamba list alone)
        self.root: TreeNode | None = None
        self.leaves: set[TreeNode] = set()
        self.full_evictable = self.full_protected = self.mamba_evictable = self.mamba_protected = 0

    def reset(self, root: TreeNode) -> None:
        """Empty leaf set and counters for a new tree under ``root`` (the lists must be empty)."""
        self.root = root
        self.leaves = set()
        self.full_evictable = self.full_protected = self.mamba_evictable = self.mamba_protected = 0

    def lru_lists(self) -> tuple:
        return (self.full_lru_list, self.mamba_lru_list)

    def free_node(self, node: TreeNode) -> None:
        """Return every device slot ``node`` owns to its pool (for ``reset``: nothing else moves)."""
        if node.value is not None:
            self.kv_pool.free_owned(node.value)
        if node.mamba_value is not None:
            self.mamba_pool.free_owned(node.mamba_value)

    # -- the evictable-leaf set (reference §1.5) ---------------------------------------------------
    def is_leaf(self, node: TreeNode) -> bool:
        """An evictable device leaf: device KV, unlocked, no child with device KV."""
        if node is self.root or node.value is None or node.full_lock_ref != 0:
            return False
        for child in node.children.values():  # noqa: SIM110 -- a plain loop: no generator on this hot path
            if child.value is not None:
                return False
        return True

    def refresh_leaf(self, node: TreeNode) -> None:
        if self.is_leaf(node):
            self.leaves.add(node)
        else:
            self.leaves.discard(node)

    def forget(self, node: TreeNode) -> None:
        """``node`` leaves the tree: it is no leaf of this tier any more."""
        self.leaves.discard(node)

    def split(self, upper: TreeNode, child: TreeNode, n: int) -> None:
        """After ``tree.split_edge``: the upper node takes the first ``n`` KV slots of ``child``
        and a copy of its ``full_lock_ref`` (so every outstanding release stays balanced); both
        move to the MRU end of the full list, upper first; ``child`` keeps its place in the
        mamba list but is re-listed at its MRU end (as upstream; not under ``lru_consumed``)."""
        upper.full_lock_ref = child.full_lock_ref
        on_device = child.value is not None
        if on_device:
            upper.value = child.value[:n]
            child.value = child.value[n:]
            self.full_lru_list.remove_node(child)
        moves_state = child.mamba_value is not None and self.split_moves_state
        if moves_state:
            self.mamba_lru_list.remove_node(child)
        if on_device:
            self.full_lru_list.insert_mru(upper)
            self.full_lru_list.insert_mru(child)
        if moves_state:
            self.mamba_lru_list.insert_mru(child)

    # -- KV -------------------------------------------------------------------------------------------
    def adopt_kv(self, node: TreeNode, value: torch.Tensor, ids: np.ndarray, start: int = 0) -> int:
        """``node`` takes the caller's device KV slots ``value[start:]`` (host ids ``ids``): the tree
        owns them from now on. Returns the tokens gained."""
        kv = self.kv_pool.allocator
        node.value = slot_ids.own_copy(value, ids, start, host_memory=kv.reads_tensor_memory)
        kv.mark_owned(ids[start:])
        return self.gain_kv(node, by_time=False)

    def gain_kv(self, node: TreeNode, by_time: bool) -> int:
        """``node.value`` was just set to slots the tree owns: list and count it (at the MRU end,
        or ``by_time`` at the place its access time gives). Returns the tokens gained."""
        if by_time:
            self.full_lru_list.insert_by_time(node)
        else:
            self.full_lru_list.insert_mru(node)
        n = len(node.key.token_ids)  # = len(node.value) (I2), without a tensor call
        self.full_evictable += n
        return n

    def drop_kv(self, node: TreeNode, clear: bool, tolerant: bool = False) -> int:
        """Free ``node``'s device KV: uncount it, unlist it, drop it from the leaf set. ``clear``
        sets ``node.value`` to None (a demotion; a deleted node keeps it, as upstream);
        ``tolerant`` accepts a node already out of the full list. Returns the tokens freed."""
        value = node.value
        n = value.shape[0]
        self.kv_pool.free_owned(value)
        if node.full_lock_ref == 0:
            self.full_evictable -= n
        else:
            self.full_protected -= n
        if tolerant:
            self.full_lru_list.discard(node)
        else:
            self.full_lru_list.remove_node(node)
        self.leaves.discard(node)
        if clear:
            node.value = None
        return n

    # -- states ----------------------------------------------------------------------------------
    def adopt_state(self, node: TreeNode, mamba_value: torch.Tensor, state_ids: np.ndarray) -> None:
        """``node`` takes the caller's device state slot (host ids ``state_ids``)."""
        states = self.mamba_pool.allocator
        node.mamba_value = slot_ids.own_copy(mamba_value, state_ids, 0, host_memory=states.reads_tensor_memory)
        states.mark_owned(state_ids)
        self.gain_state(node, by_time=False)

    def gain_state(self, node: TreeNode, by_time: bool) -> None:
        """``node.mamba_value`` was just set to a slot the tree owns: list and count it."""
        if by_time:
            self.mamba_lru_list.insert_by_time(node)
        else:
            self.mamba_lru_list.insert_mru(node)
        self.mamba_evictable += 1

    def drop_state(self, node: TreeNode) -> bool:
        """Free ``node``'s device state (if any): uncount it, clear its lock, unlist it. Returns
        whether there was one. Its KV stays."""
        if node.mamba_value is None:
            return False
        self.mamba_pool.free_owned(node.mamba_value)
        if node.mamba_lock_ref == 0:
            self.mamba_evictable -= 1
        else:
            self.mamba_protected -= 1
        node.mamba_lock_ref = 0
        if self.tolerant_unlist:
            self.mamba_lru_list.discard(node)
        else:
            self.mamba_lru_list.remove_node(node)
        node.mamba_value = None
        return True

    # -- locks (reference §3.5) ----------------------------------------------------------------------
    def lock(self, node: TreeNode) -> int:
        """Lock ``node``'s device state (or, on a tombstone, count a tombstone lock) and the device
        KV of it and every ancestor (an ancestor with KV off device counts an evicted lock).
        Returns ``delta`` <= 0: minus the device tokens that became protected."""
        root = self.root
        if node is root:
            return 0
        if node.mamba_value is not None:
            if node.mamba_lock_ref == 0:
                self.mamba_evictable -= 1
                self.mamba_protected += 1
            node.mamba_lock_ref += 1
        else:
            node.tombstone_lock_ref += 1
        delta = 0
        leaves = self.leaves
        x = node
        while x is not root:
            if x.value is not None:
                if x.full_lock_ref == 0:
                    n = len(x.key.token_ids)  # = len(x.value) (I2), without a tensor call
                    self.full_evictable -= n
                    self.full_protected += n
                    delta -= n
                    leaves.discard(x)
                x.full_lock_ref += 1
            else:
                x.evicted_lock_ref += 1
            x = x.parent
        if self.events.active:
            self.events.emit(EventKind.LOCK, f"lock #{node.id} and its ancestors (protected {count(-delta, 'token')})", (node.id,))
        return delta

    def check_releasable(self, node: TreeNode) -> None:
        """Raise LockError unless every device node on ``node``'s path is locked."""
        x = node
        while x is not self.root:
            if x.value is not None and x.full_lock_ref <= 0 and x.evicted_lock_ref == 0:
                raise LockError(f"dec_lock_ref(#{node.id}): node #{x.id} has full_lock_ref 0 (released more often than locked)")
            x = x.parent

    def unlock(self, node: TreeNode) -> int:
        """Release one lock taken by :meth:`lock`. Locks taken while the node had no state are
        released first (so a state attached since is not unlocked by someone else's release), and
        so are evicted locks on nodes whose KV came back (hazard B10; ``guard_lock_release``
        off restores upstream). Returns ``delta`` >= 0: tokens that became evictable."""
        root = self.root
        if node is root:
            return 0
        guard = self.guard_lock_release
        if (self.strict_release and node.mamba_value is not None and node.mamba_lock_ref == 0
                and not (guard and node.tombstone_lock_ref > 0)):
            raise CacheAssertionError(f"dec_lock_ref on node with node.mamba_lock_ref=0, node.id={node.id}")
        if node.tombstone_lock_ref > 0 and guard:
            node.tombstone_lock_ref -= 1
        elif node.mamba_value is not None and node.mamba_lock_ref > 0:
            if node.mamba_lock_ref == 1:
                self.mamba_evictable += 1
                self.mamba_protected -= 1
            node.mamba_lock_ref -= 1
        delta = 0
        x = node
        while x is not root:
            if x.evicted_lock_ref > 0 and (guard or x.value is None):
                x.evicted_lock_ref -= 1
            elif x.value is not None:
                if x.full_lock_ref == 1:
                    n = len(x.key.token_ids)  # = len(x.value) (I2)
                    self.full_evictable += n
                    self.full_protected -= n
                    delta += n
                x.full_lock_ref -= 1
                if x.full_lock_ref == 0:
                    self.refresh_leaf(x)
            x = x.parent
        if self.events.active:
            self.events.emit(EventKind.UNLOCK, f"unlock #{node.id} and its ancestors (released {count(delta, 'token')})", (node.id,))
        return delta
