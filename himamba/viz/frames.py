"""Frames: what one recorded step looks like on a page — one title, its changes, its tree, its
LRU table — built once and shared by the notebook stepper, the HTML export and the comparison.

A step is a *decision* step when it changed something (a node, an LRU order, a counter, a pool)
or is a cascade decision (which may stop without changing anything); the viewers show decision
steps by default and every step on request. Trees above :data:`ZOOM_ABOVE` nodes are drawn
zoomed on what the step changed (the root, the paths to the changed nodes, their children;
everything else folded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from himamba.observe.recorder import Step, with_names
from himamba.observe.snapshot import diff
from himamba.viz.common import name_map
from himamba.viz.graph import to_svg
from himamba.viz.tables import lru_table, style_lru

ZOOM_ABOVE = 40  # nodes: bigger trees are drawn zoomed on the step's changes
DECISION_KINDS = frozenset({"cascade"})


def changes(step: Step) -> list[str]:
    """The diff sentences of ``step`` (empty for a first step without ``before``)."""
    return diff(step.before, step.snapshot) if step.before is not None else []


def is_decision(step: Step) -> bool:
    """True when the step changed something or is a cascade decision."""
    return bool(step.changed or step.deleted or step.kind in DECISION_KINDS or changes(step))


def step_title(step: Step, names: Mapping[int, str] | None = None) -> str:
    """``operation #2 evict_host(2) · cascade: stop: host pin on #1`` (plain text)."""
    labels = names or {}
    return f"operation #{step.op_index} {step.op} · {step.kind}: {with_names(step.text, labels)}"


@dataclass(frozen=True)
class Frame:
    """One step ready to show: ``title`` (plain text), ``changes`` (HTML list), ``svg`` (the
    tree), ``lru`` (HTML table or empty), ``decision`` (shown by default)."""

    step: Step
    title: str
    changes: str
    svg: str
    lru: str
    decision: bool


def build_frame(step: Step, *, names: Mapping[Any, str] | None = None, show_lru: bool = True,
                zoom: bool = True, **render_kw: Any) -> Frame:
    """Render ``step`` once: the tree without its own title or legend (the viewer shows both
    once), zoomed on its changes when the tree is big and ``zoom`` is on."""
    labels = name_map(names)
    found = changes(step)
    items = "".join(f"<li>{escape(with_names(c, labels))}</li>" for c in found)
    summary = f"{len(found)} change{'s' if len(found) != 1 else ''}"
    listing = (f"<details><summary>{summary}</summary><ul>{items}</ul></details>" if found
               else "<div><i>no change</i></div>")
    kw = {"title": False, "legend": False, "names": names, **render_kw}
    if zoom and "focus" not in render_kw and len(step.snapshot) > ZOOM_ABOVE:
        around = [n for n in (*step.changed, *step.event.nodes) if n in step.snapshot.by_id]
        if around:
            kw["focus"] = around
    lru = ""
    if show_lru:
        table = lru_table(step, names=names)
        lru = style_lru(table).hide(axis="index").to_html() if len(table) else "<div><i>LRU lists empty</i></div>"
    return Frame(step, step_title(step, labels), listing, to_svg(step, **kw), lru,
                 bool(step.changed or step.deleted or step.kind in DECISION_KINDS or found))
