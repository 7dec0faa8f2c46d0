"""What every viz module needs: turning a cache, Snapshot or Step into a Snapshot, node kinds,
LRU positions and short key texts. Everything here reads Snapshots only (never live nodes).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from himamba.errors import InvalidInputError
from himamba.observe import subjects
from himamba.observe.recorder import Step
from himamba.observe.snapshot import NodeView, Snapshot, take

#: Short prefixes of the LRU lists, used in labels ("f2 m1 h3") and tables.
LRU_SHORT = {"full": "f", "mamba": "m", "host_mamba": "h"}

#: Lists whose order must equal time order (reference I9 covers device lists only).
TIME_ORDERED_LISTS = ("full", "mamba")

#: Node kinds, in the order the legend shows them.
KINDS = ("root", "device", "tombstone", "host-only", "full tombstone")


def as_snapshot(obj: Any) -> Snapshot:
    """The Snapshot behind ``obj``: a Snapshot as is, a Step's snapshot (the state after it),
    or a fresh :func:`~himamba.observe.snapshot.take` of a live cache. Raises ``TypeError``
    for anything else."""
    if isinstance(obj, Snapshot):
        return obj
    if isinstance(obj, Step):
        return obj.snapshot
    if subjects.handler(obj, "snapshot") or (hasattr(obj, "root_node") and hasattr(obj, "full_lru_list")):
        return take(obj)
    raise TypeError(f"expected a cache, a Snapshot or a Step, got {type(obj).__name__}")


def node_kind(v: NodeView) -> str:
    """One of :data:`KINDS`: ``device`` (KV and state on device), ``tombstone`` (KV on device,
    state only on host), ``host-only`` (KV and state only on host), ``full tombstone`` (no
    state on either tier, whatever its KV tier) or ``root``."""
    if v.is_root:
        return "root"
    if not v.state_device and not v.state_host:
        return "full tombstone"
    if v.state_device:
        return "device"
    return "tombstone" if v.kv_device else "host-only"


def lru_positions(snap: Snapshot) -> dict[str, dict[int, int]]:
    """For each LRU list: node id -> 1-based position from the MRU end (1 = most recent)."""
    return {name: {nid: i + 1 for i, nid in enumerate(ids)} for name, ids in snap.lru.items()}


def key_text(key: tuple[int, ...], limit: int = 6) -> str:
    """``[1,2,3]`` or ``[1,2,3,4,…,9]`` (first ``limit-1`` tokens, an ellipsis, the last)."""
    if len(key) <= limit:
        return "[" + ",".join(map(str, key)) + "]"
    return "[" + ",".join(map(str, key[: limit - 1])) + ",…," + str(key[-1]) + "]"


def depths(snap: Snapshot) -> dict[int, int]:
    """Node id -> depth (root 0). Snapshots list parents before children."""
    out: dict[int, int] = {}
    for n in snap.nodes:
        out[n.id] = 0 if n.parent is None else out[n.parent] + 1
    return out


def node_id(node: Any) -> int:
    """The id of a node given as a TreeNode, a NodeView or an int."""
    nid = getattr(node, "id", node)
    if isinstance(nid, bool) or not isinstance(nid, int):
        raise InvalidInputError(f"a node must be a TreeNode, a NodeView or an int id, got {node!r}")
    return nid


def name_map(names: Mapping[Any, str] | None) -> dict[int, str]:
    """``{node_or_id: "P"}`` as ``{id: "P"}``. A name holding a control character or a lone
    surrogate (which neither ``dot`` nor a UTF-8 page can carry) is refused with
    :class:`~himamba.errors.InvalidInputError`; markup in a name is fine (every view escapes it)."""
    out = {}
    for k, v in (names or {}).items():
        nid, text = node_id(k), str(v)
        bad = next((ch for ch in text if unicodedata.category(ch) in ("Cc", "Cs")), None)
        if bad is not None:
            raise InvalidInputError(f"name {text!r} of node #{nid} holds U+{ord(bad):04X} (a control character or "
                                    "lone surrogate); names must be printable text")
        out[nid] = text
    return out


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates written as ``\\x07`` / ``\\ud800``
    escapes (for texts the views did not write, such as a loaded step log's)."""
    if all(unicodedata.category(ch) not in ("Cc", "Cs") for ch in text):
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in ("Cc", "Cs") else ch
                   for ch in text)
