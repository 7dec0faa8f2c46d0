"""RadixCacheBase: the facade both caches share — SGLang's method names over composed parts.

A cache object holds its parts as public attributes (put together in :mod:`himamba.cache.build`):

* ``tree`` (:class:`~himamba.cache.tree.RadixTree`) — the nodes, no memory;
* ``device_tier`` (:class:`~himamba.cache.device_tier.DeviceTier`) — device pools, LRU lists,
  leaf set, counters, locks;
* ``lookup``, ``inserter``, ``eviction``, ``request_flow`` — the operations;
* ``policy_objects`` — the cascade rule, the write policy, the eviction policy.

Every public method checks its arguments (raising :class:`~himamba.errors.InvalidInputError`
with nothing changed) and hands the work to a part. The fields scripts read (``root_node``,
``kv_pool``, ``full_lru_list``, ``full_evictable_size_`` ...) are the parts' own, seen through
properties. Public operations are marked ``@operation`` so that recordings bracket them.

Size: over 300 lines because it is the public contract (SGLang's names, each with the docstring that
states what it changes); the work itself is in the parts, a few lines each here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from himamba.cache import build
from himamba.cache.alloc import allocate_or_make_room
from himamba.cache.config import CacheConfig
from himamba.cache.results import InsertResult, MatchResult, Request
from himamba.core.key import RadixKey, as_key
from himamba.core.lru import LRUList
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError
from himamba.memory import slot_ids
from himamba.memory.device import memory_bytes, resolve_device
from himamba.memory.pools import KVPool, MambaPool
from himamba.observe.display import Displayable
from himamba.observe.events import EventBus, operation
from himamba.observe.snapshot import take
from himamba.validate import check_allocation, check_count


def _tier_field(tier: str, name: str, doc: str) -> property:
    """A property reading (and, for damage in tests, writing) ``self.<tier>.<name>``."""
    def get(self):
        return getattr(getattr(self, tier), name)

    def put(self, value):
        setattr(getattr(self, tier), name, value)

    return property(get, put, doc=doc)


class RadixCacheBase(Displayable):
    """What :class:`MambaRadixCache` and :class:`HiMambaRadixCache` share: construction, the
    device operations and the fields scripts read. Build with a :class:`CacheConfig` or keyword
    overrides of one: ``MambaRadixCache(CacheConfig(page_size=4))`` or
    ``MambaRadixCache(page_size=4)``."""

    tiered = False

    def __init__(self, config: CacheConfig | None = None, **overrides: Any) -> None:
        self._operation_lock = threading.RLock()  # held by the thread running an operation (observe.events.operation)
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
        self.device_tier = tier = build.device_tier(config, self.device, self.events, self.tiered)
        # the device tier's pools and lists, never replaced: plain attributes (read on hot paths)
        self.kv_pool: KVPool = tier.kv_pool
        self.mamba_pool: MambaPool = tier.mamba_pool
        self.full_lru_list: LRUList = tier.full_lru_list
        self.mamba_lru_list: LRUList = tier.mamba_lru_list
        self.empty_indices = slot_ids.cat([torch.empty(0, dtype=torch.int64, device=self.device)])  # recorded: empty
        self._assemble()
        self._start_tree()

    def _check_memory(self, config: CacheConfig) -> None:
        """Refuse pools larger than the memory they would be allocated in (before allocating)."""
        check_allocation(config.device_bytes(), "the device pools", memory_bytes(self.device), f"device {self.device}")

    def _assemble(self) -> None:
        build.assemble(self)

    def _tiers(self) -> tuple:
        return (self.device_tier,)

    def _start_tree(self) -> None:
        for tier in self._tiers():
            tier.reset(self.tree.root)

    @operation("reset")
    def reset(self) -> None:
        """Free every slot the tree owns and start from an empty tree (ids restart at 0).
        Slots held by callers (requests) are not touched."""
        root = self.tree.root
        for node in self.tree.nodes():
            if node is not root:
                for tier in self._tiers():
                    tier.free_node(node)
        for tier in self._tiers():
            for lst in tier.lru_lists():
                for node in list(lst.nodes()):
                    lst.remove_node(node)
        self.tree.reset()
        self._start_tree()

    # -- fields of the parts, under the names scripts use ----------------------------------------
    evictable_full_device_leaves: set = _tier_field("device_tier", "leaves", "Evictable device leaves.")
    full_evictable_size_: int = _tier_field("device_tier", "full_evictable", "Device KV tokens in unlocked nodes.")
    full_protected_size_: int = _tier_field("device_tier", "full_protected", "Device KV tokens in locked nodes.")
    mamba_evictable_size_: int = _tier_field("device_tier", "mamba_evictable", "Device states unlocked.")
    mamba_protected_size_: int = _tier_field("device_tier", "mamba_protected", "Device states locked.")

    @property
    def root_node(self) -> TreeNode:
        return self.tree.root

    @property
    def _clock(self) -> float:
        return self.tree.clock

    @property
    def _next_id(self) -> int:
        return self.tree.next_id

    @property
    def _empty_indices(self) -> torch.Tensor:
        return self.empty_indices

    def tick(self) -> float:
        """The access clock: returns the current time, then advances it by 1.0."""
        return self.tree.tick()

    # -- tree walking ------------------------------------------------------------------------------
    def nodes(self) -> Iterator[TreeNode]:
        """Every node, root first, parents before children (depth first, children by insertion)."""
        return self.tree.nodes()

    def node_by_id(self, node_id: int) -> TreeNode:
        """The node with this id; raises KeyError when it is not in the tree."""
        return self.tree.node_by_id(node_id)

    def node_at(self, tokens) -> TreeNode | None:
        """The node whose edge ends exactly after ``tokens`` (a list or RadixKey), or ``None``.
        A pure lookup: no split, no LRU refresh, no retiming (unlike ``match_prefix``)."""
        return self.tree.node_at(tokens)

    def path_tokens(self, node: TreeNode) -> list[int]:
        """All tokens from the root down to the end of ``node``."""
        return self.tree.path_tokens(node)

    # -- lookup and insert -------------------------------------------------------------------------
    @operation("match_prefix")
    def match_prefix(self, key: RadixKey | Sequence[int], req: Request | None = None, cow_mamba: bool = False
                     ) -> MatchResult:
        """Longest usable cached prefix of ``key`` (on the tiered cache, across both tiers).

        Changes: may split the edge where the match ends; moves the usable node and its ancestors
        to the MRU end of both LRU lists and retimes them (the k-th ancestor gets ``t - k*1e-5``).
        With ``cow_mamba`` and a ``req``, copies the matched state into the request's state slot
        (allocating one, evicting states if needed, while the matched node is locked).
        Never frees memory except through that state eviction. Holds no locks afterwards.
        """
        return self.lookup.match_prefix(key, req, cow_mamba)

    @operation("insert")
    def insert(self, key: RadixKey | Sequence[int], value: torch.Tensor, mamba_value: torch.Tensor,
               prev_prefix_len: int = 0, chunked: bool = False) -> InsertResult:
        """Cache ``key`` with the request's device KV slots ``value`` and state slot ``mamba_value``.

        Contract: ``value`` holds one allocated device slot per token of ``key``; its first
        ``prev_prefix_len`` entries are slots the caller got from the tree (they are never freed).
        Changes: slots of tokens the tree already holds (past ``prev_prefix_len``) are freed; the
        remainder becomes a new leaf owning its slots and ``mamba_value``; or, when the key ends
        on a stateless node, that node adopts ``mamba_value``. Visited nodes are retimed and
        refreshed. When ``mamba_exist`` is returned the caller still owns ``mamba_value`` and
        must free it. ``chunked`` (a chunk of a chunked prefill) does not count a hit.
        Raises :class:`InvalidInputError`, changing nothing, for mismatched or unaligned input.
        """
        key = as_key(key)
        if mamba_value is None:
            raise InvalidInputError("mamba_value must be a 1-element int64 tensor naming a device state slot")
        walked, ids, state_ids = self.inserter.check_args(key, value, mamba_value, prev_prefix_len)
        if len(key) == 0:
            return InsertResult(0, True)
        return self.inserter.insert(key, value, mamba_value, prev_prefix_len, chunked, walked, ids, state_ids)

    # -- eviction ------------------------------------------------------------------------------------
    @operation("evict")
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` device KV tokens if unlocked leaves allow it.

        Leaves go in the eviction policy's order (LRU: oldest ``last_access_time`` first); a
        parent that becomes a leaf joins the queue. Returns the device tokens freed, cascade
        deletions included. Locked nodes are never touched.

        On the tiered cache under ``write_back`` a leaf is written to host first; when that write
        has to make host room, ``evict_host`` deletes host leaves and their cascade may delete
        device tombstones above them. Those device tokens leave the tree but are not in the
        count, as in SGLang 0.5.11 (its count adds the evicted leaves and their own cascades).
        """
        check_count(num_tokens, "evict(num_tokens)")
        return self.eviction.evict(num_tokens)

    @operation("evict_mamba")
    def evict_mamba(self, num_states: int) -> int:
        """Free up to ``num_states`` device state slots, least recently used first.

        An unlocked node with children only loses its state (it becomes a tombstone; its KV
        stays). A childless one is evicted as a whole leaf (KV too, then the cascade). Nodes with
        ``mamba_lock_ref > 0`` are skipped; so are childless nodes with ``full_lock_ref > 0``
        unless legacy B8 is on, which evicts them anyway and asserts as upstream does.
        Returns the states freed.
        """
        check_count(num_states, "evict_mamba(n)")
        return self.eviction.evict_mamba(num_states)

    # -- locks (reference §3.5) ------------------------------------------------------------------
    @operation("inc_lock_ref")
    def inc_lock_ref(self, node: TreeNode) -> int:
        """Lock ``node`` against eviction: its device state (if any) and the device KV of it and
        every ancestor. Moves newly locked sizes from evictable to protected.

        Returns ``delta`` <= 0: minus the device tokens that became protected.
        """
        self.tree.check_in_tree(node)
        return self.device_tier.lock(node)

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
        self.check_releasable(node)
        return self.device_tier.unlock(node)

    def check_releasable(self, node: TreeNode) -> None:
        """Raise unless ``node`` is in the tree and every device node on its path holds a lock the
        caller may release."""
        self.tree.check_in_tree(node)
        self.device_tier.check_releasable(node)

    def alloc_state(self, pool: MambaPool, evict, lock_node: TreeNode | None = None) -> torch.Tensor | None:
        """One slot of state pool ``pool``, evicting on shortage: when none is free, lock
        ``lock_node`` (if given, so that the eviction cannot take it), ``evict(1)``, retry. Returns
        the slot or ``None``. If the eviction raises, the lock is released (legacy B22 keeps it,
        as upstream's ``_alloc_with_evict`` does)."""
        return allocate_or_make_room(lambda: pool.alloc(1), evict, 1, self.device_tier, lock_node,
                                     release_on_error=self.release_lock_on_failed_eviction)

    # -- requests (reference §3.4) ------------------------------------------------------------------
    @operation("cache_finished_req")
    def cache_finished_req(self, req: Request, is_insert: bool = True) -> None:
        """Hand a finished request to the tree (see :class:`~himamba.cache.request_flow.RequestFlow`):
        its tokens are inserted (with ``is_insert``), the KV the tree does not own and the state
        slots it did not adopt are freed, and its lock is released. Afterwards the request owns
        nothing. Bad input raises before anything changes."""
        self.request_flow.cache_finished_req(req, is_insert)

    @operation("cache_unfinished_req")
    def cache_unfinished_req(self, req: Request, chunked: bool = False) -> None:
        """Insert the prefilled part of a running request and move its lock to the new last node
        (see :class:`~himamba.cache.request_flow.RequestFlow`). Bad input raises before anything
        changes."""
        self.request_flow.cache_unfinished_req(req, chunked)

    # -- sizes -------------------------------------------------------------------------------------
    def full_evictable_size(self) -> int:
        """Device KV tokens in unlocked nodes."""
        return self.device_tier.full_evictable

    def full_protected_size(self) -> int:
        """Device KV tokens in locked nodes."""
        return self.device_tier.full_protected

    def mamba_evictable_size(self) -> int:
        """Device states with ``mamba_lock_ref == 0``."""
        return self.device_tier.mamba_evictable

    def mamba_protected_size(self) -> int:
        """Device states with ``mamba_lock_ref > 0``."""
        return self.device_tier.mamba_protected

    def total_size(self) -> int:
        """Device KV tokens held by the tree."""
        return self.device_tier.full_evictable + self.device_tier.full_protected

    def num_nodes(self) -> int:
        """Nodes in the tree, root excluded."""
        return sum(1 for _ in self.tree.nodes()) - 1

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
