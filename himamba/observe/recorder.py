"""Recorder: turn a cache's events into a list of steps, each with the snapshot right after it.

    with hm.Recorder(cache) as rec:
        cache.evict(4)
    rec.steps                 # [Step(...), ...], one per event
    rec.operations            # [[steps of the 1st public call], [steps of the 2nd], ...]
    rec.to_frame()            # a pandas DataFrame, one row per step
    rec.to_html("steps.html")  # one offline page stepping through them

Each step knows which public operation caused it (``op``, ``op_index``) and which nodes the
step changed or deleted (from the snapshot before). Steps export to JSON lines and load back.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from himamba.errors import InvalidInputError
from himamba.observe.display import Displayable, exporter
from himamba.observe.events import CacheListener, Event, EventKind
from himamba.observe.history import SnapshotLog, intern
from himamba.observe.snapshot import Snapshot, take
from himamba.validate import prepare_output_file, write_text_no_follow

_NODE_REF = re.compile(r"#(\d+)")


def with_names(text: str, names: Mapping[Any, str] | None) -> str:
    """``text`` with every ``#3`` of a node named in ``names`` (``{node_or_id: "P"}``) written
    ``P #3``."""
    if not names:
        return text
    labels = {getattr(k, "id", k): str(v) for k, v in names.items()}
    return _NODE_REF.sub(lambda m: f"{labels[int(m.group(1))]} #{m.group(1)}" if int(m.group(1)) in labels
                         else m.group(0), text)


class Step(Displayable):
    """One recorded event with the cache state after it (``snapshot``) and before it
    (``before``). A step recorded by a :class:`Recorder` reads both from the recording's
    compact :class:`~himamba.observe.history.SnapshotLog` when asked; a step built by hand
    holds them itself. A failure step (``failed``) is an operation that raised: its text
    names the exception and its snapshot is the state the exception left."""

    __slots__ = ("index", "op_index", "op", "event", "changed", "deleted", "_snapshot", "_before", "_log", "_pos")

    def __init__(self, index: int, op_index: int, op: str, event: Event, snapshot: Snapshot | None = None,
                 changed: tuple[int, ...] = (), deleted: tuple[int, ...] = (), before: Snapshot | None = None, *,
                 log: SnapshotLog | None = None, pos: int = -1) -> None:
        if snapshot is None and log is None:
            raise TypeError("a Step needs its snapshot (or the log and position holding it)")
        self.index, self.op_index, self.op, self.event = index, op_index, op, event
        self.changed, self.deleted = tuple(changed), tuple(deleted)
        self._snapshot, self._before, self._log, self._pos = snapshot, before, log, pos

    @property
    def snapshot(self) -> Snapshot:
        """The cache state right after this step."""
        return self._snapshot if self._log is None else self._log[self._pos]

    @property
    def before(self) -> Snapshot | None:
        """The cache state right before this step (``None`` for a first step without one)."""
        if self._log is None:
            return self._before
        return self._log[self._pos - 1] if self._pos > 0 else None

    @property
    def text(self) -> str:
        return self.event.text

    @property
    def kind(self) -> str:
        return self.event.kind.value

    @property
    def failed(self) -> bool:
        """True for the step that ends an operation which raised."""
        return self.event.kind is EventKind.OP_FAILED

    def __str__(self) -> str:
        return f"[{self.index}] {self.op}: {self.event}"

    def __repr__(self) -> str:
        return f"Step({self.index}, op {self.op_index} {self.op}, {self.kind}: {self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Step):
            return NotImplemented
        return ((self.index, self.op_index, self.op, self.event, self.changed, self.deleted, self.snapshot,
                 self.before) == (other.index, other.op_index, other.op, other.event, other.changed, other.deleted,
                                  other.snapshot, other.before))

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        e = self.event
        return {
            "index": self.index, "op_index": self.op_index, "op": self.op,
            "event": {"kind": e.kind.value, "text": e.text, "nodes": list(e.nodes), "depth": e.depth,
                      "data": {k: v for k, v in e.data.items() if isinstance(v, (int, float, str, bool, type(None)))}},
            "snapshot": self.snapshot.to_dict(), "changed": list(self.changed), "deleted": list(self.deleted),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], before: Snapshot | None = None) -> Step:
        e = d["event"]
        event = Event(EventKind(e["kind"]), str(e["text"]), tuple(e["nodes"]), int(e["depth"]), dict(e["data"]))
        return cls(int(d["index"]), int(d["op_index"]), str(d["op"]), event, Snapshot.from_dict(d["snapshot"]),
                   tuple(d["changed"]), tuple(d["deleted"]), before)


