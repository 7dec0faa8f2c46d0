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
from himamba.viz.common import name_map, printable
from himamba.viz.graph import in_flight_text, to_svg
from himamba.viz.lru_view import FULL_ROWS_IN_PAGE, compact_html, full_html, rows_in

ZOOM_ABOVE = 40  # nodes: bigger trees are drawn zoomed on the step's changes
DECISION_KINDS = frozenset({"cascade", "op_failed"})
FAILED_STYLE = "border-left:6px double #d55e00;padding-left:6px"  # a failure: a double bar and "FAILED"
DIFFERS_STYLE = "border-left:4px solid #e08a00;padding-left:6px"


def changes(step: Step) -> list[str]:
    """The diff sentences of ``step`` (empty for a first step without ``before``)."""
    return diff(step.before, step.snapshot) if step.before is not None else []


def is_decision(step: Step) -> bool:
    """True when the step changed something or is a cascade decision."""
    return bool(step.changed or step.deleted or step.kind in DECISION_KINDS or changes(step))


def step_title(step: Step, names: Mapping[int, str] | None = None) -> str:
    """``operation #2 evict_host · cascade: stop: host pin on #1`` (plain text); a failure step
    reads ``FAILED · operation #5 evict_host · op_failed: evict_host raised ...``."""
    labels = names or {}
    text = f"operation #{step.op_index} {step.op} · {step.kind}: {printable(with_names(step.text, labels))}"
    return f"FAILED · {text}" if step.kind == "op_failed" else text


@dataclass(frozen=True)
class Frame:
    """One step ready to show: ``title`` (plain text), ``changes`` (HTML list), ``svg`` (the
    tree), ``lru`` (the compact LRU view, or empty), ``decision`` (shown by default),
    ``lru_full`` (the whole LRU table when it has at most
    :data:`~himamba.viz.lru_view.FULL_ROWS_IN_PAGE` rows, else empty: :meth:`full_lru` builds
    it on demand), ``failed`` (an operation that raised)."""

    step: Step
    title: str
    changes: str
    svg: str
    lru: str
    decision: bool
    lru_full: str = ""
    failed: bool = False
    names: Mapping[Any, str] | None = None

    def full_lru(self) -> str:
        """The whole LRU table of this step (escaped HTML), built now when not kept."""
        return self.lru_full or full_html(self.step.snapshot, self.names, self.step.changed)

    def info_html(self) -> str:
        """The title (a failure: a double vermilion bar and the word FAILED) and the changes."""
        bar = f' style="{FAILED_STYLE}"' if self.failed else ""
        return f'<div class="hm-info"{bar}><b class="hm-title">{escape(self.title)}</b>{self.changes}</div>'


def build_frame(step: Step, *, names: Mapping[Any, str] | None = None, show_lru: bool = True,
                zoom: bool = True, **render_kw: Any) -> Frame:
    """Render ``step`` once: the tree without its own title or legend (the viewer shows both
    once), zoomed on its changes when the tree is big and ``zoom`` is on."""
    labels = name_map(names)
    found = changes(step)
    changed_something = bool(found)
    summary = f"{len(found)} change{'s' if len(found) != 1 else ''}" if found else "no change"
    if step.snapshot.in_flight:
        found.append(in_flight_text(step.snapshot))
        summary += f" · {len(step.snapshot.in_flight)} in flight"
    items = "".join(f"<li>{escape(printable(with_names(c, labels)))}</li>" for c in found)
    listing = (f"<details><summary>{summary}</summary><ul>{items}</ul></details>" if found
               else "<div><i>no change</i></div>")
    kw = {"title": False, "legend": False, "names": names, **render_kw}
    if zoom and "focus" not in render_kw and len(step.snapshot) > ZOOM_ABOVE:
        around = [n for n in (*step.changed, *step.event.nodes) if n in step.snapshot.by_id]
        if around:
            kw["focus"] = around
    lru = full = ""
    if show_lru:
        lru = compact_html(step.snapshot, labels, step.changed)
        full = full_html(step.snapshot, labels, step.changed) if rows_in(step.snapshot) <= FULL_ROWS_IN_PAGE else ""
    return Frame(step, step_title(step, labels), listing, to_svg(step, **kw), lru,
                 bool(step.changed or step.deleted or step.kind in DECISION_KINDS or changed_something), full,
                 step.kind == "op_failed", labels)
