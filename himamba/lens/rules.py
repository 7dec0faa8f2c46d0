"""``check_invariants`` on a live SGLang cache: the rules that hold in its generation.

The rules are written here from the generations' documented behaviour (``docs/lens.md`` and
``docs/reference.md`` list them); they read the lens's snapshot of the live cache (which reads
the real fields, lists and sets) and, for ``U-NOFULL``, the live tree core. Each returns
:class:`~himamba.cache.checks.Violation` s naming the rule:

==============  ===========================================================================  ===========
rule            what must hold                                                               generations
==============  ===========================================================================  ===========
``U-PARENT``    every child names as parent the node that holds it, and its key starts        all
                where its parent's ends
``U-LOCK``      lock counters are never negative; a locked node's ancestors hold at least      all
                its FULL lock (locks take the path to the root)
``U-SIZE``      the FULL evictable / protected sizes are the tokens of unlocked / locked       all (MAMBA
                nodes with device KV; the MAMBA sizes count unlocked / locked device states    not on Rust)
``U-LEAF``      the device leaf set is exactly the nodes its generation calls device leaves:  0.5.11 tiered,
                KV on device, no child with KV on device, not locked (0.5.11: FULL lock;       0.5.23 Python
                0.5.23: any component's device lock)
``U-LRU``       each LRU list holds exactly its members: full = nodes with device KV (0.5.11),  0.5.11, 0.5.23
                mamba = nodes with a device state, host_mamba = nodes with a host state        Python
``U-LRU-TIME``  the device lists of 0.5.11 run in access-time order, MRU first (upstream's     0.5.11
                own sanity check; B3 breaks it on the tiered cache)
``U-NOFULL``    the unified tree keeps no full LRU: its FULL device list is empty             0.5.23 Python
==============  ===========================================================================  ===========

On the Rust core only what its production binding can read is checked (U-PARENT, U-LOCK for the
FULL lock, U-SIZE for FULL).
"""

from __future__ import annotations

from typing import Any

from himamba.cache.checks import Violation
from himamba.observe.snapshot import Snapshot, take


def check_upstream(cache: Any, held_kv: int | None = None, held_states: int | None = None) -> list[Violation]:
    """Every violation of the rules of ``cache``'s generation; ``[]`` on a healthy tree. (``held_kv``
    and ``held_states`` are accepted for the common signature; pool balance is not checked.)"""
    snap = take(cache)
    gen, core = snap.settings.get("generation"), snap.settings.get("core")
    out: list[Violation] = []
    _parents(snap, out)
    _locks(snap, out)
    _sizes(snap, out, mamba=core != "rust")
    if gen == "sglang-0.5.11":
        if snap.settings.get("tiered"):
            _leaves(snap, out, any_lock=False)
        _lists(snap, out, {"full": lambda v: v.kv_device, "mamba": lambda v: v.state_device,
                           "host_mamba": lambda v: v.state_host})
        _time_order(snap, out, ("full", "mamba"))
    elif core == "rust":
        _rust_links(cache, snap, out)
    elif core == "python":
        _leaves(snap, out, any_lock=True)
        _lists(snap, out, {"mamba": lambda v: v.state_device, "host_mamba": lambda v: v.state_host})
        _no_full_list(cache, out)
    return out


def _parents(snap: Snapshot, out: list[Violation]) -> None:
    for v in snap.nodes:
        for cid in v.children:
            c = snap.by_id.get(cid)
            if c is None or c.parent != v.id:
                out.append(Violation("U-PARENT", cid, f"held by #{v.id} but names #{getattr(c, 'parent', None)} "
                                                      "as its parent"))
            elif c.start != v.start + len(v.key):
                out.append(Violation("U-PARENT", cid, f"its key starts at {c.start}, its parent's ends at "
                                                      f"{v.start + len(v.key)}"))


