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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from himamba.observe.display import Displayable, exporter
from himamba.observe.events import CacheListener, Event, EventKind
from himamba.observe.snapshot import Snapshot, changed_nodes, take

_NODE_REF = re.compile(r"#(\d+)")


def with_names(text: str, names: Mapping[Any, str] | None) -> str:
    """``text`` with every ``#3`` of a node named in ``names`` (``{node_or_id: "P"}``) written
    ``P #3``."""
    if not names:
        return text
    labels = {getattr(k, "id", k): str(v) for k, v in names.items()}
    return _NODE_REF.sub(lambda m: f"{labels[int(m.group(1))]} #{m.group(1)}" if int(m.group(1)) in labels
                         else m.group(0), text)


@dataclass(frozen=True)
class Step(Displayable):
    """One recorded event with the cache state after it."""

    index: int
    op_index: int
    op: str
    event: Event
    snapshot: Snapshot
    changed: tuple[int, ...] = ()
    deleted: tuple[int, ...] = ()
    before: Snapshot | None = None

    @property
    def text(self) -> str:
        return self.event.text

    @property
    def kind(self) -> str:
        return self.event.kind.value

    def __str__(self) -> str:
        return f"[{self.index}] {self.op}: {self.event}"

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
        event = Event(EventKind(e["kind"]), e["text"], tuple(e["nodes"]), e["depth"], dict(e["data"]))
        return cls(d["index"], d["op_index"], d["op"], event, Snapshot.from_dict(d["snapshot"]),
                   tuple(d["changed"]), tuple(d["deleted"]), before)


class Recorder(CacheListener):
    """Record every event of ``cache`` while active (a context manager, or start()/stop(), which
    are attach()/detach()).

    ``skip`` names event kinds not to record (e.g. ``{"lock", "unlock"}`` for quieter lists).
    """

    def __init__(self, cache=None, skip: Iterable[str] = ()) -> None:
        self.cache = cache
        self.skip = {EventKind(s) for s in skip}
        self.steps: list[Step] = []
        self._op_index = -1
        self._op = "(outside an operation)"
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
        self._last = take(self.cache)
        if not self.steps:
            self.initial = self._last

    def _on_event(self, event: Event) -> None:
        if event.kind is EventKind.OP_BEGIN and event.depth == 0:
            self._op_index += 1
            self._op = event.data.get("op", event.text)
        if event.kind in self.skip:
            return
        snap = take(self.cache)
        changed, deleted = changed_nodes(self._last, snap)
        self.steps.append(Step(len(self.steps), self._op_index, self._op, event, snap, changed, deleted, self._last))
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
        """Write the steps as JSON lines (the first line holds the snapshot before step 0)."""
        path = Path(path)
        with path.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps({"initial": self.initial.to_dict() if self.initial else None}) + "\n")
            for s in self.steps:
                fh.write(json.dumps(s.to_dict()) + "\n")
        return path

    def to_html(self, path: str | Path, **kw: Any) -> Path:
        """Write the steps as one self-contained HTML page that works offline (inline SVGs,
        previous / next buttons, a slider, arrow keys; decision steps by default). ``kw``:
        ``title``, ``names``, ``show_lru``, ``zoom`` and any render option (see
        :func:`himamba.viz.stepper.to_html`). Returns the path."""
        return exporter("html")(self, path, **kw)

    @classmethod
    def load_jsonl(cls, path: str | Path) -> Recorder:
        """A recorder (without a cache) holding the steps of a file written by :meth:`to_jsonl`."""
        rec = cls(None)
        with Path(path).open(encoding="utf-8") as fh:
            lines = [json.loads(line) for line in fh if line.strip()]
        if not lines or "initial" not in lines[0]:
            raise ValueError(f"{path}: not a himamba step log (first line must hold 'initial')")
        rec.initial = Snapshot.from_dict(lines[0]["initial"]) if lines[0]["initial"] else None
        before = rec.initial
        for d in lines[1:]:
            step = Step.from_dict(d, before)
            rec.steps.append(step)
            before = step.snapshot
        return rec
