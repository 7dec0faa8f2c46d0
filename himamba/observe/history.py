"""History: a recording's snapshots kept compactly, as changes against the one before.

A :class:`SnapshotLog` holds a sequence of :class:`~himamba.observe.snapshot.Snapshot` s. Each
entry is stored as a :class:`Delta` against the entry before it (the node views that changed,
the ids that left, each LRU list as the ids moved to its MRU end and the ids that left it, the
small tables only when they changed), with a full copy every :data:`KEYFRAME_EVERY` entries so
that reading any entry applies at most that many deltas. Node views that did not change are the
very objects of the entry before (:func:`intern`), so a full copy costs a tuple of references.

Contract: ``log[i]`` equals (``==``) the snapshot appended as entry ``i``; reading never changes
what is stored; a few entries read last are kept built (reading a recording forward builds each
entry once).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from himamba.observe.snapshot import NodeView, Snapshot, moved_to_front

KEYFRAME_EVERY = 64  # entries between full copies
_BUILT_KEPT = 4  # entries kept built after a read
_MOVED_AT_MOST = 64  # an LRU change moving more ids than this to the MRU end is stored whole


def intern(snap: Snapshot, prev: Snapshot | None) -> tuple[Snapshot, tuple[int, ...], tuple[int, ...]]:
    """``snap`` rebuilt to share with ``prev`` every node view, LRU order and table that did not
    change, and (ids added or changed, ids deleted) from ``prev`` to ``snap`` (both empty when
    ``prev`` is None). The result equals ``snap``."""
    if prev is None:
        return snap, (), ()
    old = prev.by_id
    nodes, changed = [], []
    for v in snap.nodes:
        was = old.get(v.id)
        if was == v:
            nodes.append(was)
            continue
        if was is not None and (was.key == v.key or was.children == v.children):
            v = NodeView(**{**_fields(v), "key": was.key if was.key == v.key else v.key,
                            "children": was.children if was.children == v.children else v.children})
        nodes.append(v)
        changed.append(v.id)
    by_id = {v.id: v for v in nodes}
    deleted = tuple(nid for nid in old if nid not in by_id)
    lru = {k: prev.lru[k] if prev.lru.get(k) == ids else ids for k, ids in snap.lru.items()}
    out = Snapshot(tuple(nodes), lru, _same(snap.counters, prev.counters), _same(snap.pools, prev.pools),
                   snap.in_flight if snap.in_flight != prev.in_flight else prev.in_flight,
                   prev.legacy if snap.legacy == prev.legacy else snap.legacy,
                   _same(snap.settings, prev.settings), snap.clock)
    out.__dict__["by_id"] = by_id  # the cached property, already built
    return out, tuple(changed), deleted


def _same(new: dict, old: dict) -> dict:
    return old if new == old else new


def _fields(v: NodeView) -> dict:
    return {f: getattr(v, f) for f in NodeView.__slots__}


@dataclass(frozen=True, slots=True)
class Delta:
    """One entry against the entry before: node views added or changed (``nodes``), ids deleted,
    per LRU list either ``None`` (unchanged), a whole order, or ``(moved, gone)``: ``moved`` ids
    now at the MRU end (in order) and ``gone`` ids no longer in the list; the tables that changed
    (``None``: unchanged)."""

    nodes: tuple[NodeView, ...]
    deleted: tuple[int, ...]
    lru: dict[str, object]
    counters: dict | None
    pools: dict | None
    in_flight: tuple | None
    legacy: tuple | None
    settings: dict | None
    clock: float


def lru_change(old: tuple[int, ...], new: tuple[int, ...]) -> object:
    """How LRU order ``new`` follows from ``old`` (see :class:`Delta`)."""
    if new is old or new == old:
        return None
    k = moved_to_front(old, new)
    if k > _MOVED_AT_MOST:
        return new
    kept = set(new)
    return (new[:k], tuple(nid for nid in old if nid not in kept))


def apply_lru(old: tuple[int, ...], change: object) -> tuple[int, ...]:
    """The order :func:`lru_change` described."""
    if change is None:
        return old
    if not isinstance(change, tuple) or len(change) != 2 or not isinstance(change[0], tuple):
        return change  # a whole order
    moved, gone = change
    skip = set(moved) | set(gone)
    return moved + tuple(nid for nid in old if nid not in skip)


class SnapshotLog:
    """A sequence of snapshots stored compactly (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: list[Snapshot | Delta] = []
        self._built: OrderedDict[int, Snapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, snap: Snapshot, prev: Snapshot | None, changed: tuple[int, ...] = (),
               deleted: tuple[int, ...] = ()) -> int:
        """Store ``snap`` (which follows ``prev``, the last entry, with ``changed`` / ``deleted``
        ids as :func:`intern` found them); returns its index."""
        i = len(self._entries)
        if prev is None or i % KEYFRAME_EVERY == 0:
            self._entries.append(snap)
        else:
            by_id = snap.by_id
            self._entries.append(Delta(
                tuple(by_id[nid] for nid in changed), deleted,
                {k: lru_change(prev.lru.get(k, ()), ids) for k, ids in snap.lru.items()},
                None if snap.counters is prev.counters else snap.counters,
                None if snap.pools is prev.pools else snap.pools,
                None if snap.in_flight is prev.in_flight else snap.in_flight,
                None if snap.legacy is prev.legacy else snap.legacy,
                None if snap.settings is prev.settings else snap.settings, snap.clock))
        self._keep(i, snap)
        return i

    def __getitem__(self, i: int) -> Snapshot:
        if not 0 <= i < len(self._entries):
            raise IndexError(f"snapshot {i} out of range: {len(self._entries)} stored")
        if i in self._built:
            self._built.move_to_end(i)
            return self._built[i]
        j = i  # walk back to a full copy or to an entry still built (entry 0 is a full copy)
        while not isinstance(self._entries[j], Snapshot) and j - 1 not in self._built:
            j -= 1
        snap = self._entries[j] if isinstance(self._entries[j], Snapshot) else _apply(self._built[j - 1],
                                                                                     self._entries[j])
        for k in range(j + 1, i + 1):
            snap = _apply(snap, self._entries[k])
        self._keep(i, snap)
        return snap

    def _keep(self, i: int, snap: Snapshot) -> None:
        self._built[i] = snap
        self._built.move_to_end(i)
        while len(self._built) > _BUILT_KEPT:
            self._built.popitem(last=False)


def _apply(prev: Snapshot, d: Snapshot | Delta) -> Snapshot:
    if isinstance(d, Snapshot):
        return d
    by_id = dict(prev.by_id)
    for nid in d.deleted:
        by_id.pop(nid, None)
    for v in d.nodes:
        by_id[v.id] = v
    order, stack = [], [prev.root.id]
    while stack:
        v = by_id[stack.pop()]
        order.append(v)
        stack.extend(reversed(v.children))
    snap = Snapshot(tuple(order), {k: apply_lru(prev.lru.get(k, ()), c) for k, c in d.lru.items()},
                    prev.counters if d.counters is None else d.counters, prev.pools if d.pools is None else d.pools,
                    prev.in_flight if d.in_flight is None else d.in_flight,
                    prev.legacy if d.legacy is None else d.legacy,
                    prev.settings if d.settings is None else d.settings, d.clock)
    snap.__dict__["by_id"] = {v.id: v for v in order}
    return snap
