"""Text: the whole cache as plain text, one line per node, like SGLang's ``pretty_print``.

    print(hm.text(cache))
    root · 5 nodes · device KV 9/64 · device states 3/8 · host KV 3/128 · host states 1/16
    ├─ #1 [1,2,3] 3 tok  KV=DH M=h  fl=0 ml=0 hr=1 hmr=0 hit=0  t=3  PIN  f4 h1
    │  └─ #2 [4,5] 2 tok  KV=H M=h  ...

Reads a live cache (snapshotted first), a Snapshot or a Step; never changes it. Names
(``{node_or_id: "P"}``) go in front of ids; control characters in texts are escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from himamba.observe.snapshot import NodeView, Snapshot
from himamba.viz.common import as_snapshot, key_text, lru_positions, name_map, printable
from himamba.viz.style import ranks_text


def _line(v: NodeView, positions: dict[str, dict[int, int]], labels: Mapping[int, str]) -> str:
    marks = [m for m, on in (("LOCK", v.locked), ("PIN", v.pinned), ("Ld", v.device_leaf), ("Lh", v.host_leaf)) if on]
    name = f"{labels[v.id]} " if v.id in labels else ""
    parts = [f"{name}#{v.id} {key_text(v.key)} {len(v.key)} tok", f"KV={v.kv_tier} M={v.state_tier}",
             f"fl={v.full_lock_ref} ml={v.mamba_lock_ref} hr={v.host_ref_counter} hmr={v.host_mamba_ref_counter} "
             f"hit={v.hit_count}", f"t={v.last_access_time:g}"]
    if marks:
        parts.append(" ".join(marks))
    ranks = ranks_text(v, positions)
    if ranks:
        parts.append(ranks)
    return printable("  ".join(parts))


def _head(snap: Snapshot, labels: Mapping[int, str]) -> str:
    pools = " · ".join(f"{name} {used}/{cap}" for name, (used, cap) in snap.pools.items())
    name = f"{labels[snap.root.id]} " if snap.root.id in labels else ""
    flight = f" · {len(snap.in_flight)} transfer(s) in flight" if snap.in_flight else ""
    nodes = len(snap) - 1
    return printable(f"{name}root · {nodes} node{'s' if nodes != 1 else ''} · {pools}{flight}")


def text(obj: Any, names: Mapping[Any, str] | None = None, max_lines: int | None = 200) -> str:
    """The tree of ``obj`` as indented text: a heading with the node count and the pools, then
    one line per node (depth first, children in the tree's order): name, id, key, length,
    tiers, the four lock / pin counters, hit count, last access time, markers (LOCK, PIN, Ld,
    Lh) and LRU positions (``f2 m1 h3``). At most ``max_lines`` node lines (``None``: all); the
    rest is counted on a last line."""
    snap = as_snapshot(obj)
    labels = name_map(names)
    positions = lru_positions(snap)
    lines = [_head(snap, labels)]
    stack: list[tuple[int, str, bool]] = [(c, "", i == len(snap.root.children) - 1)
                                          for i, c in enumerate(snap.root.children)][::-1]
    shown = 0
    while stack:
        if max_lines is not None and shown >= max_lines:
            lines.append(f"… {len(snap) - 1 - shown} more nodes (text(obj, max_lines=None) shows all)")
            break
        nid, prefix, last = stack.pop()
        v = snap.node(nid)
        lines.append(f"{prefix}{'└─ ' if last else '├─ '}{_line(v, positions, labels)}")
        shown += 1
        inner = prefix + ("   " if last else "│  ")
        kids = v.children
        stack.extend((c, inner, i == len(kids) - 1) for i, c in reversed(list(enumerate(kids))))
    return "\n".join(lines)
