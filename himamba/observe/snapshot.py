"""Snapshot: an immutable, plain-Python picture of the whole cache at one instant.

No live nodes or tensors are referenced: a snapshot can be kept, compared, rendered, sent
to JSON and loaded back long after the cache has moved on. :func:`take` builds one in a single
walk of the tree (cheap enough for every step of trees with a few hundred nodes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from himamba.core.key import preview
from himamba.core.node import node_label, tier_text
from himamba.observe import subjects
from himamba.observe.display import Displayable

LRU_NAMES = ("full", "mamba", "host_mamba")


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as it was: ids, key, tiers, counters, leaf-set membership."""

    id: int
    parent: int | None
    children: tuple[int, ...]
    key: tuple[int, ...]
    start: int  # tokens from the root to the start of this edge
    kv_device: bool
    kv_host: bool
    state_device: bool
    state_host: bool
    full_lock_ref: int
    mamba_lock_ref: int
    host_ref_counter: int
    host_mamba_ref_counter: int
    hit_count: int
    last_access_time: float
    device_leaf: bool
    host_leaf: bool

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def kv_tier(self) -> str:
        return tier_text(self.kv_device, self.kv_host)

    @property
    def state_tier(self) -> str:
        return tier_text(self.state_device, self.state_host, state=True)

    @property
    def tombstone(self) -> bool:
        """KV on device but no device state."""
        return not self.is_root and not self.state_device

    @property
    def locked(self) -> bool:
        return not self.is_root and (self.full_lock_ref > 0 or self.mamba_lock_ref > 0)

    @property
    def pinned(self) -> bool:
        return self.host_ref_counter > 0 or self.host_mamba_ref_counter > 0

    @property
    def key_preview(self) -> str:
        return preview(self.key)

    def label(self) -> str:
        """``#3[4,5] KV=DH M=dh fl=1 ml=1 hr=0 hmr=0`` (as the live node's ``label()``)."""
        return node_label(self.id, self.key, self.kv_tier, self.state_tier, self.full_lock_ref, self.mamba_lock_ref,
                          self.host_ref_counter, self.host_mamba_ref_counter)


