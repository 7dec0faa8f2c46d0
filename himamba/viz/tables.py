"""Tables: pandas views of a Snapshot — LRU orders against time order, per-node counters, sizes
and pool usage, and the difference between two snapshots — plus Stylers that colour them.

Every function takes a live cache (snapshotted first), a Snapshot or a Step, never changes it,
and returns a fresh DataFrame. pandas is imported on first use (it is slow to import).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from himamba.observe.recorder import Step
from himamba.observe.snapshot import diff
from himamba.viz.common import (
    LRU_SHORT,
    TIME_ORDERED_LISTS,
    as_snapshot,
    depths,
    key_text,
    name_map,
    node_kind,
)

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

LRU_COLUMNS = ["list", "position", "node", "name", "key", "time", "time_rank", "mismatch", "must_match", "locked"]


def misplaced(times: list[float]) -> set[int]:
    """Positions (0-based, MRU first) of the fewest entries whose removal leaves ``times``
    non-increasing: the complement of a longest non-increasing subsequence. Among equally long
    ones the one keeping the earliest (most recently used) positions is kept, so a node retimed
    without moving (newer than the nodes in front of it) is the one marked. O(n log n)."""
    n = len(times)
    tails: list[float] = []  # read from the LRU end: tails[k] = smallest last time of a run of k+1
    tail_at: list[int] = []
    before = [-1] * n
    for j in range(n - 1, -1, -1):
        t = times[j]
        k = bisect.bisect_right(tails, t)
        if k == len(tails):
            tails.append(t)
            tail_at.append(j)
        else:
            tails[k], tail_at[k] = t, j
        before[j] = tail_at[k - 1] if k else -1
    kept, j = set(), tail_at[-1] if tail_at else -1
    while j >= 0:
        kept.add(j)
        j = before[j]
    return set(range(n)) - kept


def lru_table(obj: Any, names: Mapping[Any, str] | None = None) -> pd.DataFrame:
    """One row per member of each LRU list, in list order (MRU first).

    ``position`` is the 1-based place in the list (1 = MRU end); ``time_rank`` the 1-based place
    the node would have if the list were sorted by ``last_access_time`` (newest first; ties keep
    list order); ``mismatch`` marks only the misplaced rows: the fewest rows whose removal leaves
    the list in time order (see :func:`misplaced`). ``must_match`` tells whether the list is
    required to follow time order (the device lists ``full`` and ``mamba``, invariant I9; the
    host-mamba list is not), so ``mismatch & must_match`` rows show a bug such as B3. With
    ``names`` (``{node_or_id: "P"}``) a ``name`` column follows ``node``.
    """
    import pandas as pd

    snap = as_snapshot(obj)
    labels = name_map(names)
    rows = []
    for name, ids in snap.lru.items():
        times = [snap.node(nid).last_access_time for nid in ids]
        by_time = sorted(range(len(ids)), key=lambda i: (-times[i], i))
        rank = {i: r + 1 for r, i in enumerate(by_time)}
        wrong = misplaced(times)
        for i, nid in enumerate(ids):
            v = snap.node(nid)
            rows.append({"list": name, "position": i + 1, "node": nid, "name": labels.get(nid, ""),
                         "key": key_text(v.key), "time": times[i], "time_rank": rank[i], "mismatch": i in wrong,
                         "must_match": name in TIME_ORDERED_LISTS, "locked": v.locked})
    columns = [c for c in LRU_COLUMNS if c != "name" or labels]
    df = pd.DataFrame(rows, columns=LRU_COLUMNS)[columns]
    return df.astype({"position": "int64", "node": "int64", "time": "float64", "time_rank": "int64",
                      "mismatch": "bool", "must_match": "bool", "locked": "bool"})


def node_table(obj: Any, names: Mapping[Any, str] | None = None) -> pd.DataFrame:
    """One row per node (root first, parents before children), indexed by node id: parent,
    depth, key, tokens, start, kind, tiers, every counter (fl, ml, hr, hmr, hit_count), time,
    leaf-set membership (Ld, Lh), locked / pinned flags and the 1-based LRU positions
    (``f``, ``m``, ``h``; missing = not a member). With ``names`` (``{node_or_id: "P"}``) a
    ``name`` column comes first."""
    import pandas as pd

    snap = as_snapshot(obj)
    labels = name_map(names)
    depth = depths(snap)
    pos = {LRU_SHORT.get(k, k): {nid: i + 1 for i, nid in enumerate(ids)} for k, ids in snap.lru.items()}
    rows = []
    for v in snap.nodes:
        row = {"id": v.id, **({"name": labels.get(v.id, "")} if labels else {}), "parent": v.parent, "depth": depth[v.id], "key": key_text(v.key),
               "tokens": len(v.key), "start": v.start, "kind": node_kind(v), "KV": v.kv_tier,
               "M": v.state_tier, "fl": v.full_lock_ref, "ml": v.mamba_lock_ref, "hr": v.host_ref_counter,
               "hmr": v.host_mamba_ref_counter, "hit_count": v.hit_count, "time": v.last_access_time,
               "Ld": v.device_leaf, "Lh": v.host_leaf, "locked": v.locked, "pinned": v.pinned,
               "children": len(v.children)}
        for short, p in pos.items():
            row[short] = p.get(v.id)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("id")
    df["parent"] = df["parent"].astype("Int64")
    for short in pos:
        df[short] = df[short].astype("Int64")
    return df


def counters_table(obj: Any) -> pd.DataFrame:
    """Sizes and pool usage: one row per counter (``value``) and per pool (``used``,
    ``capacity``, ``percent`` used; ``value`` = used), plus LRU list lengths and transfers in
    flight. Columns: group, name, value, used, capacity, percent."""
    import pandas as pd

    snap = as_snapshot(obj)
    rows: list[dict[str, Any]] = [{"group": "counter", "name": k, "value": v} for k, v in snap.counters.items()]
    rows += [{"group": "lru", "name": f"{k} LRU length", "value": len(ids)} for k, ids in snap.lru.items()]
    for name, (used, cap) in snap.pools.items():
        rows.append({"group": "pool", "name": name, "value": used, "used": used, "capacity": cap,
                     "percent": round(100.0 * used / cap, 1) if cap else 0.0})
    rows.append({"group": "in flight", "name": "transfers in flight", "value": len(snap.in_flight)})
    df = pd.DataFrame(rows, columns=["group", "name", "value", "used", "capacity", "percent"])
    return df.astype({"value": "Int64", "used": "Int64", "capacity": "Int64", "percent": "float64"})


_NODE = re.compile(r"^node #(\d+)(?: (added|deleted))?:? ?(.*)$")


def diff_table(a: Any, b: Any = None) -> pd.DataFrame:
    """The sentences of :func:`himamba.observe.snapshot.diff` from ``a`` to ``b`` as rows with
    ``what`` (node / lru / counter / pool), ``subject`` (``#3``, a list, counter or pool name),
    ``change`` and the full ``sentence``. ``diff_table(step)`` compares ``step.before`` with the
    step's snapshot (empty when the step has no ``before``)."""
    import pandas as pd

    if b is None:
        if not isinstance(a, Step):
            raise TypeError("diff_table(a) with one argument needs a Step; pass two snapshots otherwise")
        sentences = diff(a.before, a.snapshot) if a.before is not None else []
    else:
        sentences = diff(as_snapshot(a), as_snapshot(b))
    rows = []
    for s in sentences:
        m = _NODE.match(s)
        if m:
            change = f"{m.group(2)} {m.group(3)}".strip() if m.group(2) else m.group(3)
            rows.append({"what": "node", "subject": f"#{m.group(1)}", "change": change, "sentence": s})
            continue
        subject, _, change = s.partition(": ")
        if subject.endswith(" LRU"):
            what, subject = "lru", subject[: -len(" LRU")]
        elif subject.endswith(" pool used"):
            what, subject = "pool", subject[: -len(" pool used")]
        else:
            what = "counter"
        rows.append({"what": what, "subject": subject, "change": change, "sentence": s})
    return pd.DataFrame(rows, columns=["what", "subject", "change", "sentence"])


MISMATCH_BG = "background-color: #fecaca"
SOFT_MISMATCH_BG = "background-color: #fef3c7"
LOCKED_BG = "background-color: #fee2e2"
PINNED_BG = "background-color: #ede9fe"
#: dark text on every coloured row, so that it reads in a dark theme too (whose text is light)
_INK = "; color: #111827"


def style_lru(df: pd.DataFrame) -> Styler:
    """Colour :func:`lru_table` rows: red where a time-ordered list is out of time order,
    amber where the host-mamba list (not required to be time-ordered) differs (the ``mismatch``
    column says the same in words). Every cell's text is HTML-escaped (names may hold markup)."""
    def row_style(row: pd.Series) -> list[str]:
        if not row.get("mismatch", False):
            return [""] * len(row)
        return [(MISMATCH_BG if row.get("must_match", True) else SOFT_MISMATCH_BG) + _INK] * len(row)

    times = [c for c in ("time",) if c in df.columns]  # 7, not 7.000000
    return df.style.format(escape="html").format("{:g}", subset=times).apply(row_style, axis=1)


def style_nodes(df: pd.DataFrame) -> Styler:
    """Colour :func:`node_table` rows: light red = locked, light purple = pinned (locked wins;
    the ``locked`` / ``pinned`` columns say the same in words). Cell text is HTML-escaped."""
    def row_style(row: pd.Series) -> list[str]:
        if row.get("locked", False):
            return [LOCKED_BG + _INK] * len(row)
        if row.get("pinned", False):
            return [PINNED_BG + _INK] * len(row)
        return [""] * len(row)

    return df.style.format(escape="html").apply(row_style, axis=1)
