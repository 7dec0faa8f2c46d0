"""EvictionProbe: an event listener that counts what evictions free, per tier.

Events name nodes but carry no sizes, so the probe reads four O(1) counters at every event —
device KV tokens and device states the tree owns (``full_*_size_``, ``mamba_*_size_``), host KV
and host state slots in use — and charges the drop since the previous event to the eviction
event that announces it:

=====================  ==========================================================================
``leaf_evicted``       a device leaf deleted: its device KV and state (and host state, tiered)
``demoted``            a device leaf demoted to host: its device KV and state
``node_deleted``       a cascade deletion: the node's device KV and host KV
``tombstone``          an internal node's device state
``host_leaf_evicted``  a host-only leaf deleted: its host KV and host state
``host_state_dropped`` an internal node's host state
=====================  ==========================================================================

This is exact because the algorithms announce each of these steps right after freeing, and
every public operation starts with an ``op_begin`` event (so allocations, which no eviction
event follows, are absorbed into the baseline). The engine never touches these counters.
Subscribing makes the cache build its events, which costs time (see ``bench/replay.py --record``).
"""

from __future__ import annotations

from himamba.observe.events import CacheListener, Event, EventKind

FIELDS = (
    "evicted_device_tokens", "evicted_device_states", "evicted_host_tokens", "evicted_host_states",
    "leaves_deleted", "demotions", "demoted_tokens", "tombstones", "host_leaves_deleted",
    "host_states_dropped", "cascade_deletions", "cascade_device_tokens", "cascade_host_tokens",
)

_K = EventKind
_EVICTING = frozenset({_K.LEAF_EVICTED, _K.DEMOTED, _K.NODE_DELETED, _K.TOMBSTONE, _K.HOST_LEAF_EVICTED,
                       _K.HOST_STATE_DROPPED})


class EvictionProbe(CacheListener):
    """Cumulative eviction counts of one cache (``counts``, keys :data:`FIELDS`), plus the
    number of events seen (``events``). Use :meth:`attach` / :meth:`detach` (or ``with``)."""

    def __init__(self, cache) -> None:
        self.cache = cache
        self.tiered = bool(getattr(cache, "tiered", False))
        self.counts: dict[str, int] = dict.fromkeys(FIELDS, 0)
        self.events = 0
        self._last = self._read()

    def _on_attach(self) -> None:
        self._last = self._read()

    def _read(self) -> tuple[int, int, int, int]:
        c = self.cache
        dev_kv = c.full_evictable_size_ + c.full_protected_size_
        dev_states = c.mamba_evictable_size_ + c.mamba_protected_size_
        if not self.tiered:
            return dev_kv, dev_states, 0, 0
        return dev_kv, dev_states, c.host_kv_pool.used_size(), c.host_mamba_pool.used_size()

    def _on_event(self, event: Event) -> None:
        self.events += 1
        now = self._read()
        kind = event.kind
        if kind in _EVICTING:
            last = self._last
            dk, ds, hk, hs = (max(0, a - b) for a, b in zip(last, now, strict=True))
            c = self.counts
            c["evicted_device_tokens"] += dk
            c["evicted_device_states"] += ds
            c["evicted_host_tokens"] += hk
            c["evicted_host_states"] += hs
            if kind is _K.LEAF_EVICTED:
                c["leaves_deleted"] += 1
            elif kind is _K.DEMOTED:
                c["demotions"] += 1
                c["demoted_tokens"] += dk
            elif kind is _K.NODE_DELETED:
                c["cascade_deletions"] += 1
                c["cascade_device_tokens"] += dk
                c["cascade_host_tokens"] += hk
            elif kind is _K.TOMBSTONE:
                c["tombstones"] += 1
            elif kind is _K.HOST_LEAF_EVICTED:
                c["host_leaves_deleted"] += 1
            else:
                c["host_states_dropped"] += 1
        self._last = now