#: Steps a Recorder keeps unless told otherwise (about 2 KiB each on a 100-node tree).
MAX_STEPS = 200_000


class Recorder(CacheListener):
    """Record every event of ``cache`` while active (a context manager, or start()/stop(), which
    are attach()/detach()).

    ``skip`` names event kinds not to record (e.g. ``{"lock", "unlock"}`` for quieter lists).
    ``max_steps`` bounds the recording (default :data:`MAX_STEPS`; ``None``: no bound): at the
    bound the recorder stops, warns once and says so in ``stopped``. Snapshots are kept as
    changes against the one before (:mod:`himamba.observe.history`). An operation that raises
    ends with a failure step (kind ``op_failed``) holding the state the exception left.
    """

    def __init__(self, cache=None, skip: Iterable[str] = (), max_steps: int | None = MAX_STEPS) -> None:
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            raise InvalidInputError(f"max_steps must be a positive int or None, got {max_steps!r}")
        self.cache = cache
        self.skip = {EventKind(s) for s in skip}
        self.max_steps = max_steps
        self.stopped: str | None = None  # why recording stopped early, if it did
        self.steps: list[Step] = []
        self._op_index = -1
        self._op = "(outside an operation)"
        self._log = SnapshotLog()
        self._last: Snapshot | None = take(cache) if cache is not None else None
        self.initial = self._last

    # -- recording -----------------------------------------------------------------------------
    def start(self) -> Recorder:
        return self.attach()

    def stop(self) -> None:
        self.detach()

    def _on_attach(self) -> None:
        if self.cache is None:
            raise ValueError("this recorder was loaded from a file; it has no cache to record")
        if self.stopped is not None:
            raise InvalidInputError(f"this recorder is full ({self.stopped}); start a new one")
        snap = take(self.cache)
        if not len(self._log):
            self._log.append(snap, None)
            self.initial = snap
        else:
            snap, changed, deleted = intern(snap, self._last)
            if changed or deleted or snap != self._last:  # the cache moved while nobody recorded
                self._log.append(snap, self._last, changed, deleted)
        self._last = snap

    def _on_event(self, event: Event) -> None:
        if event.kind is EventKind.OP_BEGIN and event.depth == 0:
            self._op_index += 1
            self._op = event.data.get("op", event.text)
        if event.kind in self.skip:
            return
        if self.max_steps is not None and len(self.steps) >= self.max_steps:
            self.stopped = (f"stopped at max_steps={self.max_steps}: later events were not recorded; "
                            "pass a larger max_steps, or skip event kinds, to record more")
            warnings.warn(f"Recorder {self.stopped}", RuntimeWarning, stacklevel=2)
            self.detach()
            return
        try:
            raw = take(self.cache)
        except Exception:  # noqa: BLE001 - a failure may leave a tree that cannot be walked
            raw = None
        if raw is None:
            snap, changed, deleted = self._last, (), ()
        else:
            snap, changed, deleted = intern(raw, self._last)
        pos = self._log.append(snap, self._last, changed, deleted)
        self.steps.append(Step(len(self.steps), self._op_index, self._op, event, None, changed, deleted,
                               log=self._log, pos=pos))
        self._last = snap

    # -- views ---------------------------------------------------------------------------------
    @property
    def operations(self) -> list[list[Step]]:
        """Steps grouped by the top-level public call that caused them."""
        groups: dict[int, list[Step]] = {}
        for s in self.steps:
            groups.setdefault(s.op_index, []).append(s)
        return [groups[k] for k in sorted(groups)]

    def texts(self, kinds: Iterable[str] | None = None, names: Mapping[Any, str] | None = None) -> list[str]:
        """The steps' sentences (optionally only some event kinds); with ``names``
        (``{node_or_id: "P"}``) every ``#3`` of a named node reads ``P #3``."""
        wanted = None if kinds is None else set(kinds)
        return [with_names(s.text, names) for s in self.steps if wanted is None or s.kind in wanted]

    def to_frame(self):
        """One row per step: step, op index, operation, depth, kind, text, nodes, changed, deleted."""
        import pandas as pd

        return pd.DataFrame([
            {"step": s.index, "op#": s.op_index, "operation": s.op, "depth": s.event.depth, "kind": s.kind,
             "text": s.text, "nodes": list(s.event.nodes), "changed": list(s.changed), "deleted": list(s.deleted)}
            for s in self.steps
        ], columns=["step", "op#", "operation", "depth", "kind", "text", "nodes", "changed", "deleted"])

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> Step:
        return self.steps[i]

    # -- files ---------------------------------------------------------------------------------
    def to_jsonl(self, path: str | Path) -> Path:
        """Write the steps as JSON lines (the first line holds the snapshot before step 0).
        Follows no symbolic link and replaces no file that is not a regular file; the text is
        written beside ``path`` and renamed into place. Returns the path."""
        path = prepare_output_file(path, force=True)
        lines = [json.dumps({"initial": self.initial.to_dict() if self.initial else None})]
        lines += [json.dumps(s.to_dict()) for s in self.steps]
        return write_text_no_follow(path, "\n".join(lines) + "\n")

    def to_html(self, path: str | Path, **kw: Any) -> Path:
        """Write the steps as one self-contained HTML page that works offline (inline SVGs,
        previous / next / play buttons, a slider, arrow keys, a link per step; decision steps by
        default). ``kw``: ``title``, ``names``, ``show_lru``, ``zoom``, ``theme`` and any render
        option (see :func:`himamba.viz.stepper.to_html`). Same output rule as :meth:`to_jsonl`.
        Returns the path."""
        return exporter("html")(self, path, **kw)

    @classmethod
    def load_jsonl(cls, path: str | Path) -> Recorder:
        """A recorder (without a cache) holding the steps of a file written by :meth:`to_jsonl`.
        A line that is not a step names its file and line number."""
        rec = cls(None)
        lines: list[tuple[int, Any]] = []
        with Path(path).open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    lines.append((number, json.loads(line)))
                except (json.JSONDecodeError, RecursionError) as exc:
                    raise InvalidInputError(f"{path}:{number}: not a JSON line ({exc})") from None
        if not lines or not isinstance(lines[0][1], dict) or "initial" not in lines[0][1]:
            raise InvalidInputError(f"{path}: not a himamba step log (first line must hold 'initial')")
        first = lines[0][1]["initial"]
        initial = _loaded(path, lines[0][0], lambda: Snapshot.from_dict(first)) if first else None
        rec.initial = rec._last = initial
        if initial is not None:
            rec._log.append(initial, None)
        for number, d in lines[1:]:
            if not isinstance(d, dict) or "snapshot" not in d:
                raise InvalidInputError(f"{path}:{number}: a step line needs 'snapshot' (and 'event', 'index', ...)")
            step = _loaded(path, number, lambda d=d: Step.from_dict(d))
            snap, changed, deleted = intern(step.snapshot, rec._last)
            pos = rec._log.append(snap, rec._last, changed, deleted)
            rec.steps.append(Step(step.index, step.op_index, step.op, step.event, None, step.changed, step.deleted,
                                  log=rec._log, pos=pos))
            rec._last = snap
        return rec


def _loaded(path: str | Path, number: int, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InvalidInputError(f"{path}:{number}: not a himamba step ({what})") from None
