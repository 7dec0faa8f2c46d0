"""Style: colours, borders, markers and the HTML-like labels of the tree render, and its legend.

One place decides how a node looks, so the legend can never disagree with the boxes:

* fill colour and outline = node kind (:func:`himamba.viz.common.node_kind`): device blue
  square, tombstone yellow with cut corners, host-only lilac rounded, full tombstone grey
  3-D box (the colours stay apart under colour-blindness simulations, :mod:`himamba.viz.palette`,
  and the outline carries the kind without them);
* border: vermilion and thick = locked (``fl > 0`` or ``ml > 0``), purple double = pinned
  (``hr > 0`` or ``hmr > 0``), both = vermilion double; text markers ``LOCK`` / ``PIN`` too;
* an orange header and a ``*`` before the id = changed by the step shown; dashed grey = a
  ghost (deleted by the step), marked ``DELETED``;
* every box has a tooltip (:func:`tooltip_text`): the counters, tiers and last access time;
* ``Ld`` / ``Lh`` = member of the evictable device / host leaf set; ``f2 m1 h3`` = positions
  in the full / mamba / host-mamba LRU lists (1 = most recently used).
Fonts may lack emoji, so every marker is plain text. A text run never starts with a space after a
bold run: SVG drops leading spaces, so a browser would glue the words ("LOCKred"); runs are
joined with a no-break space or kept in separate cells instead.
"""

from __future__ import annotations

from html import escape

from himamba.observe.snapshot import NodeView
from himamba.viz.common import LRU_SHORT, key_text, node_kind

FONT = "Helvetica"

#: Fills by node kind: a colour-blind-safe set (blue, yellow, lilac, grey; checked under
#: simulated protanopia, deuteranopia and tritanopia in :mod:`himamba.viz.palette`), each kind
#: also drawn with its own outline (:data:`KIND_SHAPE`), so no meaning rests on colour alone.
FILL = {
    "root": "#ffffff",
    "device": "#569ffc",
    "tombstone": "#f5e663",
    "host-only": "#e7b8ff",
    "full tombstone": "#a3a3a3",
}
#: Outline by node kind (graphviz shape and style): square, cut corners, rounded, 3-D box.
KIND_SHAPE = {
    "root": ("box", "filled"),
    "device": ("box", "filled"),
    "tombstone": ("box", "filled,diagonals"),
    "host-only": ("box", "filled,rounded"),
    "full tombstone": ("box3d", "filled"),
}
SHORT_KIND = {"device": "device", "tombstone": "tombstone", "host-only": "host-only",
              "full tombstone": "full tomb."}
KIND_TEXT = {
    "device": "device (square box): KV and state on device",
    "tombstone": "tombstone (cut corners): KV on device, state only on host",
    "host-only": "host-only (rounded): KV and state only on host",
    "full tombstone": "full tombstone (3-D box): no state on either tier",
}
BORDER = "#374151"
LOCK_COLOR = "#d55e00"
PIN_COLOR = "#5e3c99"
HIGHLIGHT = "#e08a00"
GHOST = "#9ca3af"
COLLAPSED_FILL = "#f4f4f4"
NAME_COLOR = "#6b0f5c"  # dark magenta: readable on every fill
INK = "#111827"  # text on every fill, in light and dark pages alike
CHANGED_MARK = "*"  # in front of a changed node's id: the highlight is not colour alone


def node_attrs(v: NodeView, tooltip: str = "") -> dict[str, str]:
    """Graphviz node attributes: fill and outline by kind; border by lock / pin; the tooltip
    (``tooltip``: plain text; see :func:`tooltip_text`)."""
    kind = node_kind(v)
    shape, fill_style = KIND_SHAPE[kind]
    attrs = {"fillcolor": FILL[kind], "color": BORDER, "penwidth": "1", "shape": shape, "style": fill_style}
    if tooltip:
        attrs["tooltip"] = tooltip
    if v.locked:
        attrs.update(color=LOCK_COLOR, penwidth="3")
    if v.pinned:
        attrs.update(peripheries="2", penwidth="2.5" if not v.locked else "3")
        if not v.locked:
            attrs["color"] = PIN_COLOR
    return attrs


def tooltip_text(v: NodeView, positions: dict[str, dict[int, int]], name: str | None = None) -> str:
    """A node's hover text: id and name, key and length, tiers, the eight counters (fl, ml, hr,
    hmr, hit_count and the positions f, m, h in the LRU lists; ``-`` = not a member), its last
    access time and leaf-set membership."""
    if v.is_root:
        return "root" + (f" ({name})" if name else "")
    ranks = " ".join(f"{LRU_SHORT.get(k, k)}={pos.get(v.id, '-')}" for k, pos in positions.items())
    return "\n".join([
        f"#{v.id}{f' ({name})' if name else ''} {key_text(v.key, 12)} {len(v.key)} token{'s' if len(v.key) != 1 else ''}",
        f"{node_kind(v)}: KV {v.kv_tier}, state {v.state_tier}",
        f"fl={v.full_lock_ref} ml={v.mamba_lock_ref} hr={v.host_ref_counter} hmr={v.host_mamba_ref_counter} "
        f"hit_count={v.hit_count} {ranks}".rstrip(),
        f"last access t={v.last_access_time:g}"
        + (" · evictable device leaf" if v.device_leaf else "") + (" · evictable host leaf" if v.host_leaf else ""),
    ])


