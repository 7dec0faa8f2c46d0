"""The lens on SGLang 0.5.23's ``UnifiedRadixCache`` (components FULL and MAMBA), on either tree
core: live object to :class:`~himamba.observe.snapshot.Snapshot`.

How the components map onto the eight counters the views show: FULL ``value`` / ``host_value``
are the KV tiers, MAMBA ``value`` / ``host_value`` the state tiers; FULL ``lock_ref`` is
``full_lock_ref``, MAMBA ``lock_ref`` is ``mamba_lock_ref``, FULL ``host_lock_ref`` is
``host_ref_counter`` and MAMBA ``host_lock_ref`` is ``host_mamba_ref_counter``. The LRU table
gets MAMBA's device and host lists (``"mamba"``, ``"host_mamba"``) and FULL's device and host
leaf sets, ordered by ``last_access_time`` (``"device leaves"``, ``"host leaves"``). The unified
tree has no full LRU at all: ``"full"`` is absent from ``Snapshot.lru`` (not an empty list), and
``settings["absent"]`` names it.

* **Python core** (``UnifiedTreeCore``): every field is read from the live nodes
  (``component_data``), the lists through their own links, the leaf sets as they are.
* **Rust core** (``RustUnifiedTreeCore``): only the production binding's own read-only queries are
  used: ``pretty_print`` (ids, depth, key length, FULL lock; parents and key spans follow from
  the depths), ``collect_path_info`` (parent and key span again, for the invariant check),
  ``get_component_device_value`` (the FULL and MAMBA device values),
  ``component_has_host_value_only`` / ``node_backuped`` (host values). The binding has no query
  for tokens, the MAMBA lock, access times or list orders (those are in the inspection build,
  which the wheel does not ship): keys are given back through the KV slots a driver named
  (:func:`remember_tokens`; else the slot ids themselves), and what cannot be read is listed in
  ``settings["unreadable"]`` (its counters read 0, its lists are absent).
"""

from __future__ import annotations

import os
import re
import tempfile
import weakref
from typing import Any

from himamba.observe.snapshot import NodeView, Snapshot

GENERATION = "sglang-0.5.23"
_FULL, _MAMBA = 0, 2  # ComponentType values (checked against the live enum in _components)
_LINE = re.compile(r"^( *)\[(\d+)\] (\d+) full_lock=(-?\d+)")
_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PRINTED: Any = None  # the file pretty_print writes into (see _printed_tree)


def is_unified_cache(cls: type) -> bool:
    """Whether ``cls`` is SGLang's ``UnifiedRadixCache`` (0.5.23)."""
    return cls.__module__ == "sglang.srt.mem_cache.unified_radix_cache" and cls.__name__ == "UnifiedRadixCache"


def remember_tokens(cache: Any, slots: list[int], tokens: list[int]) -> None:
    """Tell the lens which token each KV slot of ``cache`` holds (the Rust core cannot say)."""
    table = _TOKENS.setdefault(cache, {})
    table.update(zip(slots, tokens, strict=True))


def core_name(cache: Any) -> str:
    """``"python"`` or ``"rust"``: the tree core the cache runs on."""
    return "rust" if type(cache.tree_core).__name__.startswith("Rust") else "python"


def _components(cache: Any) -> tuple[Any, Any]:
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    return ComponentType.FULL, ComponentType.MAMBA


def _pool_used(pool: Any) -> tuple[int, int]:
    cap = int(getattr(pool, "size", 0))
    return cap - int(pool.available_size()), cap


def _pools(cache: Any) -> dict[str, tuple[int, int]]:
    pools = {"device KV": _pool_used(cache.token_to_kv_pool_allocator)}
    req_pool = cache.req_to_token_pool
    if hasattr(req_pool, "mamba_allocator"):
        pools["device states"] = _pool_used(req_pool.mamba_allocator)
    if _tiered(cache):  # the host tier (himamba.lens.unified_host)
        from sglang.srt.mem_cache.hicache_storage import PoolName

        group = cache.host_pool_group
        pools["host KV"] = _pool_used(group.get_pool(PoolName.KV))
        pools["host states"] = _pool_used(group.get_pool(PoolName.MAMBA))
    return pools


def _tiered(cache: Any) -> bool:
    return getattr(cache, "cache_controller", None) is not None


def _counters(cache: Any, views: list[NodeView]) -> dict[str, int]:
    full, mamba = _components(cache)
    core = cache.tree_core
    return {"full_evictable_size": core.component_evictable_size(full),
            "full_protected_size": core.component_protected_size(full),
            "mamba_evictable_size": core.component_evictable_size(mamba),
            "mamba_protected_size": core.component_protected_size(mamba), "nodes": len(views) - 1}


def snapshot_unified(cache: Any) -> Snapshot:
    """A :class:`Snapshot` of a live ``UnifiedRadixCache`` (FULL + MAMBA) on either core."""
    return _snapshot_rust(cache) if core_name(cache) == "rust" else _snapshot_python(cache)


# -- the Python core ---------------------------------------------------------------------------------
def _list_order(lst: Any) -> list[Any]:
    """A ``UnifiedLRUList``'s members, MRU first, through its own links (its session sentinels,
    when it has them, skipped)."""
    pt, out = lst._pt, []
    skip = {id(lst.mid), id(lst.cursor)}
    node = lst.head.lru_next[pt]
    while node is not None and node is not lst.tail:
        if id(node) not in skip:
            out.append(node)
        node = node.lru_next[pt]
    return out


