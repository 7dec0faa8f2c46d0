"""Stepper: an ipywidgets control to walk forward and back through recorded steps.

    rec = hm.Recorder(cache)
    with rec:
        cache.evict(8)
    hm.Stepper(rec)                      # decision steps; "all steps" shows the others too
    hm.Stepper(rec, names={p: "P"})      # named nodes in the trees, texts and tables
    rec.to_html("steps.html")            # the same, as one offline page

Each step shows one title (its operation and event text), the changes from the step before,
the tree (``render(step)``: changes highlighted, deletions as ghosts, big trees zoomed on the
changes) and the LRU table; the legend is shown once, above. Steps that change nothing are
hidden unless "all steps" is ticked. Keys: left / right arrows (with the pointer over the
widget). A step's view is built once and kept, so going back shows exactly what was shown
before. Works on a live :class:`~himamba.observe.recorder.Recorder`, on one loaded with
``Recorder.load_jsonl``, or on any sequence of Steps. Drivable from Python: ``next()``,
``prev()``, ``go(i)``, the buttons' ``click()``, ``all_steps.value``, ``index`` and ``step``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from himamba.errors import InvalidInputError
from himamba.observe.recorder import Recorder, Step
from himamba.viz.export import THEMES, Row, write_page
from himamba.viz.frames import DIFFERS_STYLE, Frame, build_frame, is_decision
from himamba.viz.style import legend_html


class Player:
    """Widgets over ``rows`` (a sequence of :class:`~himamba.viz.export.Row`, or a count and a
    function building row ``i`` on first use): controls, the legend once, and per column a
    title-and-changes pane, a tree pane and an LRU pane.

    ``decisions`` (one flag per row; default: each row's own) picks the rows shown while "all
    steps" is off. Attributes: ``widget``, ``prev_button``, ``next_button``, ``play``,
    ``slider``, ``all_steps``, ``position``, ``info_panes``, ``tree_panes``, ``lru_panes``.
    """

    def __init__(self, rows: Sequence[Row] | tuple[int, Callable[[int], Row]], *,
                 columns: Sequence[str] = ("",), decisions: Sequence[bool] | None = None,
                 show_lru: bool = True, all_steps: bool = False, theme: str = "auto") -> None:
        import ipywidgets as widgets

        if theme not in THEMES:
            raise InvalidInputError(f"theme must be one of {', '.join(THEMES)}, got {theme!r}")
        if isinstance(rows, tuple) and len(rows) == 2 and callable(rows[1]):
            self._count, self._build = rows
        else:
            fixed = list(rows)
            self._count, self._build = len(fixed), fixed.__getitem__
        self._rows: dict[int, Row] = {}
        self._decisions = list(decisions) if decisions is not None else [self._row(i).decision for i in range(self._count)]
        self.prev_button = widgets.Button(description="◀ prev", tooltip="previous step (←)", layout=widgets.Layout(width="80px"))
        self.next_button = widgets.Button(description="next ▶", tooltip="next step (→)", layout=widgets.Layout(width="80px"))
        self.play = widgets.Play(value=0, min=0, max=0, step=1, interval=900, description="play",
                                 tooltip="play the steps one by one (▶ play, ❚❚ pause, ■ stop)",
                                 show_repeat=False, layout=widgets.Layout(width="90px"))
        self.full_lru = widgets.Checkbox(value=False, description="whole LRU table", indent=False,
                                         tooltip="show every row of the LRU lists (built on demand)",
                                         layout=widgets.Layout(width="150px"))
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="step", continuous_update=False,
                                        readout=False, layout=widgets.Layout(width="30%"))
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.all_steps = widgets.Checkbox(value=all_steps, description=f"all steps ({self._count})", indent=False,
                                          layout=widgets.Layout(width="140px"))
        self.position = widgets.HTML()
        n = len(columns)
        self.info_panes = [widgets.HTML() for _ in range(n)]
        self.tree_panes = [widgets.HTML(layout=widgets.Layout(overflow="auto", max_width="100%")) for _ in range(n)]
        self.lru_panes = [widgets.HTML() for _ in range(n)]
        self.show_lru = show_lru
        self.prev_button.on_click(lambda _b: self.prev())
        self.next_button.on_click(lambda _b: self.next())
        self.slider.observe(lambda change: self._show(change["new"]), names="value")
        self.all_steps.observe(lambda _c: self._refilter(), names="value")
        self.full_lru.observe(lambda _c: self._show(self._index) if self._shown else None, names="value")
        controls = widgets.HBox([self.prev_button, self.next_button, widgets.Label("play:"), self.play, self.slider,
                                 self.all_steps, *([self.full_lru] if show_lru else []), self.position],
                                layout=widgets.Layout(flex_flow="row wrap"))
        panes = []
        for i, name in enumerate(columns):
            parts = ([widgets.HTML(f"<b>{escape(name)}</b>")] if name else []) + [self.info_panes[i], self.tree_panes[i]]
            parts += [self.lru_panes[i]] if show_lru else []
            side_by_side = widgets.Layout(flex="1 1 0", min_width="0") if n > 1 else widgets.Layout()
            panes.append(widgets.VBox(parts, layout=side_by_side))
        body = panes[0] if n == 1 else widgets.HBox(panes)
        self.widget = widgets.VBox([controls, widgets.HTML(_THEME_CSS + legend_html()), body])
        self.widget.add_class(f"hm-theme-{theme}")
        self.theme = theme
        self._keys = _arrow_keys(self.widget, self)
        self._shown: list[int] = []
        self._index = 0
        self._refilter()

    # -- navigation ----------------------------------------------------------------------------
    @property
    def index(self) -> int:
        """Position among the rows shown (0 when there are none)."""
        return self._index

    @property
    def row_index(self) -> int | None:
        """Index of the row shown among all rows (``None`` when there are none)."""
        return self._shown[self._index] if self._shown else None

    def __len__(self) -> int:
        return len(self._shown)

    def go(self, i: int) -> int | None:
        """Show shown-row ``i`` (negative counts from the end). Raises ``IndexError`` when out of
        range."""
        if not self._shown:
            return None
        n = len(self._shown)
        if not -n <= i < n:
            raise IndexError(f"step {i} out of range: {n} step(s) shown")
        self.slider.value = i % n  # the slider's observer calls _show
        if self.slider.value == self._index:
            self._show(i % n)
        return self.row_index

    def next(self) -> int | None:
        """Show the next step; stays on the last one."""
        return self.go(min(self._index + 1, len(self._shown) - 1)) if self._shown else None

    def prev(self) -> int | None:
        """Show the previous step; stays on the first one."""
        return self.go(max(self._index - 1, 0)) if self._shown else None

    # -- drawing -------------------------------------------------------------------------------
    def _row(self, i: int) -> Row:
        if i not in self._rows:
            self._rows[i] = self._build(i)
        return self._rows[i]

    def _refilter(self) -> None:
        current = self.row_index
        shown = [i for i in range(self._count) if self.all_steps.value or self._decisions[i]]
        self._shown = shown or list(range(self._count))
        last = max(len(self._shown) - 1, 0)
        self.slider.max = self.play.max = last
        target = self._shown.index(current) if current in self._shown else 0
        self._index = -1
        self.slider.value = target
        self._show(target)

    def _show(self, i: int) -> None:
        if not self._shown:
            self.info_panes[0].value = "<i>no steps recorded</i>"
            for pane in (*self.tree_panes, *self.lru_panes):
                pane.value = ""
            self.prev_button.disabled = self.next_button.disabled = True
            self.position.value = ""
            return
        self._index = i
        row = self._row(self._shown[i])
        for k, frame in enumerate(row.frames):
            self.info_panes[k].value = _info(frame, row)
            self.tree_panes[k].value = frame.svg if frame else ""
            self.lru_panes[k].value = (frame.full_lru() if self.full_lru.value else frame.lru) if frame else ""
        self.prev_button.disabled = i == 0
        self.next_button.disabled = i == len(self._shown) - 1
        kind = "steps" if self.all_steps.value else "decision steps"
        self.position.value = f"<span style='white-space:nowrap'>{i + 1} of {len(self._shown)} {kind}</span>"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


#: Colours of the widget's own HTML in each theme: "auto" follows JupyterLab's theme variables;
#: drawings keep their light fills (dark ink on every fill) on a transparent background.
_THEME_CSS = """<style>
.hm-theme-dark{background:#0f172a;color:#e5e7eb;padding:4px}
.hm-theme-dark .widget-html-content,.hm-theme-dark .widget-label{color:#e5e7eb}
.hm-theme-light{background:#fff;color:#111827;padding:4px}
.hm-theme-auto .widget-html-content{color:var(--jp-ui-font-color1,inherit)}
.hm-theme-dark svg>g>polygon:first-of-type,.hm-theme-auto svg>g>polygon:first-of-type{fill:transparent}
.hm-lru-view table{font-size:11px;border-collapse:collapse;margin:4px 8px 4px 0;display:inline-table;
  vertical-align:top}
.hm-lru-view{line-height:1.3}
.hm-lru-view td,.hm-lru-view th{padding:1px 5px;line-height:1.3}
.hm-lru-view caption{text-align:left;font-weight:bold;line-height:1.3;white-space:nowrap}
</style>"""


def _info(frame: Frame | None, row: Row) -> str:
    if frame is None:
        return '<i style="opacity:0.7">(no step here)</i>'
    text = frame.info_html()
    if row.differs and not frame.failed:
        return f'<div style="{DIFFERS_STYLE}">{text}<small>(differs from the other column)</small></div>'
    return text


def _arrow_keys(widget: Any, player: Player) -> Any:
    """Left / right arrow keys over ``widget`` step the player (needs ipyevents; None without)."""
    try:
        from ipyevents import Event
    except ImportError:  # pragma: no cover - ipyevents is a dependency; a bare install still works
        return None
    keys = Event(source=widget, watched_events=["keydown"], prevent_default_action=True)

    def on_key(event: dict[str, Any]) -> None:
        if event.get("key") == "ArrowRight":
            player.next()
        elif event.get("key") == "ArrowLeft":
            player.prev()

    keys.on_dom_event(on_key)
    return keys


class Stepper(Player):
    """A :class:`Player` over one recording: ``steps`` (a Recorder or a sequence of Steps), as
    they are when the Stepper is built (steps recorded later need a new Stepper).

    ``names`` (``{node_or_id: "P"}``) labels nodes in trees, texts and tables; ``all_steps=True``
    starts with every step shown; ``zoom=False`` draws big trees whole (as fitted);
    ``show_lru=False`` leaves the LRU table out; ``render_kw`` goes to
    :func:`himamba.viz.graph.render` (e.g. ``lru_rank=True``, ``layout="LR"``).
    ``info_html``, ``tree_html`` (``.value`` = current SVG markup) and ``lru_html`` are the
    panes; ``step`` is the step shown.
    """

    def __init__(self, steps: Recorder | Sequence[Step], *, show_lru: bool = True, all_steps: bool = False,
                 names: Mapping[Any, str] | None = None, zoom: bool = True, theme: str = "auto",
                 **render_kw: Any) -> None:
        self.steps: list[Step] = list(steps.steps if isinstance(steps, Recorder) else steps)
        if not all(isinstance(s, Step) for s in self.steps):
            raise TypeError("Stepper needs a Recorder or a sequence of Step objects")
        self.render_kw = {"names": names, "zoom": zoom, "show_lru": show_lru, **render_kw}

        def build(i: int) -> Row:
            frame = build_frame(self.steps[i], **self.render_kw)
            return Row((frame,), frame.title, frame.decision, anchor=self.steps[i].index)

        super().__init__((len(self.steps), build), decisions=[is_decision(s) for s in self.steps],
                         show_lru=show_lru, all_steps=all_steps, theme=theme)
        self.info_html, self.tree_html, self.lru_html = self.info_panes[0], self.tree_panes[0], self.lru_panes[0]

    @property
    def step(self) -> Step | None:
        """The step shown, or ``None`` when there are no steps."""
        return self.steps[self.row_index] if self._shown else None

    def to_html(self, path: str | Path, title: str = "himamba: recorded steps") -> Path:
        """All steps as one offline page (see :func:`to_html`), in this stepper's theme."""
        return to_html(self.steps, path, title=title, theme=self.theme, **self.render_kw)


def to_html(steps: Recorder | Sequence[Step], path: str | Path, *, title: str = "himamba: recorded steps",
            names: Mapping[Any, str] | None = None, show_lru: bool = True, zoom: bool = True,
            theme: str = "auto", **render_kw: Any) -> Path:
    """Write ``steps`` as one self-contained HTML page (see :mod:`himamba.viz.export`): decision
    steps by default, every step with the "all steps" box, a link per step (``#step=N``, N the
    step's index), a play button and a theme menu (``theme``: auto, light or dark). Follows no
    symbolic link; returns the path."""
    steps = list(steps.steps if isinstance(steps, Recorder) else steps)
    if theme not in THEMES:
        raise InvalidInputError(f"theme must be one of {', '.join(THEMES)}, got {theme!r}")
    rows = []
    for step in steps:
        frame = build_frame(step, names=names, show_lru=show_lru, zoom=zoom, **render_kw)
        heading = f"step {step.index}" + (" · FAILED" if frame.failed else "")
        rows.append(Row((frame,), heading, frame.decision, anchor=step.index))
    return write_page(path, title, rows, theme=theme)
