"""Floor 4: what a person sees — graphviz trees, pandas tables and the step-by-step widget.

Everything here renders :class:`~himamba.observe.snapshot.Snapshot` objects (a live cache is
snapshotted first), never live internals. Importing this package registers the Jupyter
renderer, so caches, Snapshots and Steps display as an SVG tree in a notebook.
pandas and ipywidgets are imported on first use (they are slow to import).
"""

from __future__ import annotations

from typing import Any

from himamba.observe.display import register_exporter, register_renderer
from himamba.observe.recorder import Step
from himamba.observe.snapshot import Snapshot
from himamba.viz.compare import Comparison, compare
from himamba.viz.graph import render, to_svg
from himamba.viz.playground import Playground
from himamba.viz.stepper import Player, Stepper, to_html
from himamba.viz.tables import (
    counters_table,
    diff_table,
    lru_table,
    node_table,
    style_lru,
    style_nodes,
)
from himamba.viz.text import text


def _plain(obj: Any) -> str:
    """Short text form for the ``text/plain`` entry (dataclass reprs of snapshots are huge)."""
    if isinstance(obj, Step):
        return f"{obj}\n{obj.snapshot.tree_text()}"
    if isinstance(obj, Snapshot):
        return f"Snapshot({len(obj) - 1} nodes, clock={obj.clock:g})\n{obj.tree_text()}"
    return repr(obj)


def mimebundle(obj: Any) -> dict[str, Any]:
    """The Jupyter display of a cache, Snapshot or Step: ``{"image/svg+xml": svg,
    "text/plain": text}``; only the text when the ``dot`` program is missing."""
    import graphviz

    text = _plain(obj)
    try:
        svg = to_svg(obj)
    except graphviz.ExecutableNotFound:
        return {"text/plain": text}
    return {"image/svg+xml": svg, "text/plain": text}


register_renderer("tree", mimebundle)
register_exporter("html", to_html)

__all__ = [
    "Comparison",
    "Player",
    "Playground",
    "Stepper",
    "compare",
    "counters_table",
    "diff_table",
    "lru_table",
    "mimebundle",
    "node_table",
    "render",
    "style_lru",
    "style_nodes",
    "text",
    "to_html",
    "to_svg",
]
