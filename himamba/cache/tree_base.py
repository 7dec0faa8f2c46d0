"""TreeBase: the state both caches share and the primitives that keep it consistent.

Holds the pools, the root, the LRU lists, the evictable-leaf set, the size counters, the access
clock and the event bus, and implements what every algorithm needs: node creation and
detachment, device-leaf bookkeeping, and ``inc_lock_ref`` / ``dec_lock_ref`` (reference §3.5).

Nothing here decides *what* to evict; that lives in :mod:`himamba.cache.device_eviction`.

Size: over 300 lines because the primitives every algorithm uses (nodes, leaf set, locks, sizes) and
the state they keep consistent; a split would put a lock's bookkeeping far from the counters it
moves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from himamba.cache.config import CacheConfig
from himamba.core.key import RadixKey, as_key
from himamba.core.lru import LRUList
from himamba.core.node import TreeNode, full_lru_list, mamba_lru_list
from himamba.errors import CacheAssertionError, InvalidInputError, LockError
from himamba.memory import slot_ids
from himamba.memory.device import memory_bytes, resolve_device
from himamba.memory.pools import KVPool, MambaPool
from himamba.observe.display import Displayable
from himamba.observe.events import EventBus, EventKind, operation
from himamba.observe.snapshot import take
from himamba.validate import check_allocation


class TreeBase(Displayable):
    """Shared state and primitives of :class:`MambaRadixCache` and the tiered cache.

    Build with a :class:`CacheConfig` or keyword overrides of one:
    ``MambaRadixCache(CacheConfig(page_size=4))`` or ``MambaRadixCache(page_size=4)``.
    """

    def __init__(self, config: CacheConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = CacheConfig(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        if not isinstance(config, CacheConfig):
            raise InvalidInputError(f"config must be a CacheConfig, got {type(config).__name__}")
        self.config = config
        self.page_size = config.page_size
        self.device = resolve_device(config.device)
        self._check_memory(config)
        self.events = EventBus(owner=self)  # brackets the operations while anyone listens
        self.kv_pool = KVPool(config.model, config.device_kv_tokens, config.page_size, self.device)
        self.mamba_pool = MambaPool(config.model, config.device_mamba_slots, self.device)
        self.full_lru_list = full_lru_list()
        self.mamba_lru_list = mamba_lru_list()
        self._empty_indices = slot_ids.cat([torch.empty(0, dtype=torch.int64, device=self.device)])  # recorded: empty
        self._init_tree()

    def _check_memory(self, config: CacheConfig) -> None:
        """Refuse pools larger than the memory they would be allocated in (before allocating)."""
        check_allocation(config.device_bytes(), "the device pools", memory_bytes(self.device), f"device {self.device}")

    # -- construction / reset --------------------------------------------------------------------
    def _init_tree(self) -> None:
        self._next_id = 0
        self._clock = 0.0
        self.root_node = self._new_node(RadixKey([]), None)
        self.root_node.value = self._empty_indices
        self.root_node.full_lock_ref = 1
        self.root_node.mamba_lock_ref = 1
        self.evictable_full_device_leaves: set[TreeNode] = set()
        self.full_evictable_size_ = 0
        self.full_protected_size_ = 0
        self.mamba_evictable_size_ = 0
        self.mamba_protected_size_ = 0

    @operation("reset")
    def reset(self) -> None:
        """Free every slot the tree owns and start from an empty tree (ids restart at 0).

        Slots held by callers (requests) are not touched."""
        for node in self.nodes():
            self._free_node_memory(node)
        for lst in self._lru_lists():
            for node in list(lst.nodes()):
                lst.remove_node(node)
        self._init_tree()

    def _free_node_memory(self, node: TreeNode) -> None:
        if node is self.root_node:
            return
        if node.value is not None:
            self.kv_pool.free_owned(node.value)
        if node.mamba_value is not None:
            self.mamba_pool.free_owned(node.mamba_value)

    def _lru_lists(self) -> tuple[LRUList, ...]:
        return (self.full_lru_list, self.mamba_lru_list)

    def tick(self) -> float:
        """The access clock: returns the current time, then advances it by 1.0."""
        t = self._clock
        self._clock = t + 1.0
        return t

    def _new_node(self, key: RadixKey, parent: TreeNode | None) -> TreeNode:
        node = TreeNode(self._next_id, key, parent)
        self._next_id += 1
        return node

    # -- tree walking ------------------------------------------------------------------------------
    def nodes(self) -> Iterator[TreeNode]:
        """Every node, root first, parents before children (depth first, children by insertion)."""
        stack = [self.root_node]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    def node_by_id(self, node_id: int) -> TreeNode:
        """The node with this id; raises KeyError when it is not in the tree."""
        for node in self.nodes():
            if node.id == node_id:
                return node
        raise KeyError(f"no node #{node_id} in the tree")

    def node_at(self, tokens) -> TreeNode | None:
        """The node whose edge ends exactly after ``tokens`` (a list or RadixKey), or ``None``.

        A pure lookup: no split, no LRU refresh, no retiming (unlike ``match_prefix``)."""
        key = as_key(tokens)
        node, ps = self.root_node, self.page_size
        while len(key):
            child = node.children.get(key.child_key(ps)) if len(key) >= ps else None
            if child is None or len(child.key) > len(key) or child.key.match(key, ps) != len(child.key):
                return None
            node, key = child, key[len(child.key):]
        return node

    def path_tokens(self, node: TreeNode) -> list[int]:
        """All tokens from the root down to the end of ``node``."""
        parts = []
        while node is not None and node is not self.root_node:
            parts.append(node.key.token_ids)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    def _check_in_tree(self, node: TreeNode) -> None:
        """Raise InvalidInputError unless ``node`` is linked into this tree."""
        if not isinstance(node, TreeNode):
            raise InvalidInputError(f"expected a TreeNode, got {type(node).__name__}")
        ps = self.page_size
        root = self.root_node
        x = node
        while x is not root:
            parent, key = x.parent, x.key
            tokens = key.token_ids
            if (parent is None or not tokens or parent.children.get(
                    tokens[0] if ps == 1 and key.extra_key is None else key.child_key(ps)) is not x):
                raise InvalidInputError(f"node #{node.id} is not in this tree (it was deleted or belongs to another cache)")
            x = parent

    # -- structure primitives ----------------------------------------------------------------------
    def _detach(self, node: TreeNode) -> None:
        """Pop ``node`` from its parent's children (upstream's assertion when the key is absent).

        A detached node never returns to the tree, so its unchained LRU links drop their back
        reference to it: with no node <-> link cycle left, the node is freed as soon as nothing
        else holds it, instead of waiting for the cycle collector (which would walk its key's
        tokens once more first)."""
        ck = node.key.child_key(self.page_size)
        children = node.parent.children
        if ck not in children:
            raise CacheAssertionError(f"parent does not have child key, {ck!r} (node #{node.id})")
        del children[ck]
        for link in (node.full_link, node.mamba_link, node._host_mamba_link):
            if link is not None and link.prev is None:
                link.node = None

    # -- device leaf set (reference §1.5) -----------------------------------------------------
    def _is_device_leaf(self, node: TreeNode) -> bool:
        if node is self.root_node or node.value is None or node.full_lock_ref != 0:
            return False
        for child in node.children.values():  # noqa: SIM110 -- a plain loop: no generator on this hot path
            if child.value is not None:
                return False
        return True

    def _update_device_leaf_status(self, node: TreeNode) -> None:
        if self._is_device_leaf(node):
            self.evictable_full_device_leaves.add(node)
        else:
            self.evictable_full_device_leaves.discard(node)

    def _refresh_leaf_status(self, node: TreeNode) -> None:
        """Recompute every leaf-set membership of ``node`` after its structure changed."""
        self._update_device_leaf_status(node)

    # -- locks (reference §3.5) ------------------------------------------------------------------
    @operation("inc_lock_ref")
    def inc_lock_ref(self, node: TreeNode) -> int:
        """Lock ``node`` against eviction: its device state (if any) and the device KV of it and
        every ancestor. Moves newly locked sizes from evictable to protected.

        Returns ``delta`` <= 0: minus the device tokens that became protected.
        """
        self._check_in_tree(node)
        return self._inc_lock_ref(node)

    def _inc_lock_ref(self, node: TreeNode) -> int:
        root = self.root_node
        if node is root:
            return 0
        if node.mamba_value is not None:
            if node.mamba_lock_ref == 0:
                self.mamba_evictable_size_ -= 1
                self.mamba_protected_size_ += 1
            node.mamba_lock_ref += 1
        else:
            node.tombstone_lock_ref += 1
        delta = 0
        leaves = self.evictable_full_device_leaves
        x = node
        while x is not root:
            if x.value is not None:
                if x.full_lock_ref == 0:
                    n = len(x.key.token_ids)  # = len(x.value) (I2), without a tensor call
                    self.full_evictable_size_ -= n
                    self.full_protected_size_ += n
                    delta -= n
                    leaves.discard(x)
                x.full_lock_ref += 1
            else:
                x.evicted_lock_ref += 1
            x = x.parent
        if self.events.active:
            self.events.emit(EventKind.LOCK, f"lock #{node.id} and its ancestors (protected {-delta} tokens)", (node.id,))
        return delta

    @operation("dec_lock_ref")
    def dec_lock_ref(self, node: TreeNode) -> int:
        """Release one lock taken by :meth:`inc_lock_ref`. Nodes whose ``full_lock_ref`` reaches 0
        become evictable again (and may rejoin the device-leaf set). The state part is released
        only when ``node`` has a device state with ``mamba_lock_ref > 0`` (upstream HiMamba's
        tolerance), and locks that were taken while the node had no state are released first, so
        a state attached in between (an insert onto a tombstone, a load-back restore) is never
        unlocked by someone else's release; likewise a lock whose walk skipped a node with KV off
        device is not released from that node once its KV came back (hazard B10; legacy ``B10``
        restores upstream). Raises :class:`LockError`, changing nothing, if any device
        node on the path is not locked. Returns ``delta`` >= 0: tokens that became evictable."""
        self._check_releasable(node)
        return self._dec_lock_ref(node)

    def _check_releasable(self, node: TreeNode) -> None:
        """Raise unless ``node`` is in the tree and every device node on its path is locked."""
        self._check_in_tree(node)
        x = node
        while x is not self.root_node:
            if x.value is not None and x.full_lock_ref <= 0 and x.evicted_lock_ref == 0:
                raise LockError(f"dec_lock_ref(#{node.id}): node #{x.id} has full_lock_ref 0 (released more often than locked)")
            x = x.parent

    def _dec_lock_ref(self, node: TreeNode) -> int:
        root = self.root_node
        if node is root:
            return 0
        guard = not self.config.has_legacy("B10")
        if (not self.tiered and self.config.has_legacy("B21") and node.mamba_value is not None
                and node.mamba_lock_ref == 0 and not (guard and node.tombstone_lock_ref > 0)):
            raise CacheAssertionError(f"dec_lock_ref on node with node.mamba_lock_ref=0, node.id={node.id}")
        if node.tombstone_lock_ref > 0 and guard:
            node.tombstone_lock_ref -= 1
        elif node.mamba_value is not None and node.mamba_lock_ref > 0:
            if node.mamba_lock_ref == 1:
                self.mamba_evictable_size_ += 1
                self.mamba_protected_size_ -= 1
            node.mamba_lock_ref -= 1
        delta = 0
        x = node
        while x is not root:
            if x.evicted_lock_ref > 0 and (guard or x.value is None):
                x.evicted_lock_ref -= 1
            elif x.value is not None:
                if x.full_lock_ref == 1:
                    n = len(x.key.token_ids)  # = len(x.value) (I2)
                    self.full_evictable_size_ += n
                    self.full_protected_size_ -= n
                    delta += n
                x.full_lock_ref -= 1
                if x.full_lock_ref == 0:
                    self._update_device_leaf_status(x)
            x = x.parent
        if self.events.active:
            self.events.emit(EventKind.UNLOCK, f"unlock #{node.id} and its ancestors (released {delta} tokens)", (node.id,))
        return delta

    # -- state slots -------------------------------------------------------------------------------
    def _alloc_state(self, pool: MambaPool, evict, lock_node: TreeNode | None = None) -> torch.Tensor | None:
        """One slot of state pool ``pool``, evicting on shortage: when none is free, lock
        ``lock_node`` (if given, so that the eviction cannot take it), ``evict(1)``, retry, unlock.
        Returns the slot or ``None``. If the eviction raises, the lock is released (legacy B22
        keeps it, as upstream's ``_alloc_with_evict`` does)."""
        slot = pool.alloc(1)
        if slot is not None:
            return slot
        if lock_node is None:
            evict(1)
            return pool.alloc(1)
        self._inc_lock_ref(lock_node)
        if self.config.has_legacy("B22"):
            evict(1)
        else:
            try:
                evict(1)
            except BaseException:
                self._dec_lock_ref(lock_node)
                raise
        slot = pool.alloc(1)
        self._dec_lock_ref(lock_node)
        return slot

    # -- sizes -------------------------------------------------------------------------------------
    def full_evictable_size(self) -> int:
        """Device KV tokens in unlocked nodes."""
        return self.full_evictable_size_

    def full_protected_size(self) -> int:
        """Device KV tokens in locked nodes."""
        return self.full_protected_size_

    def mamba_evictable_size(self) -> int:
        """Device states with ``mamba_lock_ref == 0``."""
        return self.mamba_evictable_size_

    def mamba_protected_size(self) -> int:
        """Device states with ``mamba_lock_ref > 0``."""
        return self.mamba_protected_size_

    def total_size(self) -> int:
        """Device KV tokens held by the tree."""
        return self.full_evictable_size_ + self.full_protected_size_

    def num_nodes(self) -> int:
        """Nodes in the tree, root excluded."""
        return sum(1 for _ in self.nodes()) - 1

    # -- presentation ------------------------------------------------------------------------------
    def tree_text(self) -> str:
        """The tree as indented text, one node label per line (a snapshot's text)."""
        return take(self).tree_text()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(nodes={self.num_nodes()}, device_kv={self.total_size()}/"
            f"{self.kv_pool.capacity}, states={self.mamba_evictable_size_ + self.mamba_protected_size_}/"
            f"{self.mamba_pool.capacity}, page_size={self.page_size}, device={self.device})"
        )