def _row(text: str, bgcolor: str | None = None) -> str:
    bg = f' BGCOLOR="{bgcolor}"' if bgcolor else ""
    return f"<TR><TD{bg}>{text}</TD></TR>"


NBSP = "&#160;"


def node_label(v: NodeView, *, highlighted: bool = False, ranks: str = "",
               ghost: bool = False, name: str | None = None) -> str:
    """An HTML-like label: name (when given), id, key preview and length; tiers; counters;
    markers; LRU ranks."""
    head_bg = HIGHLIGHT if highlighted else None
    mark = f"<B>{CHANGED_MARK}</B>" if highlighted else ""
    named = f'<FONT COLOR="{NAME_COLOR}"><B>{escape(name)}</B></FONT>{NBSP}' if name else ""
    if v.is_root:
        rows = [_row(f"{mark}{named}<B>root</B>", head_bg)]
    else:
        head = f"{mark}{named}<B>#{v.id}</B>{NBSP}{escape(key_text(v.key))} {len(v.key)} tok"
        rows = [
            _row(head, head_bg),
            _row(f"KV={v.kv_tier} M={v.state_tier}"),
            _row(f"fl={v.full_lock_ref} ml={v.mamba_lock_ref} hr={v.host_ref_counter} "
                 f"hmr={v.host_mamba_ref_counter}"),
        ]
        marks = []
        if ghost:
            marks.append("DELETED")
        if v.locked:
            marks.append(f'<FONT COLOR="{LOCK_COLOR}"><B>LOCK</B></FONT>')
        if v.pinned:
            marks.append(f'<FONT COLOR="{PIN_COLOR}"><B>PIN</B></FONT>')
        if v.device_leaf:
            marks.append("Ld")
        if v.host_leaf:
            marks.append("Lh")
        if marks:
            rows.append(_row(NBSP.join(marks)))
        if ranks:
            rows.append(_row(ranks))
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">' + "".join(rows) + "</TABLE>>"


def ranks_text(v: NodeView, positions: dict[str, dict[int, int]]) -> str:
    """``f2 m1 h3``: the node's 1-based position in each LRU list it belongs to."""
    return " ".join(f"{LRU_SHORT.get(name, name)}{pos[v.id]}" for name, pos in positions.items() if v.id in pos)


def ghost_attrs() -> dict[str, str]:
    return {"style": "dashed,filled", "fillcolor": "#f9fafb", "color": GHOST, "fontcolor": GHOST, "penwidth": "1"}


def collapsed_label(n_hidden: int, tokens: int | None = None, kinds: dict[str, int] | None = None,
                    locked: int = 0) -> str:
    """The summary box of folded subtrees: ``… 12 more nodes`` and, when known, a line with
    their tokens (and how many are locked) and one per node kind with its count."""
    lines = [f"… {n_hidden} more node{'s' if n_hidden != 1 else ''}"]
    if tokens is not None:
        lines.append(f"{tokens:,} tok" + (f" · {locked} locked" if locked else ""))
    lines += [f"{n} {SHORT_KIND[k]}" for k, n in (kinds or {}).items() if n]
    return "\n".join(lines)


def collapsed_attrs() -> dict[str, str]:
    return {"shape": "note", "style": "filled", "fillcolor": COLLAPSED_FILL, "color": GHOST, "fontcolor": "#4b5563"}


def title_label(lines: list[str], legend: str = "") -> str:
    """The graph label: the title (first line bold, the others plain) and, below it, the compact
    legend strip (``legend``: the ``<TABLE>`` of :func:`legend_strip`, or empty)."""
    rows = []
    for i, line in enumerate(lines):
        text = escape(line, quote=False)
        rows.append(f'<TR><TD ALIGN="LEFT">{f"<B>{text}</B>" if i == 0 else text}</TD></TR>')
    if legend:
        rows.append(f'<TR><TD ALIGN="LEFT">{legend}</TD></TR>')
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">' + "".join(rows) + "</TABLE>>"


