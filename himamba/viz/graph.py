"""Graph: the radix tree as a graphviz drawing, one box per node, top-down.

    hm.render(cache)                       # a live cache: snapshotted first
    hm.render(snapshot, lru_rank=True)     # with "f2 m1 h3" LRU positions
    hm.render(step)                        # a recorded step: changes highlighted, deletions as ghosts
    hm.to_svg(cache, focus=node_id)        # only that subtree, as SVG markup

Reads Snapshots only; never touches live nodes. How boxes look is decided in
:mod:`himamba.viz.style`; which boxes are drawn in big trees in :mod:`himamba.viz.collapse`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import graphviz

from himamba.observe.recorder import Step
from himamba.observe.snapshot import NodeView, Snapshot
from himamba.viz import style
from himamba.viz.collapse import choose
from himamba.viz.common import as_snapshot, key_text, lru_positions

DEFAULT_MAX_NODES = 150


def _name(nid: int) -> str:
    return f"n{nid}"


def _ghost_views(step: Step) -> tuple[NodeView, ...]:
    if step.before is None:
        return ()
    return tuple(step.before.node(nid) for nid in step.deleted if nid in step.before.by_id)


def _title_lines(obj: Any, snap: Snapshot, title: str | None) -> list[str]:
    lines: list[str] = []
    if title is not None:
        lines.append(title)
    elif isinstance(obj, Step):
        lines.append(f"step {obj.index} · op {obj.op_index} {obj.op}")
        lines.append(f"{obj.kind}: {obj.text}")
    if lines:
        for what, ids in snap.in_flight:
            lines.append(f"in flight: {what} ({', '.join(f'#{i}' for i in ids)})")
    return lines


def _attach_ghosts(snap: Snapshot, ghosts: Iterable[NodeView], top: int,
                   inside: set[int]) -> tuple[list[NodeView], list[int]]:
    """Ghosts drawable under ``top`` (their first surviving ancestor lies in ``inside``) and
    those surviving ancestors (to be kept visible)."""
    ghosts = list(ghosts)
    by_ghost = {g.id: g for g in ghosts}
    drawable, anchors = [], []
    for g in ghosts:
        p = g.parent
        while p is not None and p in by_ghost and p not in snap.by_id:
            p = by_ghost[p].parent
        if p is not None and p in snap.by_id and p in inside:
            drawable.append(g)
            anchors.append(p)
    return drawable, anchors


def render(obj: Any, *, highlight: Iterable[int] | None = None, ghosts: Iterable[NodeView] | None = None,
           lru_rank: bool = False, focus: int | None = None, max_nodes: int | None = DEFAULT_MAX_NODES,
           legend: bool = True, title: str | None = None) -> graphviz.Digraph:
    """Draw ``obj`` (a live cache, a :class:`~himamba.observe.snapshot.Snapshot` or a
    :class:`~himamba.observe.recorder.Step`) as a ``graphviz.Digraph``.

    * ``highlight``: node ids drawn with an orange header (a Step's default: ``step.changed``).
    * ``ghosts``: NodeViews of deleted nodes, drawn dashed grey under their old parent (a Step's
      default: its ``deleted`` nodes as they were in ``step.before``; pass ``()`` for none).
    * ``lru_rank``: add each node's 1-based LRU positions (``f2 m1 h3``; 1 = MRU).
    * ``focus``: draw only this node's subtree; its ancestors become one path line above it.
      An id not in the snapshot raises ``KeyError``.
    * ``max_nodes``: above this many boxes the tree is collapsed (see
      :mod:`himamba.viz.collapse`); highlighted nodes and ghost parents are always kept,
      locked and pinned nodes are preferred. ``None`` or ``0`` draws everything.
    * ``legend``: add the legend cluster; ``title``: a heading (a Step's default: its text).

    Never changes ``obj``. Node boxes are named ``n<id>``; ghosts ``g<id>``; collapsed boxes
    ``c<parent id>``; the focus path ``path``; the legend node ``legend``.
    """
    snap = as_snapshot(obj)
    if isinstance(obj, Step):
        highlight = obj.changed if highlight is None else highlight
        ghosts = _ghost_views(obj) if ghosts is None else ghosts
    highlight = {h for h in (highlight or ()) if h in snap.by_id}
    top = snap.root.id if focus is None else focus
    if top not in snap.by_id:
        raise KeyError(f"focus node #{top} is not in this snapshot")
    full = choose(snap, top, None)
    inside = set(full.keep)
    ghost_list, anchors = _attach_ghosts(snap, ghosts or (), top, inside)
    prefer = [v.id for v in snap.nodes if (v.locked or v.pinned) and v.id in inside]
    visible = choose(snap, top, max_nodes, must=[*sorted(highlight), *anchors], prefer=prefer)
    positions = lru_positions(snap) if lru_rank else {}

    g = graphviz.Digraph("himamba", engine="dot", encoding="utf-8")
    g.attr("graph", rankdir="TB", nodesep="0.15", ranksep="0.3", fontname=style.FONT, fontsize="11",
           labelloc="t", labeljust="l")
    g.attr("node", shape="box", style="filled", fontname=style.FONT, fontsize="9", margin="0.04,0.02")
    g.attr("edge", arrowsize="0.5", color="#6b7280")
    lines = _title_lines(obj, snap, title)
    if lines:
        g.attr("graph", label=style.title_label(lines))

    by_id = snap.by_id
    for nid in visible.keep:
        v = by_id[nid]
        ranks = style.ranks_text(v, positions) if positions else ""
        g.node(_name(nid), style.node_label(v, highlighted=nid in highlight, ranks=ranks), **style.node_attrs(v))
        if nid != top:
            g.edge(_name(v.parent), _name(nid))
    for parent, n_hidden in visible.hidden.items():
        g.node(f"c{parent}", style.collapsed_label(n_hidden), **style.collapsed_attrs())
        g.edge(_name(parent), f"c{parent}", style="dashed")
    drawn_ghosts = {gv.id for gv in ghost_list}
    for gv in ghost_list:
        g.node(f"g{gv.id}", style.node_label(gv, ghost=True), **style.ghost_attrs())
        parent = f"g{gv.parent}" if gv.parent in drawn_ghosts else _name(gv.parent)
        g.edge(parent, f"g{gv.id}", style="dashed", color=style.GHOST)
    if focus is not None and by_id[top].parent is not None:
        path, p = [], by_id[top].parent
        while p is not None:
            pv = by_id[p]
            path.append("root" if pv.is_root else f"#{pv.id}{key_text(pv.key, 4)}")
            p = pv.parent
        start = by_id[top].start
        g.node("path", " → ".join(reversed(path)) + f"  ({start} tokens above)", shape="plaintext",
               style="", fontcolor="#4b5563")
        g.edge("path", _name(top), style="dotted")
    if legend:
        with g.subgraph(name="cluster_legend") as lg:
            lg.attr(label="legend", fontsize="10", color="#d1d5db", style="rounded")
            lg.node("legend", style.legend_label(), shape="plain", style="")
    return g


def to_svg(obj: Any, **kw: Any) -> str:
    """``render(obj, **kw)`` piped through ``dot`` to SVG markup (needs the ``dot`` program)."""
    return render(obj, **kw).pipe(format="svg", encoding="utf-8")