def _snapshot_python(cache: Any) -> Snapshot:
    full, mamba = _components(cache)
    core = cache.tree_core
    root = core.root_node
    dleaves, hleaves = core.evictable_device_leaves, core.evictable_host_leaves
    views, stack = [], [(root, 0)]
    while stack:
        n, start = stack.pop()
        children = tuple(n.children.values())
        f, m = n.component_data[full], n.component_data[mamba]
        views.append(NodeView(
            n.id, None if n is root else n.parent.id, tuple(c.id for c in children), tuple(n.key.token_ids), start,
            n is not root and f.value is not None, f.host_value is not None, m.value is not None,
            m.host_value is not None, f.lock_ref, m.lock_ref, f.host_lock_ref, m.host_lock_ref, n.hit_count,
            float(n.last_access_time), n in dleaves, n in hleaves))
        end = start + len(n.key)
        stack.extend((c, end) for c in reversed(children))

    def by_time(nodes: Any) -> tuple[int, ...]:
        return tuple(n.id for n in sorted(nodes, key=lambda n: (-n.last_access_time, n.id)))

    lru = {"mamba": tuple(n.id for n in _list_order(core.lru_lists[mamba])),
           "host_mamba": tuple(n.id for n in _list_order(core.host_lru_lists[mamba])),
           "device leaves": by_time(dleaves), "host leaves": by_time(hleaves)}
    settings = {"page_size": cache.page_size, "tiered": _tiered(cache), "cache": "UnifiedRadixCache", "core": "python",
                "generation": GENERATION, "absent": ["full LRU (the unified tree keeps none)"]}
    clock = max((v.last_access_time for v in views), default=0.0)
    return Snapshot(tuple(views), lru, _counters(cache, views), _pools(cache), (), (), settings, clock)


# -- the Rust core -----------------------------------------------------------------------------------
def _printed_tree(core: Any) -> list[tuple[int, int, int, int]]:
    """(depth, id, key length, FULL lock) per node, in pre-order, from the binding's own
    ``pretty_print``, which writes to the process's standard output: read through a temporary file
    (one per process, emptied each time) put on descriptor 1."""
    import sys

    global _PRINTED
    if _PRINTED is None:
        _PRINTED = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - kept open for the process
    tmp = _PRINTED
    sys.stdout.flush()
    tmp.seek(0)
    tmp.truncate()
    saved = os.dup(1)
    try:
        os.dup2(tmp.fileno(), 1)
        core.pretty_print()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    tmp.seek(0)
    text = tmp.read().decode("utf-8", "replace")
    rows = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            spaces, nid, klen, lock = match.groups()
            rows.append((max(0, len(spaces) - 1) // 2, int(nid), int(klen), int(lock)))
    return rows


def _snapshot_rust(cache: Any) -> Snapshot:
    full, mamba = _components(cache)
    core = cache.tree_core
    rows = _printed_tree(core)  # pre-order: each node's parent is the last row one level up
    root_id = rows[0][1]
    parents: dict[int, int | None] = {root_id: None}
    children: dict[int, list[int]] = {}
    starts, lengths, above = {root_id: 0}, {}, [root_id]
    for depth, nid, klen, _lock in rows[1:]:
        del above[depth:]
        parent = above[-1]
        parents[nid] = parent
        children.setdefault(parent, []).append(nid)
        starts[nid] = starts[parent] + lengths.get(parent, 0)
        lengths[nid] = klen
        above.append(nid)
    tokens = _TOKENS.get(cache, {})
    known = _KEYS.setdefault(cache, {})  # node id -> its key, as last read with device KV
    device_value, backed_up, host_only = core.get_component_device_value, core.is_backuped, \
        core.component_has_host_value_only
    views = [NodeView(root_id, None, tuple(children.get(root_id, ())), (), 0, False, False, False, False,
                      rows[0][3], 0, 0, 0, 0, 0.0, False, False)]
    for _depth, nid, klen, lock in rows[1:]:
        kv = device_value(nid, full)
        slots = () if kv is None else kv.tolist()
        key = tuple([tokens.get(s, s) for s in slots]) if len(slots) == klen else (-1,) * klen
        if len(slots) == klen and all(s in tokens for s in slots):
            known[nid] = key
        elif len(known.get(nid, ())) == klen:
            key = known[nid]  # a host-only node: the key it had on the device
        kids = tuple(children.get(nid, ()))
        views.append(NodeView(
            nid, parents[nid], kids, key, starts[nid], kv is not None, backed_up(nid),
            device_value(nid, mamba) is not None, host_only(nid, mamba), lock, 0, 0, 0, 0, 0.0,
            kv is not None and not kids and lock == 0, False))
    settings = {"page_size": cache.page_size, "tiered": _tiered(cache), "cache": "UnifiedRadixCache", "core": "rust",
                "generation": GENERATION, "absent": ["full LRU (the unified tree keeps none)"],
                "unreadable": ["MAMBA lock_ref", "host lock refs", "hit_count", "last_access_time",
                               "MAMBA device and host LRU lists", "leaf sets (device leaves computed)"]
                + ([] if tokens else ["tokens (keys shown as KV slot ids)"])}
    return Snapshot(tuple(views), {}, _counters(cache, views), _pools(cache), (), (), settings, 0.0)


def rust_links(cache: Any) -> dict[int, tuple[int, int]]:
    """``{node id: (parent id, where its key starts)}`` from the Rust core's own
    ``collect_path_info`` (a second reading, which the invariant check compares with the printed
    tree)."""
    ids = [nid for _, nid, _, _ in _printed_tree(cache.tree_core)][1:]
    paths = cache.tree_core.collect_path_info(ids)
    return {path[-1].node_id: (path[-1].parent_id, path[-1].path_start) for path in paths if path}


def full_device_list(cache: Any) -> list[int]:
    """The ids in the Python core's FULL device list (which the unified tree keeps empty)."""
    full, _ = _components(cache)
    lists = cache.tree_core.lru_lists
    return [n.id for n in _list_order(lists[full])] if full in lists else []