def _locks(snap: Snapshot, out: list[Violation]) -> None:
    for v in snap.nodes:
        for name in ("full_lock_ref", "mamba_lock_ref", "host_ref_counter", "host_mamba_ref_counter"):
            if getattr(v, name) < 0:
                out.append(Violation("U-LOCK", v.id, f"{name} is {getattr(v, name)}"))
        if v.parent is not None and snap.node(v.parent).parent is not None:
            above = snap.node(v.parent).full_lock_ref
            if above < v.full_lock_ref:
                out.append(Violation("U-LOCK", v.id, f"FULL lock {v.full_lock_ref} but its parent #{v.parent} holds "
                                                     f"only {above} (locks take the whole path)"))


def _sizes(snap: Snapshot, out: list[Violation], mamba: bool) -> None:
    nodes = [v for v in snap.nodes if not v.is_root]
    want = {"full_evictable_size": sum(len(v.key) for v in nodes if v.kv_device and v.full_lock_ref == 0),
            "full_protected_size": sum(len(v.key) for v in nodes if v.kv_device and v.full_lock_ref > 0)}
    if mamba:
        want["mamba_evictable_size"] = sum(1 for v in nodes if v.state_device and v.mamba_lock_ref == 0)
        want["mamba_protected_size"] = sum(1 for v in nodes if v.state_device and v.mamba_lock_ref > 0)
    for name, value in want.items():
        if snap.counters.get(name) != value:
            out.append(Violation("U-SIZE", None, f"{name} is {snap.counters.get(name)}, the tree holds {value}"))


def _leaves(snap: Snapshot, out: list[Violation], any_lock: bool) -> None:
    for v in snap.nodes:
        locked = v.full_lock_ref > 0 or (any_lock and v.mamba_lock_ref > 0)
        want = (not v.is_root and v.kv_device and not locked
                and not any(snap.node(c).kv_device for c in v.children))
        if want != v.device_leaf:
            out.append(Violation("U-LEAF", v.id, "is a device leaf but missing from the device leaf set" if want
                                 else "is in the device leaf set but is no device leaf"))


def _lists(snap: Snapshot, out: list[Violation], members: dict[str, Any]) -> None:
    for name, member in members.items():
        if name not in snap.lru:
            continue
        ids = snap.lru[name]
        want = {v.id for v in snap.nodes if not v.is_root and member(v)}
        if len(ids) != len(set(ids)):
            out.append(Violation("U-LRU", None, f"the {name} list holds a node twice"))
        for nid in sorted(want - set(ids)):
            out.append(Violation("U-LRU", nid, f"missing from the {name} list"))
        for nid in sorted(set(ids) - want):
            out.append(Violation("U-LRU", nid, f"in the {name} list but not one of its members"))


def _time_order(snap: Snapshot, out: list[Violation], names: tuple[str, ...]) -> None:
    for name in names:
        times = [snap.node(i).last_access_time for i in snap.lru.get(name, ()) if i in snap.by_id]
        for pos, (newer, older) in enumerate(zip(times, times[1:], strict=False)):
            if older > newer:
                nid = snap.lru[name][pos + 1]
                out.append(Violation("U-LRU-TIME", nid, f"the {name} list is out of access-time order at "
                                                        f"position {pos + 2}"))
                break


def _rust_links(cache: Any, snap: Snapshot, out: list[Violation]) -> None:
    from himamba.lens.unified_trees import rust_links

    for nid, (parent, start) in rust_links(cache).items():
        v = snap.by_id.get(nid)
        if v is None or v.parent != parent or v.start != start:
            out.append(Violation("U-PARENT", nid, f"the core's path info names parent #{parent} at {start}; "
                                                  f"its printed tree says #{getattr(v, 'parent', None)}"))


def _no_full_list(cache: Any, out: list[Violation]) -> None:
    from himamba.lens.unified_trees import full_device_list

    ids = full_device_list(cache)
    if ids:
        out.append(Violation("U-NOFULL", ids[0], f"the FULL device list holds {len(ids)} node(s); the unified "
                                                 "tree keeps none"))
