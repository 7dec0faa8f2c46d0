"""The lens on SGLang 0.5.11's own ``MambaRadixCache`` and ``HiMambaRadixCache``: live objects to
:class:`~himamba.observe.snapshot.Snapshot`.

Nothing is copied from SGLang and nothing is changed: :func:`snapshot_0511` reads the node fields
(``value``, ``mamba_value``, ``host_value``, ``mamba_host_value``, the four counters,
``hit_count``, ``last_access_time``) and walks the lists' own links (``full_lru_list``,
``mamba_lru_list`` and, tiered, ``mamba_host_lru_list``, each from ``head`` to ``tail`` through
its ``nxt`` field) and leaf sets (``evictable_full_device_leaves`` / ``..._host_leaves``, tiered
only). What 0.5.11 lacks is absent from the snapshot, not empty: the device-only cache keeps no
leaf sets (its ``device_leaf`` flags are computed as "childless, KV on device", and
``settings["absent"]`` says so).
"""

from __future__ import annotations

from typing import Any

from himamba.observe.snapshot import NodeView, Snapshot

GENERATION = "sglang-0.5.11"


def is_0511_cache(cls: type) -> bool:
    """Whether ``cls`` is one of SGLang's two legacy hybrid caches (0.5.11 installs them)."""
    return cls.__module__ in ("sglang.srt.mem_cache.mamba_radix_cache", "sglang.srt.mem_cache.hi_mamba_radix_cache") \
        and cls.__name__ in ("MambaRadixCache", "HiMambaRadixCache")


def list_order(lst: Any) -> list[Any]:
    """The nodes of one of 0.5.11's LRU lists, MRU first (through the list's own links)."""
    out, node = [], getattr(lst.head, lst.nxt)
    while node is not lst.tail and node is not None:
        out.append(node)
        node = getattr(node, lst.nxt)
    return out


def _pool_used(pool: Any) -> tuple[int, int]:
    cap = int(getattr(pool, "size", 0))
    return cap - int(pool.available_size()), cap


def snapshot_0511(cache: Any) -> Snapshot:
    """A :class:`Snapshot` of a live 0.5.11 ``MambaRadixCache`` or ``HiMambaRadixCache``."""
    tiered = hasattr(cache, "evictable_full_host_leaves")
    root = cache.root_node
    dleaves = cache.evictable_full_device_leaves if tiered else None
    hleaves = cache.evictable_full_host_leaves if tiered else ()
    views, stack = [], [(root, 0)]
    while stack:
        n, start = stack.pop()
        children = tuple(n.children.values())
        kv_device = n is not root and n.value is not None
        device_leaf = n in dleaves if dleaves is not None else (kv_device and not any(
            c.value is not None for c in children))
        views.append(NodeView(
            n.id, None if n is root else n.parent.id, tuple(c.id for c in children),
            tuple(n.key.token_ids) if n.key is not None else (), start,
            kv_device, getattr(n, "host_value", None) is not None, n.mamba_value is not None,
            getattr(n, "mamba_host_value", None) is not None, n.full_lock_ref, n.mamba_lock_ref,
            getattr(n, "host_ref_counter", 0), getattr(n, "host_mamba_ref_counter", 0), n.hit_count,
            float(n.last_access_time), device_leaf, n in hleaves))
        end = start + (len(n.key) if n.key is not None else 0)
        stack.extend((c, end) for c in reversed(children))
    lru = {"full": tuple(n.id for n in list_order(cache.full_lru_list)),
           "mamba": tuple(n.id for n in list_order(cache.mamba_lru_list))}
    counters = {"full_evictable_size": cache.full_evictable_size(), "full_protected_size": cache.full_protected_size(),
                "mamba_evictable_size": cache.mamba_evictable_size(),
                "mamba_protected_size": cache.mamba_protected_size(), "nodes": len(views) - 1}
    pools = {"device KV": _pool_used(cache.token_to_kv_pool_allocator),
             "device states": _pool_used(cache.req_to_token_pool.mamba_pool)}
    settings: dict[str, Any] = {"page_size": cache.page_size, "tiered": tiered, "cache": type(cache).__name__,
                                "generation": GENERATION}
    if tiered:
        lru["host_mamba"] = tuple(n.id for n in list_order(cache.mamba_host_lru_list))
        pools["host KV"] = _pool_used(cache.full_kv_pool_host)
        pools["host states"] = _pool_used(cache.mamba_pool_host)
        counters["host_kv_tokens"] = sum(len(v.key) for v in views if v.kv_host)
        settings["write_policy"] = getattr(cache, "write_policy", None) or getattr(
            getattr(cache, "cache_controller", None), "write_policy", None)
    else:
        settings["absent"] = ["device leaf set (computed: childless with device KV)", "host tier"]
    clock = max((v.last_access_time for v in views), default=0.0)
    return Snapshot(tuple(views), lru, counters, pools, (), (), settings, clock)
