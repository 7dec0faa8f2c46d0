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

_FREED = ("evicted_device_tokens", "evicted_device_states", "evicted_host_tokens", "evicted_host_states")
FIELDS = _FREED + (
    "leaves_deleted", "demotions", "demoted_tokens", "tombstones", "host_leaves_deleted",
    "host_states_dropped", "cascade_deletions", "cascade_device_tokens", "cascade_host_tokens",
)

_K = EventKind
# What each eviction event charges: the drop of the four readings (see _read) goes to the
# evicted_* fields; then the event's own count goes up by one, and each (field, reading) pair
# adds that reading's drop.
_DEVICE_TOKENS, _HOST_TOKENS = 0, 2
_CHARGES: dict[EventKind, tuple[str, tuple[tuple[str, int], ...]]] = {
    _K.LEAF_EVICTED: ("leaves_deleted", ()),
    _K.DEMOTED: ("demotions", (("demoted_tokens", _DEVICE_TOKENS),)),
    _K.NODE_DELETED: ("cascade_deletions", (("cascade_device_tokens", _DEVICE_TOKENS),
                                            ("cascade_host_tokens", _HOST_TOKENS))),
    _K.TOMBSTONE: ("tombstones", ()),
    _K.HOST_LEAF_EVICTED: ("host_leaves_deleted", ()),
    _K.HOST_STATE_DROPPED: ("host_states_dropped", ()),
}


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
        charge = _CHARGES.get(event.kind)
        if charge is not None:
            drops = [max(0, a - b) for a, b in zip(self._last, now, strict=True)]
            c = self.counts
            for name, drop in zip(_FREED, drops, strict=True):
                c[name] += drop
            count, extra = charge
            c[count] += 1
            for name, reading in extra:
                c[name] += drops[reading]
        self._last = now
