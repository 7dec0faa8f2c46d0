"""The 2026 bug reports against code after SGLang 0.5.11, each checked against the installed
SGLang 0.5.23 (``UnifiedRadixCache``) and replayed through the lens where the lens can show it.

Every function returns a replay script (the dict of :mod:`himamba.lens.scenarios`: ``cache``,
``config``, ``ops``) for :func:`himamba.lens.replay.replay_on` on ``"sglang-0.5.23"`` (either tree
core) and on ``"himamba"``. :data:`REPORTS` maps each report number to its script function and the
himamba equivalent; :data:`PRESENT_IN_0523` says whether 0.5.23 still has the behaviour
(``"yes"``, ``"no"``, or ``"not replayable"`` where the lens cannot build what the report needs).

The lens builds 0.5.23's unified tree without a host tier unless asked; a report about the host
tier (:data:`HOST_TIER`) is replayed on the build with one (:mod:`himamba.lens.unified_host`).
"""

from __future__ import annotations

from collections.abc import Callable

CONFIG = {"device": "cpu", "device_kv_tokens": 32, "host_kv_tokens": 64, "device_mamba_slots": 6,
          "host_mamba_slots": 8, "write_policy": "write_through"}


def r33713_script() -> dict:
    """#33713 (open, unified tree): a node evicted from the device is pruned instead of demoted to
    host, so no load-back happens.

    Not present in 0.5.23 in the report's shape, on both tree cores, under write_through and
    write_back. Replayed on 0.5.23 with its host tier (:mod:`himamba.lens.unified_host`: upstream's
    own ``init_hicache``, host pools and ``HybridCacheController``, with CPU stand-ins only for
    pinned-buffer registration, the direct transfer kernels and streams). Under write_through the
    insert itself queues the backup of KV and state; until ``check_hicache_events`` reaps its
    acknowledgement the node is held, and an eviction frees nothing. After it,
    ``UnifiedRadixCache._evict_device_leaf`` calls ``UnifiedTreeCore.evict_device_leaf``, which
    finds the node backed up and calls ``_demote``: the FULL device value and, through
    ``_cascade_evict``, the MAMBA device state are released, the host copies stay, and the node
    stays in the tree host-only. Under write_back the same call first returns a ``BackupKV`` for
    the cache to copy, then demotes. The lookup then reports a host hit of 4 tokens at the node,
    and ``load_back`` brings KV and state back (a second lookup hits 4 on the device). Only an
    unbacked write-through leaf is deleted (``_delete_unbacked_device_leaf``); an internal state
    evicted for room in the state pool (``MambaComponent._evict_device_next_node``) keeps the host
    copy written with its node (under write_back, the walk asks for a backup first when there is
    none). The Rust core takes the same decisions inside its binding, with the same results.

    The lens builds what the report's deployment does not match: page size 1, no mamba extra
    buffer (the report used ``extra_buffer``), one rank. The script: serve a prefix with a state,
    let the backup land, evict it, look it up, load it back, look it up again. Himamba's tiered
    cache gives the same results (the fixed behaviour).
    """
    return {"cache": "tiered", "config": CONFIG,
            "ops": [{"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "events"}, {"op": "evict", "n": 4},
                    {"op": "match", "tokens": [1, 2, 3, 4]}, {"op": "load", "tokens": [1, 2, 3, 4]},
                    {"op": "events"}, {"op": "match", "tokens": [1, 2, 3, 4]}]}


def r36696_script() -> dict:
    """#36696 (open, against ``MambaRadixCache``): a split node filed under the caller key's child
    key but deleted by recomputing its own; when the two disagree the delete misses (``parent does
    not have child key``).

    Not present in 0.5.23: ``MambaRadixCache`` is gone, and ``UnifiedTreeCore._split_node`` is
    called with the split node's own key at every call site (the match and insert walks, host
    insert, SWA window attach, the SWA component), while ``_remove_leaf_from_parent`` recomputes the
    same key, so filing and deleting agree. The script splits ``[1, 2, 3, 4]`` at ``[1, 2]`` with a
    lookup and evicts both halves: the split-made parent is found and deleted, the tree and pools
    end empty, on both tree cores. (0.5.23 evicts 2 then 2 tokens: only FULL decides survival, so
    the stateless parent stays a device leaf until the second eviction; himamba's cascade removes
    the stateless parent with its child, 4 then 0.) Himamba equivalent: B9 (hazard), whose split
    files the new node under its own key.
    """
    return {"cache": "device", "config": CONFIG,
            "ops": [{"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "match", "tokens": [1, 2]},
                    {"op": "evict", "n": 2}, {"op": "evict", "n": 2}]}


def r22935_script() -> dict:
    """#22935 (open): the ``input_len - 1`` lookup ends inside an edge and splits it; the new upper
    node has no state, so the hit drops to 0.

    Present in 0.5.23, on both tree cores: ``UnifiedTreeCore._match_prefix_helper`` splits the edge
    (``_split_node``), ``MambaComponent.redistribute_on_node_split`` leaves the new upper node
    without a state, and ``MambaComponent.create_match_validator`` accepts only nodes with one, so
    the best match stays at the root. The script caches ``[1, 2, 3, 4]``, looks up ``[1, 2, 3]``
    (the lookup of a resent prompt of 4 tokens): 0 tokens hit, and the tree is now ``[1, 2, 3]``
    (KV, no state) over ``[4]`` (the state); a lookup of all four tokens still hits 4. Himamba
    equivalent: B12 (hazard), the same split and the same 0-token hit.
    """
    return {"cache": "device", "config": CONFIG,
            "ops": [{"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "match", "tokens": [1, 2, 3]},
                    {"op": "match", "tokens": [1, 2, 3, 4]}]}


def r35821_script() -> dict:
    """#35821 (fixed after 0.5.11): with ``cache_len`` 0 a zero-length "ghost" node was inserted
    (later a stale copy-on-write source).

    Fixed in 0.5.23: ``UnifiedTreeCore.begin_insert`` returns for an empty key before making a node
    (prefix 0, state reported as existing, so the caller frees its slot), and
    ``UnifiedRadixCache``'s request caching returns before inserting when the effective cache
    length is 0. The script serves an empty request, then ``[1, 2]``: no node with an empty key
    appears, the empty request's state slot is given back, and only ``[1, 2]`` is cached. Himamba
    equivalent: none needed; an empty insert makes no node there either.
    """
    return {"cache": "device", "config": CONFIG,
            "ops": [{"op": "request", "tokens": []}, {"op": "request", "tokens": [1, 2]}]}


REPORTS: dict[int, tuple[Callable[[], dict], str]] = {
    33713: (r33713_script, "the tiered cache's demotion of a written-through node with its state "
                           "(the fixed behaviour); 0.5.23 with its host tier does the same"),
    36696: (r36696_script, "B9 (hazard); himamba files a split node under its own key"),
    22935: (r22935_script, "B12 (hazard): the same split and 0-token hit"),
    35821: (r35821_script, "none needed: an empty insert makes no node"),
}

PRESENT_IN_0523: dict[int, str] = {33713: "no", 36696: "no", 22935: "yes", 35821: "no"}

HOST_TIER: frozenset[int] = frozenset({33713})
"""The reports replayed on 0.5.23 with its host tier (:mod:`himamba.lens.unified_host`)."""
