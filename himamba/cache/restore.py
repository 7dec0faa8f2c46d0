"""restore: a live cache equal to a :class:`~himamba.observe.snapshot.Snapshot` — "what if, from
step k".

The cache is built from the snapshot's settings (kind, page size, write policy, cascade rule,
legacy switches; pool sizes from the pools' capacities) or from a given config, and then every
node is put back with its id, key, tiers, locks, pins, hit count and access time; the three LRU
lists take the recorded orders; the leaf sets and counters follow from the nodes (and are
checked against the snapshot); every slot receives the deterministic content of its tokens
(:mod:`himamba.memory.content`), so ``check_integrity`` holds too. The clock continues from the
snapshot's.

What a snapshot does not hold cannot come back: transfers in flight (restore a step after their
acks; a snapshot with any is refused), locks taken while a node was off the device (they are
folded into nothing), extra keys, and slot numbers (the restored slots are new ones).
"""

from __future__ import annotations

from typing import Any

import torch

from himamba.cache.config import CacheConfig
from himamba.cache.facade import RadixCacheBase
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.cache.mamba import MambaRadixCache
from himamba.core.key import RadixKey
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError
from himamba.memory.content import write_kv, write_state
from himamba.observe.snapshot import NodeView, Snapshot


def config_of(snapshot: Snapshot, **overrides: Any) -> CacheConfig:
    """The config a snapshot implies: its page size, policies, legacy switches and pool sizes."""
    s, pools = snapshot.settings, snapshot.pools
    fields: dict[str, Any] = {"device": "cpu", "page_size": s.get("page_size", 1), "legacy": frozenset(snapshot.legacy)}
    fields["device_kv_tokens"] = pools["device KV"][1]
    fields["device_mamba_slots"] = pools["device states"][1]
    if s.get("tiered"):
        fields["host_kv_tokens"] = pools["host KV"][1]
        fields["host_mamba_slots"] = pools["host states"][1]
        fields["write_policy"] = s.get("write_policy", "write_through")
        fields["cascade_rule"] = s.get("cascade_rule", "himamba")
    fields.update(overrides)
    return CacheConfig(**fields)


def restore(snapshot: Snapshot, config: CacheConfig | None = None) -> RadixCacheBase:
    """A live cache whose tree, tiers, counters, LRU orders and pool usage equal ``snapshot``'s
    (see the module docstring for what cannot come back). ``config`` overrides the one the
    snapshot implies (it must have the snapshot's kind of tiers and pools at least as large).
    Raises :class:`InvalidInputError` for a snapshot with transfers in flight."""
    if not isinstance(snapshot, Snapshot):
        raise InvalidInputError(f"restore needs a Snapshot (hm.take(cache) or a recorded step's), got {type(snapshot).__name__}")
    if snapshot.in_flight:
        what = ", ".join(w for w, _ in snapshot.in_flight[:4])
        raise InvalidInputError(f"restore: {len(snapshot.in_flight)} transfer(s) in flight ({what}); restore a step after their acks")
    tiered = bool(snapshot.settings.get("tiered"))
    config = config if config is not None else config_of(snapshot)
    cache = HiMambaRadixCache(config) if tiered else MambaRadixCache(config)
    _Builder(cache, snapshot).build()
    return cache


class _Builder:
    def __init__(self, cache: RadixCacheBase, snapshot: Snapshot) -> None:
        self.cache, self.snap = cache, snapshot
        self.made: dict[int, TreeNode] = {}

    def build(self) -> None:
        cache, snap = self.cache, self.snap
        tree = cache.tree
        root_view = snap.root
        self.made[root_view.id] = tree.root
        for view in snap.nodes:  # parents before children
            if view.id != root_view.id:
                self._node(view)
        tree.next_id = max(snap.settings.get("next_id", 0), max(self.made) + 1)
        tree.clock = snap.clock
        self._lists()
        self._locks_and_counters()
        for node in self.made.values():
            cache.eviction.refresh(node)
        self._check()

    def _node(self, view: NodeView) -> None:
        cache, tree = self.cache, self.cache.tree
        parent = self.made[view.parent]
        node = TreeNode(view.id, RadixKey(list(view.key)), parent)
        tree.attach(parent, node)
        self.made[view.id] = node
        path = tree.path_tokens(node)
        n = len(view.key)
        if view.kv_device:
            node.value = self._slots(cache.kv_pool, n, "device KV")
            write_kv(cache.kv_pool, node.value, list(view.key), view.start)
        if view.kv_host:
            node.host_value = self._slots(cache.host_kv_pool, n, "host KV", owned=False)
            write_kv(cache.host_kv_pool, node.host_value, list(view.key), view.start)
        if view.state_device:
            node.mamba_value = self._slots(cache.mamba_pool, 1, "device state").view(1)
            write_state(cache.mamba_pool, node.mamba_value, path)
        if view.state_host:
            node.mamba_host_value = self._slots(cache.host_mamba_pool, 1, "host state", owned=False).view(1)
            write_state(cache.host_mamba_pool, node.mamba_host_value, path)
        node.host_ref_counter = view.host_ref_counter
        node.host_mamba_ref_counter = view.host_mamba_ref_counter
        node.hit_count = view.hit_count
        node.last_access_time = view.last_access_time

    @staticmethod
    def _slots(pool, n: int, what: str, owned: bool = True) -> torch.Tensor:
        """``n`` slots of ``pool``; device slots are marked as the tree's (host slots stay as the
        transfer controller leaves the ones it allocates)."""
        slots = pool.alloc(n)
        if slots is None:
            raise InvalidInputError(f"restore: the {what} pool is too small for the snapshot's tree")
        if owned:
            pool.allocator.mark_owned(pool.allocator.host_ids(slots))
        return slots

    def _lists(self) -> None:
        cache, made = self.cache, self.made
        lists = {"full": cache.full_lru_list, "mamba": cache.mamba_lru_list}
        if cache.tiered:
            lists["host_mamba"] = cache.mamba_host_lru_list
        for name, lst in lists.items():
            for node_id in reversed(self.snap.lru.get(name, ())):  # recorded MRU first
                lst.insert_mru(made[node_id])

    def _locks_and_counters(self) -> None:
        """Lock counts as recorded; the device tier's counters from them (I10)."""
        tier = self.cache.device_tier
        for view in self.snap.nodes:
            node = self.made[view.id]
            if node is self.cache.tree.root:
                continue
            node.full_lock_ref = view.full_lock_ref
            node.mamba_lock_ref = view.mamba_lock_ref
            if node.value is not None:
                n = len(view.key)
                if node.full_lock_ref:
                    tier.full_protected += n
                else:
                    tier.full_evictable += n
            if node.mamba_value is not None:
                if node.mamba_lock_ref:
                    tier.mamba_protected += 1
                else:
                    tier.mamba_evictable += 1

    def _check(self) -> None:
        """The recorded counters and leaf sets must be what the restored nodes give."""
        snap, cache = self.snap, self.cache
        for name, attr in (("full_evictable_size", "full_evictable_size_"), ("full_protected_size", "full_protected_size_"),
                           ("mamba_evictable_size", "mamba_evictable_size_"), ("mamba_protected_size", "mamba_protected_size_")):
            if name in snap.counters and snap.counters[name] != getattr(cache, attr):
                raise InvalidInputError(f"restore: the snapshot's {name} ({snap.counters[name]}) disagrees with its "
                                        f"nodes ({getattr(cache, attr)}): it is not a consistent state")
