"""Compare: two recordings aligned step by step, shown side by side from where they part.

    cmp = hm.compare(rec_on, rec_off, labels=("B1 switch on", "B1 fixed"))
    cmp.first_difference        # index of the first row where the two differ (None: identical)
    cmp                         # in a notebook: a stepper with both trees side by side
    cmp.to_html("b1.html")      # one self-contained page, offline

Steps are aligned by operation first, then by step: the two sequences of public operations
(by name) are matched, longest common sequence first (:mod:`difflib`); inside each matched pair
of operations their steps are matched on what they say (kind and text, node ids kept); an
operation or a step with no partner gets empty cells, so two steps of different operations
never share a row. A failure step (an operation that raised) is a step like any other and
differs from whatever stands beside it. Only decision steps are aligned unless
``all_steps=True``. The view starts one row before the first difference (for context); the
rows before it are the same in both recordings.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from himamba.errors import InvalidInputError
from himamba.observe.recorder import Recorder, Step
from himamba.viz.export import Row, write_page
from himamba.viz.frames import Frame, build_frame, is_decision


def _signature(step: Step) -> tuple[str, str, str]:
    return (step.op, step.kind, step.text)


def _steps(rec: Recorder | Sequence[Step], all_steps: bool) -> list[Step]:
    steps = list(rec.steps if isinstance(rec, Recorder) else rec)
    if not all(isinstance(s, Step) for s in steps):
        raise InvalidInputError("compare needs two Recorders or two sequences of Step objects")
    return steps if all_steps else [s for s in steps if is_decision(s)]


def _operations(steps: Sequence[Step]) -> list[list[Step]]:
    groups: list[list[Step]] = []
    for s in steps:
        if groups and groups[-1][0].op_index == s.op_index:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def _pair(a: Sequence[Any], b: Sequence[Any], key: Any) -> list[tuple[str, list[Any], list[Any]]]:
    """Blocks of ``a`` and ``b``: ("equal", same-length runs) or ("other", the runs between)."""
    matcher = difflib.SequenceMatcher(None, [key(x) for x in a], [key(y) for y in b], autojunk=False)
    return [("equal" if tag == "equal" else "other", list(a[i1:i2]), list(b[j1:j2]))
            for tag, i1, i2, j1, j2 in matcher.get_opcodes()]


def _side_by_side(left: list[Step], right: list[Step]) -> list[tuple[Step | None, Step | None]]:
    return [(left[k] if k < len(left) else None, right[k] if k < len(right) else None)
            for k in range(max(len(left), len(right)))]


def align(a: Sequence[Step], b: Sequence[Step]) -> list[tuple[Step | None, Step | None]]:
    """Pairs of steps (``None`` where one side has no partner), in order: operations matched by
    name first, then the steps of each matched pair of operations (see the module docstring)."""
    pairs: list[tuple[Step | None, Step | None]] = []
    for tag, ops_a, ops_b in _pair(_operations(a), _operations(b), lambda op: op[0].op):
        if tag != "equal":
            pairs += [(s, None) for op in ops_a for s in op] + [(None, s) for op in ops_b for s in op]
            continue
        for op_a, op_b in zip(ops_a, ops_b, strict=True):
            for inner, left, right in _pair(op_a, op_b, lambda s: (s.kind, s.text)):
                pairs += list(zip(left, right, strict=True)) if inner == "equal" else _side_by_side(left, right)
    return pairs


@dataclass
class Comparison:
    """Two recordings aligned (see the module docstring). ``pairs`` holds every aligned pair,
    ``first_difference`` the index of the first pair that differs (``None`` when the two say
    the same things), ``labels`` the column names."""

    pairs: list[tuple[Step | None, Step | None]]
    labels: tuple[str, str]
    render_kw: dict[str, Any] = field(default_factory=dict)
    _rows: list[Row] | None = None

    @property
    def first_difference(self) -> int | None:
        for i, (x, y) in enumerate(self.pairs):
            if x is None or y is None or _signature(x) != _signature(y):
                return i
        return None

    @property
    def start(self) -> int:
        """The first pair shown: one before the first difference (0 when none differs)."""
        first = self.first_difference
        return max((first or 0) - 1, 0)

    def rows(self) -> list[Row]:
        """The player rows from :attr:`start` on (built once)."""
        if self._rows is None:
            cache: dict[int, Frame] = {}

            def frame(step: Step | None) -> Frame | None:
                if step is None:
                    return None
                if id(step) not in cache:
                    cache[id(step)] = build_frame(step, **self.render_kw)
                return cache[id(step)]

            rows = []
            for i, (x, y) in enumerate(self.pairs[self.start:], self.start):
                differs = x is None or y is None or _signature(x) != _signature(y)
                op = (x or y).op
                failed = " · FAILED" if any(s is not None and s.failed for s in (x, y)) else ""
                heading = (f"aligned step {i + 1} of {len(self.pairs)} · {op}{failed}"
                           + (" · differs" if differs else " · same"))
                rows.append(Row((frame(x), frame(y)), heading, True, differs, anchor=i + 1))
            self._rows = rows
        return self._rows

    @property
    def failures(self) -> list[tuple[int, str, Step]]:
        """The failure steps: (aligned row index, column label, step), in order."""
        return [(i, self.labels[k], s) for i, pair in enumerate(self.pairs) for k, s in enumerate(pair)
                if s is not None and s.failed]

    def intro(self) -> str:
        """A paragraph (HTML, escaped) on where the recordings part and where either failed."""
        first = self.first_difference
        if first is None:
            text = f"The two recordings say the same things in all {len(self.pairs)} steps."
        else:
            if first == 0:
                same = "They differ from the first aligned step"
            elif first == 1:
                same = "The first aligned step is the same in both; they part at step 2"
            else:
                same = f"The first {first} aligned steps are the same in both; they part at step {first + 1}"
            text = f"{same} (dashed orange line), shown here from step {self.start + 1}."
        for i, label, step in self.failures:
            text += f" {label} fails at aligned step {i + 1} (#step={i + 1}): {step.text}."
        return f"<p>{escape(text)}</p>"

    def to_html(self, path: str | Path, title: str | None = None, theme: str = "auto",
                open_at_failure: bool = False) -> Path:
        """Write one self-contained page with both recordings side by side (``theme``: auto,
        light or dark; ``open_at_failure``: the page opens on the first failure step, where
        there is one); follows no symbolic link; returns the path."""
        title = title or f"{self.labels[0]} vs {self.labels[1]}"
        failures = self.failures
        open_at = failures[0][0] + 1 if open_at_failure and failures else None
        return write_page(path, title, self.rows(), self.labels, self.intro(), theme, open_at)

    def _ipython_display_(self) -> None:
        from IPython.display import HTML, display

        from himamba.viz.stepper import Player

        display(HTML(self.intro()))
        display(Player(self.rows(), columns=self.labels).widget)


def compare(rec_a: Recorder | Sequence[Step], rec_b: Recorder | Sequence[Step], *,
            labels: Sequence[str] = ("A", "B"), all_steps: bool = False,
            names: Mapping[Any, str] | None = None, **render_kw: Any) -> Comparison:
    """Align two recordings (Recorders or sequences of Steps); see the module docstring.
    ``labels`` names the two columns; ``names`` and ``render_kw`` go to every drawing."""
    if len(labels) != 2:
        raise InvalidInputError(f"labels must name the two recordings, got {list(labels)!r}")
    pairs = align(_steps(rec_a, all_steps), _steps(rec_b, all_steps))
    return Comparison(pairs, (str(labels[0]), str(labels[1])), {"names": names, **render_kw})
