"""Collapse: choose which nodes of a big tree to draw, and count what is hidden under each.

Contract of :func:`choose`: the kept set is a connected subtree containing ``top``; every id in
``must`` that lies under ``top`` is kept with its whole path (even beyond the budget); ids in
``prefer`` (e.g. locked and pinned nodes) come next, shallowest first, then the rest breadth
first. The budget counts boxes: kept nodes plus one "… N more nodes" box per kept parent with
hidden children, so at most ``max_nodes`` boxes are drawn unless ``must`` alone needs more.
Runs in time linear in the size of the subtree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from himamba.observe.snapshot import Snapshot


@dataclass(frozen=True)
class Visible:
    """The outcome: ``keep`` lists the ids to draw (parents before children), ``hidden`` maps
    a kept parent to the number of nodes (whole subtrees) hidden under it, ``total`` is the
    size of the subtree under ``top``."""

    keep: tuple[int, ...]
    hidden: dict[int, int]
    total: int


def subtree(snap: Snapshot, top: int) -> list[int]:
    """Ids of ``top`` and its descendants in preorder (the snapshot's own order)."""
    by_id = snap.by_id
    order, stack = [], [top]
    while stack:
        nid = stack.pop()
        order.append(nid)
        stack.extend(reversed(by_id[nid].children))
    return order


def choose(snap: Snapshot, top: int, max_nodes: int | None, must: Iterable[int] = (),
           prefer: Iterable[int] = ()) -> Visible:
    """See the module docstring. ``max_nodes=None`` (or 0) keeps everything."""
    by_id = snap.by_id
    order = subtree(snap, top)
    if not max_nodes or len(order) <= max_nodes:
        return Visible(tuple(order), {}, len(order))
    inside = set(order)
    size = dict.fromkeys(order, 1)
    for nid in reversed(order):
        if nid != top:
            size[by_id[nid].parent] += size[nid]
    depth = {top: 0}
    for nid in order[1:]:
        depth[nid] = depth[by_id[nid].parent] + 1

    keep: set[int] = set()
    unkept_children: dict[int, int] = {}
    boxes = 0  # kept parents that still have hidden children

    def add(nid: int) -> None:
        nonlocal boxes
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

    def path_to(nid: int) -> list[int]:
        path = []
        while nid not in keep:
            path.append(nid)
            nid = by_id[nid].parent
        return path[::-1]

    def cost(path: list[int]) -> int:
        """Boxes added by keeping ``path`` (upper bound)."""
        return len(path) + sum(1 for n in path if by_id[n].children)

    add(top)
    for nid in must:
        if nid in inside:
            for p in path_to(nid):
                add(p)
    for nid in sorted((n for n in set(prefer) if n in inside), key=lambda n: (depth[n], n)):
        path = path_to(nid)
        if path and len(keep) + boxes + cost(path) <= max_nodes:
            for p in path:
                add(p)
    for nid in sorted(order, key=depth.__getitem__):
        if nid in keep or by_id[nid].parent not in keep:
            continue
        parent = by_id[nid].parent
        delta = 1 + (1 if by_id[nid].children else 0) - (1 if unkept_children[parent] == 1 else 0)
        if len(keep) + boxes + delta <= max_nodes:
            add(nid)
    hidden = {}
    for nid in keep:
        n_hidden = sum(size[c] for c in by_id[nid].children if c not in keep)
        if n_hidden:
            hidden[nid] = n_hidden
    return Visible(tuple(n for n in order if n in keep), hidden, len(order))
