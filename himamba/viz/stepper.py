"""Stepper: an ipywidgets control to walk forward and back through recorded steps.

    rec = hm.Recorder(cache)
    with rec:
        cache.evict(8)
    hm.Stepper(rec)          # in a notebook: buttons, play, slider, step text, tree, LRU table

Each step shows its operation and event text, the diff from the step before, the tree
(``render(step)``: changes highlighted, deletions as ghosts) and the LRU table. A step's SVG
and HTML are built once and kept, so going back shows exactly what was shown before. Works on a
live :class:`~himamba.observe.recorder.Recorder`, on one loaded with ``Recorder.load_jsonl``, or
on any sequence of Steps. Drivable from Python: ``next()``, ``prev()``, ``go(i)``, the buttons'
``click()``, ``index`` and ``step``. ipywidgets is imported when a Stepper is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from himamba.observe.recorder import Recorder, Step
from himamba.observe.snapshot import diff
from himamba.viz.graph import to_svg
from himamba.viz.tables import lru_table, style_lru


class Stepper:
    """Widgets over ``steps`` (a Recorder or a sequence of Steps), as they are when the Stepper
    is built (steps recorded later need a new Stepper).

    ``render_kw`` is passed to :func:`himamba.viz.graph.render` (e.g. ``lru_rank=True``,
    ``max_nodes=60``, ``legend=False``); ``show_lru=False`` leaves the LRU table out.
    Attributes: ``widget`` (the VBox), ``prev_button``, ``next_button``, ``play``, ``slider``,
    ``info_html``, ``tree_html`` (``.value`` = current SVG markup), ``lru_html``.
    """

    def __init__(self, steps: Recorder | Sequence[Step], *, show_lru: bool = True, **render_kw: Any) -> None:
        import ipywidgets as widgets

        self.steps: list[Step] = list(steps.steps if isinstance(steps, Recorder) else steps)
        if not all(isinstance(s, Step) for s in self.steps):
            raise TypeError("Stepper needs a Recorder or a sequence of Step objects")
        self.show_lru = show_lru
        self.render_kw = render_kw
        self._cache: dict[int, tuple[str, str, str]] = {}
        last = max(len(self.steps) - 1, 0)
        self.prev_button = widgets.Button(description="◀ prev", tooltip="previous step",
                                          layout=widgets.Layout(width="80px"))
        self.next_button = widgets.Button(description="next ▶", tooltip="next step",
                                          layout=widgets.Layout(width="80px"))
        self.play = widgets.Play(value=0, min=0, max=last, step=1, interval=800, description="play")
        self.slider = widgets.IntSlider(value=0, min=0, max=last, description="step",
                                        continuous_update=False, layout=widgets.Layout(width="60%"))
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.info_html = widgets.HTML()
        self.tree_html = widgets.HTML(layout=widgets.Layout(overflow="auto", max_width="100%"))
        self.lru_html = widgets.HTML()
        self.prev_button.on_click(lambda _b: self.prev())
        self.next_button.on_click(lambda _b: self.next())
        self.slider.observe(lambda change: self._show(change["new"]), names="value")
        controls = widgets.HBox([self.prev_button, self.next_button, self.play, self.slider])
        parts = [controls, self.info_html, self.tree_html] + ([self.lru_html] if show_lru else [])
        self.widget = widgets.VBox(parts)
        self._index = 0
        self._show(0)

    # -- navigation ----------------------------------------------------------------------------
    @property
    def index(self) -> int:
        """Index of the step shown (0 when there are no steps)."""
        return self._index

    @property
    def step(self) -> Step | None:
        """The step shown, or ``None`` when there are no steps."""
        return self.steps[self._index] if self.steps else None

    def __len__(self) -> int:
        return len(self.steps)

    def go(self, i: int) -> Step | None:
        """Show step ``i`` (negative counts from the end). Raises ``IndexError`` when out of range."""
        if not self.steps:
            return None
        n = len(self.steps)
        if not -n <= i < n:
            raise IndexError(f"step {i} out of range: {n} step(s)")
        self.slider.value = i % n  # the slider's observer calls _show (and moves the play widget)
        return self.step

    def next(self) -> Step | None:
        """Show the next step; stays on the last one."""
        return self.go(min(self._index + 1, len(self.steps) - 1)) if self.steps else None

    def prev(self) -> Step | None:
        """Show the previous step; stays on the first one."""
        return self.go(max(self._index - 1, 0)) if self.steps else None

    # -- drawing -------------------------------------------------------------------------------
    def _parts(self, i: int) -> tuple[str, str, str]:
        if i not in self._cache:
            step = self.steps[i]
            self._cache[i] = (self._info(step, i), to_svg(step, **self.render_kw),
                              style_lru(lru_table(step)).hide(axis="index").to_html() if self.show_lru else "")
        return self._cache[i]

    def _info(self, step: Step, i: int) -> str:
        changes = diff(step.before, step.snapshot) if step.before is not None else []
        items = "".join(f"<li>{escape(c)}</li>" for c in changes) or "<li>(no change)</li>"
        return (f"<b>step {step.index} ({i + 1} of {len(self.steps)})</b> · "
                f"operation #{step.op_index}: <code>{escape(step.op)}</code><br>"
                f"<b>{escape(step.kind)}</b>: {escape(step.text)}"
                f"<details><summary>{len(changes)} change(s)</summary><ul>{items}</ul></details>")

    def _show(self, i: int) -> None:
        if not self.steps:
            self.info_html.value = "<i>no steps recorded</i>"
            self.tree_html.value = self.lru_html.value = ""
            self.prev_button.disabled = self.next_button.disabled = True
            return
        self._index = i
        info, svg, lru = self._parts(i)
        self.info_html.value, self.tree_html.value, self.lru_html.value = info, svg, lru
        self.prev_button.disabled = i == 0
        self.next_button.disabled = i == len(self.steps) - 1

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
