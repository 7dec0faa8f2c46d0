"""Collapse: choose which nodes of a big tree to draw, and sum up what is folded under each.

Contract of :func:`choose`: the kept set is a connected subtree containing ``top``; every id in
``must`` that lies under ``top`` is kept with its whole path (even beyond the budgets); then the
children of the ``near`` ids (the part of the tree a step changed, or focused nodes), then the
ids in ``prefer`` (e.g. locked and pinned nodes) with their paths, shallowest first, then the rest
breadth first, bigger subtrees first. Two budgets bound what is added after ``must``:

* ``max_nodes`` counts boxes: kept nodes plus one summary box per kept parent with folded
  children;
* ``max_width`` bounds the estimated drawing width (``width(id)`` gives a box's width): for
  ``layout="TB"`` the widest rank (boxes side by side), for ``"LR"`` the sum of the widest box of
  every rank (ranks side by side). Summary boxes count as :data:`SUMMARY_WIDTH`.

Everything not kept is folded into the summary box of its nearest kept ancestor. Runs in time
linear in the size of the subtree (plus a sort).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from himamba.observe.snapshot import Snapshot
from himamba.viz.common import node_kind

SUMMARY_WIDTH = 105.0  # points: "… 12 more nodes" over "340 tok" over "9 device" ...
GAP = 11.0  # points between boxes of one rank (nodesep 0.15 in)
RANK_GAP = 22.0  # points between ranks of a left-right drawing (ranksep 0.3 in)


@dataclass(frozen=True)
class Folded:
    """What one summary box stands for: ``nodes`` folded under a kept parent, their ``tokens``,
    how many are of each node kind and how many are locked."""

    nodes: int
    tokens: int
    kinds: dict[str, int]
    locked: int


@dataclass(frozen=True)
class Visible:
    """The outcome: ``keep`` lists the ids to draw (parents before children), ``hidden`` maps
    a kept parent to the number of nodes (whole subtrees) folded under it, ``folded`` the same
    parents to a :class:`Folded` summary, ``total`` is the size of the subtree under ``top``."""

    keep: tuple[int, ...]
    hidden: dict[int, int]
    total: int
    folded: dict[int, Folded] = field(default_factory=dict)


def subtree(snap: Snapshot, top: int) -> list[int]:
    """Ids of ``top`` and its descendants in preorder (the snapshot's own order)."""
    by_id = snap.by_id
    order, stack = [], [top]
    while stack:
        nid = stack.pop()
        order.append(nid)
        stack.extend(reversed(by_id[nid].children))
    return order


class _Width:
    """The estimated drawing width of the kept boxes, kept up to date as boxes are added.

    Top-down (``TB``), a subtree is as wide as the larger of its own box and its children's
    subtrees side by side (with the summary box of its folded children, if any); left-right
    (``LR``), ranks stand side by side, so the width is the sum of each rank's widest box."""

    def __init__(self, snap: Snapshot, layout: str, width: Callable[[int], float],
                 depth: dict[int, int]) -> None:
        self.by_id, self.lr, self.width, self.depth = snap.by_id, layout == "LR", width, depth
        self.own: dict[int, float] = {}
        self.row: dict[int, float] = {}  # kept node -> width of what hangs under it, side by side
        self.sub: dict[int, float] = {}  # kept node -> width of its subtree as drawn
        self.level_max: dict[int, float] = {}
        self.top: int | None = None

    def total(self) -> float:
        if self.lr:
            return sum(self.level_max.values()) + RANK_GAP * max(len(self.level_max) - 1, 0)
        return self.sub.get(self.top, 0.0) if self.top is not None else 0.0

    def _plan(self, nid: int, folded_children: bool, parent_done: bool) -> tuple[list[tuple[int, float, float]], float]:
        """The (node, new row, new sub) updates of keeping ``nid``, and the new total."""
        own = self.width(nid)
        sub = max(own, SUMMARY_WIDTH if folded_children else 0.0)
        if self.lr:
            d = self.depth[nid]
            extra = {d: own}
            if folded_children:
                extra[d + 1] = SUMMARY_WIDTH
            levels = dict(self.level_max)
            for lv, w in extra.items():
                levels[lv] = max(levels.get(lv, 0.0), w)
            return [], sum(levels.values()) + RANK_GAP * max(len(levels) - 1, 0)
        updates = [(nid, SUMMARY_WIDTH if folded_children else 0.0, sub)]
        parent = self.by_id[nid].parent
        if parent is None or nid == self.top:
            return updates, sub
        row = self.row[parent] + (sub if self.row[parent] == 0 else sub + GAP)
        if parent_done:  # the parent's summary box goes: its last folded child is now drawn
            row -= SUMMARY_WIDTH + GAP
        child, old_sub, new_sub = parent, self.sub[parent], max(self.own[parent], row)
        updates.append((parent, row, new_sub))
        while new_sub != old_sub and child != self.top:
            up = self.by_id[child].parent
            row = self.row[up] + new_sub - old_sub
            old_sub, new_sub = self.sub[up], max(self.own[up], row)
            updates.append((up, row, new_sub))
            child = up
        total = new_sub if child == self.top else self.sub[self.top]
        return updates, total

    def cost(self, nid: int, folded_children: bool, parent_done: bool) -> float:
        return self._plan(nid, folded_children, parent_done)[1]

    def add(self, nid: int, folded_children: bool, parent_done: bool) -> None:
        if self.top is None:
            self.top = nid
        updates, _ = self._plan(nid, folded_children, parent_done)
        self.own[nid] = self.width(nid)
        for n, row, sub in updates:
            self.row[n], self.sub[n] = row, sub
        d = self.depth[nid]
        self.level_max[d] = max(self.level_max.get(d, 0.0), self.own[nid])
        if folded_children:
            self.level_max[d + 1] = max(self.level_max.get(d + 1, 0.0), SUMMARY_WIDTH)


def choose(snap: Snapshot, top: int, max_nodes: int | None, must: Iterable[int] = (),
           prefer: Iterable[int] = (), *, near: Iterable[int] = (), max_width: float | None = None,
           width: Callable[[int], float] | None = None, layout: str = "TB",
           only_near: bool = False) -> Visible:
    """See the module docstring. ``max_nodes=None`` (or 0) and ``max_width=None`` keep
    everything. ``only_near=True`` folds every subtree that is neither on the path to, nor
    under, a ``must`` or ``near`` node (a zoom), whatever the budgets allow."""
    by_id = snap.by_id
    order = subtree(snap, top)
    must = [m for m in dict.fromkeys(must) if m in by_id]
    near = [n for n in dict.fromkeys(near) if n in by_id]
    if not max_nodes and max_width is None and not only_near:
        return Visible(tuple(order), {}, len(order))
    width = width or (lambda _nid: 100.0)
    depth = {top: 0}
    for nid in order[1:]:
        depth[nid] = depth[by_id[nid].parent] + 1
    size = dict.fromkeys(order, 1)
    for nid in reversed(order):
        if nid != top:
            size[by_id[nid].parent] += size[nid]
    budget_boxes = max_nodes or len(order) * 2 + 1
    budget_width = float("inf") if max_width is None else max_width

    keep: set[int] = set()
    unkept_children: dict[int, int] = {}
    boxes = 0  # kept parents that still have folded children
    drawn = _Width(snap, layout, width, depth)

    def parent_done(nid: int) -> bool:
        return nid != top and unkept_children[by_id[nid].parent] == 1

    def add(nid: int) -> None:
        nonlocal boxes
        drawn.add(nid, bool(by_id[nid].children), parent_done(nid))
        keep.add(nid)
        n_children = len(by_id[nid].children)
        unkept_children[nid] = n_children
        if n_children:
            boxes += 1
        if nid != top:
            parent = by_id[nid].parent
            unkept_children[parent] -= 1
            if unkept_children[parent] == 0:
                boxes -= 1

    def fits(nid: int) -> bool:
        n_boxes = 1 + bool(by_id[nid].children) - parent_done(nid)
        if len(keep) + boxes + n_boxes > budget_boxes:
            return False
        return drawn.cost(nid, bool(by_id[nid].children), parent_done(nid)) <= budget_width

    def path_to(nid: int) -> list[int]:
        path = []
        while nid not in keep:
            path.append(nid)
            nid = by_id[nid].parent
        return path[::-1]

    inside = set(order)
    add(top)
    for nid in must:
        if nid in inside:
            for p in path_to(nid):
                add(p)
    for nid in near:
        if nid not in inside:
            continue
        for p in path_to(nid):
            if fits(p):
                add(p)
            else:
                break
        if nid in keep:
            for c in sorted(by_id[nid].children, key=lambda c: -size[c]):
                if c not in keep and fits(c):
                    add(c)
    if not only_near:
        for nid in sorted((n for n in set(prefer) if n in inside), key=lambda n: (depth[n], n)):
            for p in path_to(nid):
                if not fits(p):
                    break
                add(p)
        for nid in sorted(order, key=lambda n: (depth[n], -size[n])):
            if nid in keep or by_id[nid].parent not in keep:
                continue
            if fits(nid):
                add(nid)
    return _visible(snap, order, keep, size)


def _visible(snap: Snapshot, order: list[int], keep: set[int], size: dict[int, int]) -> Visible:
    by_id = snap.by_id
    tokens = {nid: len(by_id[nid].key) for nid in order}
    for nid in reversed(order):
        parent = by_id[nid].parent
        if nid != order[0] and parent in tokens:
            tokens[parent] += tokens[nid]
    hidden: dict[int, int] = {}
    folded: dict[int, Folded] = {}
    for nid in keep:
        roots = [c for c in by_id[nid].children if c not in keep]
        if not roots:
            continue
        kinds: dict[str, int] = {}
        locked = 0
        stack = list(roots)
        while stack:
            v = by_id[stack.pop()]
            kind = node_kind(v)
            kinds[kind] = kinds.get(kind, 0) + 1
            locked += v.locked
            stack.extend(v.children)
        n = sum(size[c] for c in roots)
        hidden[nid] = n
        folded[nid] = Folded(n, sum(tokens[c] for c in roots), kinds, locked)
    return Visible(tuple(n for n in order if n in keep), hidden, len(order), folded)
