"""Playground: a widget to drive a cache by hand — pick a cache, type a request or pick an
action, watch the tree, the tables and the step texts change, undo.

    pg = hm.Playground()                     # "tiered, small"; hm.Playground("device only, small")
    pg                                       # in a notebook: the widget
    pg.do("serve", "1 2 3 4")                # the same from Python (what the buttons call)
    pg.undo()
    pg.session.script()                      # the actions as a script `himamba replay` runs

What each action does is :mod:`himamba.viz.play_session`'s; this module only shows it. After each
action: the tree (what the action changed has an orange header and ``*``, what it deleted is
drawn dashed), one line per recorded step (a failure in bold with the exception), the invariants'
verdict, the compact LRU view, the counters and the ``hm.text`` dump. Bad input shows its
message and changes nothing.
"""

from __future__ import annotations

from html import escape
from typing import Any

from himamba.errors import InvalidInputError
from himamba.observe.snapshot import changed_nodes, take
from himamba.viz.common import printable
from himamba.viz.graph import to_svg
from himamba.viz.lru_view import compact_html
from himamba.viz.play_session import ACTIONS, PRESETS, PlaySession
from himamba.viz.style import legend_html
from himamba.viz.tables import counters_table
from himamba.viz.text import text

_FAILED_ITEM = '<li style="font-weight:bold">✗ FAILED · '
_PLACEHOLDER = {"tokens": "token ids, e.g. 1 2 3 4", "count": "tokens, e.g. 4", "none": "(nothing to type)"}


class Playground:
    """The widget (``widget``) over a :class:`~himamba.viz.play_session.PlaySession`
    (``session``). Panes: ``tree_pane``, ``steps_pane``, ``status``, ``lru_pane``,
    ``counters_pane``, ``text_pane``, ``history_pane``. Controls: ``preset``, ``action``,
    ``arg``, ``do_button``, ``undo_button``, ``reset_button``."""

    def __init__(self, preset: str = "tiered, small") -> None:
        import ipywidgets as widgets

        self.session = PlaySession(preset)
        self.preset = widgets.Dropdown(options=list(PRESETS), value=preset, description="cache",
                                       layout=widgets.Layout(width="320px"))
        self.action = widgets.Dropdown(options=list(ACTIONS), value="serve", description="action",
                                       layout=widgets.Layout(width="220px"))
        self.arg = widgets.Text(value="1 2 3 4", placeholder=_PLACEHOLDER["tokens"],
                                layout=widgets.Layout(width="220px"))
        self.do_button = widgets.Button(description="do it", button_style="primary", tooltip="run the action")
        self.undo_button = widgets.Button(description="undo", tooltip="take back the last action")
        self.reset_button = widgets.Button(description="new cache", tooltip="a fresh cache of the chosen kind")
        self.help = widgets.HTML()
        self.status = widgets.HTML()
        self.tree_pane = widgets.HTML(layout=widgets.Layout(overflow="auto", max_width="100%"))
        self.steps_pane = widgets.HTML()
        self.lru_pane, self.counters_pane = widgets.HTML(), widgets.HTML()
        self.text_pane, self.history_pane = widgets.HTML(), widgets.HTML()
        more = widgets.Accordion(children=[self.lru_pane, self.counters_pane, self.text_pane, self.history_pane])
        for i, title in enumerate(("LRU lists", "counters and pools", "text dump (hm.text)", "actions so far")):
            more.set_title(i, title)
        self.do_button.on_click(lambda _b: self._try(lambda: self.do(self.action.value, self.arg.value)))
        self.undo_button.on_click(lambda _b: self.undo())
        self.reset_button.on_click(lambda _b: self.new_cache(self.preset.value))
        self.action.observe(lambda _c: self._describe(), names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.preset, self.reset_button]),
            widgets.HBox([self.action, self.arg, self.do_button, self.undo_button]),
            self.help, self.status, widgets.HTML(legend_html()), self.tree_pane, self.steps_pane, more])
        self._describe()
        self._show(None, [])

    # -- actions ---------------------------------------------------------------------------------
    def do(self, name: str, arg: Any = None) -> None:
        """Do one action (see :data:`~himamba.viz.play_session.ACTIONS`) and show what it did.
        Bad input raises :class:`~himamba.errors.InvalidInputError` (the buttons show it)."""
        before = take(self.session.cache)
        steps = self.session.do(name, arg)
        self._show(before, steps)

    def undo(self) -> None:
        """Take back the last action."""
        last = self.session.undo()
        self._show(None, [], f"took back: {last}" if last else "nothing to take back")

    def new_cache(self, preset: str) -> None:
        """Start again on a fresh cache of ``preset``."""
        self.session = PlaySession(preset)
        self._show(None, [], f"a fresh cache: {preset}")

    def _try(self, fn: Any) -> None:
        try:
            fn()
        except InvalidInputError as exc:
            self.status.value = f'<b style="color:#d55e00">✗ not done:</b> {escape(printable(str(exc)))}'

    def _describe(self) -> None:
        what, help_text = ACTIONS[self.action.value]
        self.arg.placeholder = _PLACEHOLDER[what]
        self.arg.disabled = what == "none"
        self.help.value = f"<small>{escape(help_text)}</small>"

    # -- drawing ---------------------------------------------------------------------------------
    def _show(self, before: Any, steps: list, note: str = "") -> None:
        s = self.session
        after = take(s.cache)
        changed, deleted = changed_nodes(before, after)
        ghosts = [before.node(d) for d in deleted] if before is not None else []
        self.tree_pane.value = to_svg(after, highlight=changed, ghosts=ghosts, lru_rank=True, legend=False)
        lines = [(_FAILED_ITEM if st.failed else "<li>") + f"{escape(printable(st.kind))}: "
                 f"{escape(printable(st.text))}</li>" for st in steps]
        if before is not None and not steps:
            lines = ["<li><i>no step: the action changed nothing</i></li>"]
        head = f"<b>{escape(str(s.actions[-1]))}</b>" if before is not None and s.actions else ""
        self.steps_pane.value = f"{head}<ol start='0'>{''.join(lines)}</ol>" if lines else ""
        broken = s.violations()
        verdict = ("invariants hold" if not broken else
                   f'<b style="color:#d55e00">✗ {len(broken)} invariant(s) broken:</b> ' + escape(broken[0]))
        error = (f' · <b style="color:#d55e00">✗ the operation raised {escape(type(s.error).__name__)}:</b> '
                 f"{escape(printable(str(s.error)))}" if s.error is not None else "")
        extra = f" · {escape(note)}" if note else ""
        self.status.value = f"{len(s.actions)} action(s) · {verdict}{error}{extra}"
        self.lru_pane.value = compact_html(after, changed=changed)
        self.counters_pane.value = counters_table(after).to_html(index=False, na_rep="")
        self.text_pane.value = f"<pre>{escape(text(after))}</pre>"
        self.history_pane.value = ("<ol>" + "".join(f"<li>{escape(str(a))}</li>" for a in s.actions) + "</ol>"
                                   if s.actions else "<i>none yet</i>")
        self.undo_button.disabled = not s.actions

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
