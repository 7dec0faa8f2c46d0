"""LRU view: the LRU lists of one snapshot as compact, escaped HTML — the ends of each list, the
rows a step changed and the misplaced rows, with the rows between them counted, not shown.

A stepper frame or an exported page carries this view; the whole table (:func:`full_html`) is
shown on demand. Both are written by hand from :func:`himamba.viz.tables.lru_table`'s rows, and
every text (names, keys) is escaped, so a label holding markup shows as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from himamba.observe.snapshot import Snapshot
from himamba.viz.common import TIME_ORDERED_LISTS, key_text, name_map
from himamba.viz.tables import misplaced

ENDS = 3  # rows shown at each end of a list
FULL_ROWS_IN_PAGE = 300  # exported pages carry the whole table up to this many rows
_BAD = ' class="hm-bad" style="background:#fecaca;color:#111827"'  # the note says it in words too
_SOFT = ' class="hm-soft" style="background:#fef3c7;color:#111827"'
_HEAD = "<tr><th>pos</th><th>node</th><th>key</th><th>time</th><th>note</th></tr>"


def _rows(snap: Snapshot, name: str, labels: Mapping[int, str], show: set[int] | None,
          changed: set[int]) -> tuple[str, int]:
    ids = snap.lru[name]
    times = [snap.node(nid).last_access_time for nid in ids]
    wrong = misplaced(times)
    strict = name in TIME_ORDERED_LISTS
    keep = range(len(ids)) if show is None else sorted(show | wrong | {i for i, nid in enumerate(ids)
                                                                         if nid in changed})
    out, last, hidden = [], -1, 0
    for i in keep:
        if i - last > 1:
            out.append(f'<tr class="hm-gap"><td colspan="5">⋯ {i - last - 1} rows</td></tr>')
            hidden += i - last - 1
        last = i
        nid = ids[i]
        notes = []
        if i in wrong:
            notes.append("OUT OF TIME ORDER" if strict else "not time-ordered (allowed)")
        if nid in changed:
            notes.append("changed")
        label = f"{escape(labels[nid])} #{nid}" if nid in labels else f"#{nid}"
        cls = _BAD if i in wrong and strict else (_SOFT if i in wrong else "")
        out.append(f"<tr{cls}><td>{i + 1}</td><td>{label}</td><td>{escape(key_text(snap.node(nid).key))}</td>"
                   f"<td>{times[i]:g}</td><td>{escape(', '.join(notes))}</td></tr>")
    if len(ids) - 1 > last:
        out.append(f'<tr class="hm-gap"><td colspan="5">⋯ {len(ids) - 1 - last} rows</td></tr>')
        hidden += len(ids) - 1 - last
    return "".join(out), hidden


def compact_html(snap: Snapshot, names: Mapping[Any, str] | None = None, changed: Iterable[int] = (),
                 ends: int = ENDS) -> str:
    """Each LRU list (MRU first): its first and last ``ends`` rows, the rows of ``changed``
    nodes and the misplaced rows (see :func:`himamba.viz.tables.misplaced`), the rest counted."""
    labels, moved = name_map(names), set(changed)
    parts = []
    empty = [name for name, ids in snap.lru.items() if not ids]
    for name, ids in snap.lru.items():
        n = len(ids)
        if not n:
            continue
        show = set(range(min(ends, n))) | set(range(max(n - ends, 0), n))
        body, hidden = _rows(snap, name, labels, show, moved)
        note = f", {hidden} not shown" if hidden else ""
        parts.append(f'<table class="hm-lru"><caption>{escape(name)} LRU: {n} node{"s" if n != 1 else ""}'
                     f" (1 = most recent{note})</caption>{_HEAD}{body}</table>")
    if empty:
        parts.append(f"<div><i>empty: {escape(', '.join(f'{name} LRU' for name in empty))}</i></div>")
    return '<div class="hm-lru-view">' + "".join(parts) + "</div>"


def full_html(snap: Snapshot, names: Mapping[Any, str] | None = None, changed: Iterable[int] = ()) -> str:
    """Every row of every LRU list, in the same escaped form."""
    labels, moved = name_map(names), set(changed)
    parts = []
    for name, ids in snap.lru.items():
        body, _ = _rows(snap, name, labels, None, moved)
        parts.append(f'<table class="hm-lru"><caption>{escape(name)} LRU: all {len(ids)} rows</caption>'
                     f"{_HEAD}{body}</table>")
    return '<div class="hm-lru-view">' + ("".join(parts) or "<i>LRU lists empty</i>") + "</div>"


def rows_in(snap: Snapshot) -> int:
    """How many rows the whole LRU table of ``snap`` has."""
    return sum(len(ids) for ids in snap.lru.values())