@dataclass(frozen=True)
class Snapshot(Displayable):
    """The whole cache state: nodes (root first, parents before children), the LRU orders
    (MRU -> LRU ids), sizes and counters, pool usage, transfers in flight, legacy switches."""

    nodes: tuple[NodeView, ...]
    lru: dict[str, tuple[int, ...]]
    counters: dict[str, int]
    pools: dict[str, tuple[int, int]]  # name -> (used, capacity)
    in_flight: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (what, node ids)
    legacy: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    clock: float = 0.0

    @cached_property
    def by_id(self) -> dict[int, NodeView]:
        return {n.id: n for n in self.nodes}

    def node(self, node_id: int) -> NodeView:
        return self.by_id[node_id]

    @property
    def root(self) -> NodeView:
        return self.nodes[0]

    def __len__(self) -> int:
        return len(self.nodes)

    def tree_text(self) -> str:
        """Indented labels, like ``cache.tree_text()``."""
        depth = {self.root.id: 0}
        lines = []
        for n in self.nodes:
            if n.parent is not None:
                depth[n.id] = depth[n.parent] + 1
            lines.append("  " * depth[n.id] + ("root" if n.is_root else n.label()))
        return "\n".join(lines)

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [asdict(n) for n in self.nodes],
            "lru": {k: list(v) for k, v in self.lru.items()},
            "counters": dict(self.counters),
            "pools": {k: list(v) for k, v in self.pools.items()},
            "in_flight": [[what, list(ids)] for what, ids in self.in_flight],
            "legacy": list(self.legacy),
            "settings": dict(self.settings),
            "clock": self.clock,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        nodes = tuple(
            NodeView(**{**n, "children": tuple(n["children"]), "key": tuple(n["key"])}) for n in data["nodes"]
        )
        return cls(
            nodes=nodes,
            lru={k: tuple(v) for k, v in data["lru"].items()},
            counters=dict(data["counters"]),
            pools={k: (int(v[0]), int(v[1])) for k, v in data["pools"].items()},
            in_flight=tuple((w, tuple(ids)) for w, ids in data["in_flight"]),
            legacy=tuple(data["legacy"]),
            settings=dict(data["settings"]),
            clock=float(data["clock"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        return cls.from_dict(json.loads(text))


def take(cache) -> Snapshot:
    """Snapshot a live cache (device-only or tiered, or a foreign subject registered in
    :mod:`himamba.observe.subjects`, such as a live SGLang cache)."""
    foreign = subjects.handler(cache, "snapshot")
    if foreign is not None:
        return foreign(cache)
    root = cache.root_node
    dleaves = cache.evictable_full_device_leaves
    hleaves = getattr(cache, "evictable_full_host_leaves", ())
    views = []
    stack = [(root, 0)]
    while stack:
        n, start = stack.pop()
        children = tuple(n.children.values())
        views.append(NodeView(
            n.id, None if n is root else n.parent.id, tuple(c.id for c in children), tuple(n.key.token_ids), start,
            n is not root and n.value is not None, n.host_value is not None,
            n.mamba_value is not None, n.mamba_host_value is not None,
            n.full_lock_ref, n.mamba_lock_ref, n.host_ref_counter, n.host_mamba_ref_counter,
            n.hit_count, n.last_access_time, n in dleaves, n in hleaves,
        ))
        end = start + len(n.key.token_ids)
        stack.extend((c, end) for c in reversed(children))
    lru = {"full": tuple(cache.full_lru_list.order()), "mamba": tuple(cache.mamba_lru_list.order())}
    pools = {"device KV": (cache.kv_pool.used_size(), cache.kv_pool.capacity),
             "device states": (cache.mamba_pool.used_size(), cache.mamba_pool.capacity)}
    counters = {
        "full_evictable_size": cache.full_evictable_size_, "full_protected_size": cache.full_protected_size_,
        "mamba_evictable_size": cache.mamba_evictable_size_, "mamba_protected_size": cache.mamba_protected_size_,
        "nodes": len(views) - 1,
    }
    in_flight: list[tuple[str, tuple[int, ...]]] = []
    settings = {"page_size": cache.page_size, "tiered": bool(getattr(cache, "tiered", False)),
                "cache": type(cache).__name__, "next_id": cache._next_id}
    if settings["tiered"]:
        lru["host_mamba"] = tuple(cache.mamba_host_lru_list.order())
        pools["host KV"] = (cache.host_kv_pool.used_size(), cache.host_kv_pool.capacity)
        pools["host states"] = (cache.host_mamba_pool.used_size(), cache.host_mamba_pool.capacity)
        counters["host_kv_tokens"] = sum(len(v.key) for v in views if v.kv_host)
        for ack in cache.cache_controller.in_flight():
            in_flight.append((f"{ack.kind} ack {ack.ack_id}", tuple(ack.node_ids)))
        for op_id, (node, _) in cache.ongoing_backup.items():
            in_flight.append((f"storage backup {op_id}", (node.id,)))
        for req_id, entry in cache.ongoing_prefetch.items():
            in_flight.append((f"prefetch {req_id}", (entry[0].id,)))
        settings.update(write_policy=cache.config.write_policy, cascade_rule=cache.config.cascade_rule)
    return Snapshot(tuple(views), lru, counters, pools, tuple(in_flight), tuple(sorted(cache.config.legacy)),
                    settings, cache._clock)


def diff(a: Snapshot, b: Snapshot) -> list[str]:
    """What changed from ``a`` to ``b``, one sentence per change (nodes added, deleted, fields
    changed, LRU orders, counters, pools)."""
    out = []
    for nid in sorted(b.by_id.keys() - a.by_id.keys()):
        out.append(f"node #{nid} added: {b.node(nid).label()}")
    for nid in sorted(a.by_id.keys() - b.by_id.keys()):
        out.append(f"node #{nid} deleted (was {a.node(nid).label()})")
    for nid in sorted(a.by_id.keys() & b.by_id.keys()):
        old, new = a.node(nid), b.node(nid)
        if old == new:
            continue
        changes = []
        for f in ("key", "kv_tier", "state_tier", "full_lock_ref", "mamba_lock_ref", "host_ref_counter",
                  "host_mamba_ref_counter", "hit_count", "last_access_time", "device_leaf", "host_leaf", "parent",
                  "children"):
            x, y = getattr(old, f), getattr(new, f)
            if x != y:
                if f == "key":
                    x, y = preview(x), preview(y)
                changes.append(f"{f} {x}→{y}")
        out.append(f"node #{nid}: " + ", ".join(changes))
    for name in sorted(set(a.lru) | set(b.lru)):
        if a.lru.get(name) != b.lru.get(name):
            out.append(f"{name} LRU: {lru_sentence(a.lru.get(name, ()), b.lru.get(name, ()))}")
    for name in sorted(set(a.counters) | set(b.counters)):
        if a.counters.get(name) != b.counters.get(name):
            out.append(f"{name}: {a.counters.get(name)} → {b.counters.get(name)}")
    for name in sorted(set(a.pools) | set(b.pools)):
        if a.pools.get(name) != b.pools.get(name):
            out.append(f"{name} pool used: {a.pools.get(name, (0, 0))[0]} → {b.pools.get(name, (0, 0))[0]}")
    return out


def moved_to_front(old: tuple[int, ...], new: tuple[int, ...]) -> int:
    """How many ids lead ``new`` before its longest tail that keeps the relative order those ids
    had in ``old``: ``new`` is ``new[:k]`` followed by ``old`` without ``new[:k]`` and without
    the ids that left. O(len)."""
    at = {nid: i for i, nid in enumerate(old)}
    k, last = len(new), len(old)
    while k > 0:
        pos = at.get(new[k - 1])
        if pos is None or pos >= last:
            break
        last, k = pos, k - 1
    return k


SHORT_LRU = 12  # lists up to this long are written out whole in diff sentences


def lru_sentence(old: tuple[int, ...], new: tuple[int, ...]) -> str:
    """How an LRU order changed: both orders when short (``[1, 2] → [2, 1]``), else what moved
    to the MRU end, what joined and what left (``#7, #3 to the MRU end; #9 left`` of 1,000)."""
    if max(len(old), len(new)) <= SHORT_LRU:
        return f"{list(old)} → {list(new)}"
    k = moved_to_front(old, new)
    kept = set(new)
    left = [nid for nid in old if nid not in kept]

    def ids(seq: list[int] | tuple[int, ...]) -> str:
        return ", ".join(f"#{i}" for i in seq[:8]) + (f" and {len(seq) - 8} more" if len(seq) > 8 else "")

    parts = [f"{ids(new[:k])} to the MRU end"] if k else []
    if left:
        parts.append(f"{ids(left)} left")
    return "; ".join(parts or ["reordered"]) + f" ({len(new)} nodes)"


def changed_nodes(a: Snapshot | None, b: Snapshot) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ids added or changed, ids deleted) from ``a`` to ``b`` (``a=None``: nothing changed)."""
    if a is None:
        return (), ()
    changed = tuple(n.id for n in b.nodes if a.by_id.get(n.id) != n)
    deleted = tuple(nid for nid in a.by_id if nid not in b.by_id)
    return changed, deleted