#: The compact legend: (text, cell attributes) per item, one line.
STRIP = (
    ("device: square", {"bgcolor": FILL["device"], "border": "1"}),
    ("tombstone: cut corners", {"bgcolor": FILL["tombstone"], "border": "1"}),
    ("host-only: rounded", {"bgcolor": FILL["host-only"], "border": "1"}),
    ("full tombstone: 3-D box", {"bgcolor": FILL["full tombstone"], "border": "1"}),
    ("LOCK thick fl/ml&gt;0", {"border": "3", "color": LOCK_COLOR}),
    ("PIN double hr/hmr&gt;0", {"border": "2", "color": PIN_COLOR}),
    (f"{CHANGED_MARK} changed", {"bgcolor": HIGHLIGHT, "border": "1"}),
    ("deleted (dashed)", {"border": "1", "color": GHOST, "style": "dashed"}),
    ("… folded", {"bgcolor": COLLAPSED_FILL, "border": "1"}),
    ("KV=D/H M=d/h · Ld/Lh leaf sets · f m h LRU rank · hover a box for its counters", {}),
)


def legend_strip() -> str:
    """The compact legend as a small graphviz HTML table: a row of the node kinds (fill and
    outline), a row of borders and markers, and a line on how to read a label (about 500 pt
    wide, so the legend never makes a fitted drawing wider)."""
    cells = [f"<TD{''.join(f' {k.upper()}={chr(34)}{v}{chr(34)}' for k, v in attrs.items())}>"
             f'<FONT POINT-SIZE="8">{text}</FONT></TD>' for text, attrs in STRIP]
    rows = [cells[:4], cells[4:9]]  # kinds; then borders and markers (the how-to-read line apart)
    body = "".join(f"<TR>{''.join(r)}</TR>" for r in rows)
    inner = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="4" CELLPADDING="2">{body}</TABLE>'
    return (f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR><TD ALIGN="LEFT">{inner}</TD></TR>'
            f'<TR><TD ALIGN="LEFT">{cells[9].replace("<TD>", "").replace("</TD>", "")}</TD></TR></TABLE>')


_CHIP_SHAPE = {"tombstone": "clip-path:polygon(5px 0,calc(100% - 5px) 0,100% 5px,100% calc(100% - 5px),"
                            "calc(100% - 5px) 100%,5px 100%,0 calc(100% - 5px),0 5px)",
               "host-only": "border-radius:8px", "full tombstone": f"box-shadow:3px -3px 0 {BORDER}"}


def legend_html() -> str:
    """The same strip as plain HTML (the stepper and exported pages show it once, above the
    steps). Every coloured chip sets its own text colour, so it reads on light and dark pages."""
    css = {"bgcolor": "background:{}", "color": "border-color:{}", "style": "border-style:{}"}
    items = []
    for (text, attrs), kind in zip(STRIP, (*KIND_TEXT, *[None] * len(STRIP)), strict=False):
        rules = ["padding:1px 6px", "margin-right:6px", "display:inline-block", "white-space:nowrap"]
        if attrs.get("border"):
            rules.append(f"border:{attrs['border']}px solid {BORDER}")
        if attrs.get("bgcolor"):
            rules.append(f"color:{INK}")
        rules += [css[k].format(v) for k, v in attrs.items() if k in css]
        if kind in _CHIP_SHAPE:
            rules.append(_CHIP_SHAPE[kind])
        items.append(f'<span style="{";".join(rules)}">{text}</span>')
    return f'<div class="hm-legend" style="font:12px sans-serif;margin:4px 0">{"".join(items)}</div>'


def legend_label() -> str:
    """One HTML table showing every fill, border and marker, and how to read a label."""
    def cell(text: str, **attrs: str) -> str:
        extra = "".join(f' {k.upper()}="{val}"' for k, val in attrs.items())
        return f"<TD{extra}>{text}</TD>"

    rows = [f"<TR>{cell(KIND_TEXT[k], bgcolor=FILL[k], border='1')}</TR>" for k in KIND_TEXT]
    rows += [
        f"<TR>{cell('<B>LOCK</B>&#160;thick vermilion border: fl&gt;0 or ml&gt;0', border='3', color=LOCK_COLOR)}</TR>",
        f"<TR>{cell('<B>PIN</B>&#160;double purple border: hr&gt;0 or hmr&gt;0', border='2', color=PIN_COLOR)}</TR>",
        f"<TR>{cell('orange header and *: highlighted (changed by this step)', bgcolor=HIGHLIGHT, border='1')}</TR>",
        f"<TR>{cell('dashed grey: deleted by this step (ghost)', border='1', color=GHOST, style='dashed')}</TR>",
        f"<TR>{cell('… N more nodes: collapsed subtrees', bgcolor=COLLAPSED_FILL, border='1')}</TR>",
        "<TR><TD>#id [key] tokens · KV tier D/H · state tier d/h (- none)</TD></TR>",
        "<TR><TD>fl ml: device locks · hr hmr: host pins</TD></TR>",
        "<TR><TD>Ld / Lh: evictable device / host leaf · f m h: LRU position (1 = MRU)</TD></TR>",
    ]
    return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="3">'
            + "".join(rows) + "</TABLE>>")
