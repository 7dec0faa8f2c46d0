"""Graph: the radix tree as a graphviz drawing, one box per node, top-down or left-right.

    hm.render(cache)                       # a live cache: snapshotted first
    hm.render(snapshot, lru_rank=True)     # with "f2 m1 h3" LRU positions
    hm.render(step)                        # a recorded step: changes highlighted, deletions as ghosts
    hm.render(cache, focus=[node], names={node: "P"}, layout="LR")
    hm.to_svg(cache, legend="full")        # SVG markup, with the long legend

Reads Snapshots only; never touches live nodes. How boxes look is decided in
:mod:`himamba.viz.style`; which boxes are drawn in big trees in :mod:`himamba.viz.collapse`.

Fitting: by default (``fit=True``) a drawing is at most :data:`MAX_WIDTH_PT` points wide. Boxes
are chosen so that the estimated natural width stays under ``MAX_WIDTH_PT / MIN_SCALE`` and
graphviz scales what is left down to ``MAX_WIDTH_PT`` (so text keeps at least ``MIN_SCALE`` of
its size); whatever does not fit is folded into summary boxes, never the root, never a
highlighted node or the path to it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

import graphviz

from himamba.errors import InvalidInputError
from himamba.observe.recorder import Step
from himamba.observe.snapshot import NodeView, Snapshot
from himamba.viz import style
from himamba.viz.collapse import choose
from himamba.viz.common import as_snapshot, key_text, lru_positions, name_map, node_id, printable

DEFAULT_MAX_NODES = 150
MAX_WIDTH_PT = 720.0  # JupyterLab's output area is about 968 CSS px = 726 pt with the file browser open
MIN_SCALE = 0.7
SLACK = 1.0  # share of the widest natural width the box estimates may fill
TITLE_WIDTH = 110  # characters per title line
LAYOUTS = ("TB", "LR")
LEGENDS = ("compact", "full")
CHAR_PT = 5.6  # average width of a 9 pt character (graphviz measures DejaVu Sans here)
BOLD_PT = 6.3


def _name(nid: int) -> str:
    return f"n{nid}"


def _ids(nodes: Any) -> list[int]:
    if nodes is None:
        return []
    if isinstance(nodes, (int, NodeView)) or hasattr(nodes, "children"):
        return [node_id(nodes)]
    return [node_id(n) for n in nodes]


def _ghost_views(step: Step) -> tuple[NodeView, ...]:
    if step.before is None:
        return ()
    return tuple(step.before.node(nid) for nid in step.deleted if nid in step.before.by_id)


def _title_lines(obj: Any, snap: Snapshot, title: str | bool | None) -> list[str]:
    lines: list[str] = []
    if title is False or title == "":
        return lines
    if title is not None:
        lines.append(str(title))
    elif isinstance(obj, Step):
        lines.append(f"step {obj.index} · op {obj.op_index} {obj.op}")
        lines.append(f"{obj.kind}: {obj.text}")
    if lines and snap.in_flight:
        lines.append(in_flight_text(snap))
    return [part for line in lines for part in textwrap.wrap(printable(line), TITLE_WIDTH) or [""]]


def in_flight_text(snap: Snapshot, limit: int = 3) -> str:
    """One line for the transfers in flight: ``in flight (19): write ack 3 (#1, #2); ...; 16 more``."""
    items = [f"{what} ({', '.join(f'#{i}' for i in ids)})" for what, ids in snap.in_flight]
    more = f"; {len(items) - limit} more" if len(items) > limit else ""
    return f"in flight ({len(items)}): " + "; ".join(items[:limit]) + more


def box_width(v: NodeView, name: str | None = None, ranks: str = "") -> float:
    """Estimated width in points of a node's box (its longest label line, plus padding)."""
    if v.is_root:
        return 40.0 + (BOLD_PT * (len(name) + 1) if name else 0.0)
    head = BOLD_PT * (len(str(v.id)) + 2 + (len(name) + 1 if name else 0)) + CHAR_PT * (len(key_text(v.key)) + 6)
    counters = CHAR_PT * len(f"fl={v.full_lock_ref} ml={v.mamba_lock_ref} hr={v.host_ref_counter} "
                             f"hmr={v.host_mamba_ref_counter}")
    return max(head, counters, CHAR_PT * len(ranks)) + 14.0


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


def render(obj: Any, *, highlight: Iterable[Any] | None = None, ghosts: Iterable[NodeView] | None = None,
           lru_rank: bool = False, focus: Any = None, max_nodes: int | None = DEFAULT_MAX_NODES,
           legend: bool | str = "compact", title: str | bool | None = None, layout: str = "TB",
           names: Mapping[Any, str] | None = None, fit: bool | float = True) -> graphviz.Digraph:
    """Draw ``obj`` (a live cache, a :class:`~himamba.observe.snapshot.Snapshot` or a
    :class:`~himamba.observe.recorder.Step`) as a ``graphviz.Digraph``.

    * ``highlight``: nodes (ids or nodes) drawn with an orange header (a Step's default:
      ``step.changed``); always drawn, with their path from the root.
    * ``ghosts``: NodeViews of deleted nodes, drawn dashed grey under their old parent (a Step's
      default: its ``deleted`` nodes as they were in ``step.before``; pass ``()`` for none).
    * ``lru_rank``: add each node's 1-based LRU positions (``f2 m1 h3``; 1 = MRU).
    * ``focus``: a node or nodes (ids or nodes): draw the root, the paths to them and what lies
      under them; every other subtree is folded into a summary box. An id not in the snapshot
      raises ``KeyError``.
    * ``max_nodes``: at most this many boxes (``None`` or ``0``: no count limit); ``fit``: keep
      the drawing at most :data:`MAX_WIDTH_PT` wide (see the module docstring; ``False``: draw
      at natural size; a number below 1 tightens the width budget by that factor). Highlighted nodes and ghost parents are always kept; the children of
      highlighted and focused nodes come next, then locked and pinned nodes, then the rest
      breadth first.
    * ``legend``: ``"compact"`` (or ``True``, the default) a one-line strip under the title,
      ``"full"`` the long legend, ``False`` none; ``title``: a heading (a Step's default: its
      operation and text; ``False`` or ``""``: none).
    * ``layout``: ``"TB"`` (root on top) or ``"LR"`` (root on the left).
    * ``names``: ``{node_or_id: "P"}``, shown in front of the node's id (a name holding a
      control character or a lone surrogate is refused with ``InvalidInputError``).

    Never changes ``obj``. Node boxes are named ``n<id>``; ghosts ``g<id>``; summary boxes
    ``c<parent id>``; the full legend node ``legend``.
    """
    if layout not in LAYOUTS:
        raise InvalidInputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if legend is True:
        legend = "compact"
    if legend not in (False, None) and legend not in LEGENDS:
        raise InvalidInputError(f"legend must be 'compact', 'full' or False, got {legend!r}")
    snap = as_snapshot(obj)
    if isinstance(obj, Step):
        highlight = obj.changed if highlight is None else highlight
        ghosts = _ghost_views(obj) if ghosts is None else ghosts
    highlight = {h for h in _ids(highlight) if h in snap.by_id}
    focused = _ids(focus)
    for f in focused:
        if f not in snap.by_id:
            raise KeyError(f"focus node #{f} is not in this snapshot")
    labels = name_map(names)
    by_id = snap.by_id
    top = snap.root.id
    ghost_list, anchors = _attach_ghosts(snap, ghosts or (), top, set(by_id))
    prefer = [v.id for v in snap.nodes if v.locked or v.pinned]
    every_position = lru_positions(snap)
    positions = every_position if lru_rank else {}

    def ranks_of(v: NodeView) -> str:
        return style.ranks_text(v, positions) if positions else ""

    visible = choose(snap, top, max_nodes, must=[*sorted(highlight), *focused, *anchors], prefer=prefer,
                     near=[*focused, *sorted(highlight)], only_near=bool(focused), layout=layout,
                     max_width=None if not fit else SLACK * MAX_WIDTH_PT / MIN_SCALE * (1.0 if fit is True else fit),
                     width=lambda nid: box_width(by_id[nid], labels.get(nid), ranks_of(by_id[nid])))

    g = graphviz.Digraph("himamba", engine="dot", encoding="utf-8")
    g.attr("graph", rankdir=layout, nodesep="0.15", ranksep="0.3", fontname=style.FONT, fontsize="11",
           labelloc="t", labeljust="l")
    if fit:
        g.attr("graph", size=f"{MAX_WIDTH_PT / 72:.3f},1000")
    g.attr("node", shape="box", style="filled", fontname=style.FONT, fontsize="9", margin="0.04,0.02",
           fontcolor=style.INK)
    g.attr("edge", arrowsize="0.5", color="#6b7280")
    lines = _title_lines(obj, snap, title)
    strip = style.legend_strip() if legend == "compact" else ""
    if lines or strip:
        g.attr("graph", label=style.title_label(lines, strip))

    for nid in visible.keep:
        v = by_id[nid]
        g.node(_name(nid), style.node_label(v, highlighted=nid in highlight, ranks=ranks_of(v),
                                            name=labels.get(nid)),
               **style.node_attrs(v, style.tooltip_text(v, every_position, labels.get(nid))))
        if nid != top:
            g.edge(_name(v.parent), _name(nid))
    for parent, f in visible.folded.items():
        g.node(f"c{parent}", style.collapsed_label(f.nodes, f.tokens, f.kinds, f.locked), **style.collapsed_attrs())
        g.edge(_name(parent), f"c{parent}", style="dashed")
    drawn_ghosts = {gv.id for gv in ghost_list}
    for gv in ghost_list:
        g.node(f"g{gv.id}", style.node_label(gv, ghost=True, name=labels.get(gv.id)),
               tooltip="deleted by this step\n" + style.tooltip_text(gv, {}, labels.get(gv.id)), **style.ghost_attrs())
        parent = f"g{gv.parent}" if gv.parent in drawn_ghosts else _name(gv.parent)
        g.edge(parent, f"g{gv.id}", style="dashed", color=style.GHOST)
    if legend == "full":
        with g.subgraph(name="cluster_legend") as lg:
            lg.attr(label="legend", fontsize="10", color="#d1d5db", style="rounded")
            lg.node("legend", style.legend_label(), shape="plain", style="")
    return g


def to_svg(obj: Any, **kw: Any) -> str:
    """``render(obj, **kw)`` piped through ``dot`` to SVG markup (needs the ``dot`` program).
    When fitting, a drawing that graphviz had to scale below ``MIN_SCALE`` (the width estimate
    was short) is chosen again with a tighter budget, at most twice."""
    svg = render(obj, **kw).pipe(format="svg", encoding="utf-8")
    fit = kw.get("fit", True)
    for _ in range(2):
        scale = svg_scale(svg)
        if not fit or scale >= MIN_SCALE:
            break
        fit = (1.0 if fit is True else fit) * scale / MIN_SCALE * 0.95
        svg = render(obj, **{**kw, "fit": fit}).pipe(format="svg", encoding="utf-8")
    return svg


_SCALE = re.compile(r'transform="scale\(([\d.]+)')


def svg_scale(svg: str) -> float:
    """The factor graphviz scaled a drawing by to fit its ``size`` (1.0 when not scaled)."""
    m = _SCALE.search(svg)
    return float(m.group(1)) if m else 1.0
