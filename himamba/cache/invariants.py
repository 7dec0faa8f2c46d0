"""check_invariants: every structural rule of the reference's section 2, checked on a live cache.

Returns a list of :class:`Violation` (empty when healthy); each names the invariant and the
node. Run it after every operation in tests, as sortedcontainers runs ``_check()``.

Checked on every cache: I1 links and key shapes, I2 value shapes, I3 no node without KV on
any tier, I4 device residency closed under ancestors, I5 states only on device nodes, I7 LRU
membership (and the lists' own links), I8 the evictable-leaf set, I9 LRU order equals time
order, I10 size counters, I11 lock arithmetic, and POOL: tree-owned slots are allocated, owned
once, and free + evictable + protected (+ slots held by requests, when given) = capacity.
The tiered cache adds the host rules (see :mod:`himamba.cache.hi_invariants`).

The check is one pass over the tree (:func:`_scan`) that applies every per-node rule and
collects what the whole-cache rules need (counter sums, the leaf set it should find, the slots
the tree owns, how many members each LRU list should have); then one walk per LRU list and one
vectorised count per pool. The fuzzer runs it after every operation, so it is written for speed:
the healthy path builds no messages and no per-list dictionaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np
import torch

from himamba.core.lru import LRUList
from himamba.core.node import TreeNode

_INT64 = torch.int64


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the invariant's id (``"I1"`` … ``"I13"``, ``"POOL"``), the node, a sentence."""

    invariant: str
    node_id: int | None
    message: str

    def __str__(self) -> str:
        where = f" node #{self.node_id}" if self.node_id is not None else ""
        return f"{self.invariant}{where}: {self.message}"


@dataclass(slots=True)
class TreeScan:
    """What one pass over the tree found (see :func:`_scan`)."""

    nodes: list[TreeNode]
    in_tree: set[TreeNode]
    device_leaves: set[TreeNode] = field(default_factory=set)
    host_leaves: set[TreeNode] = field(default_factory=set)
    kv: list[torch.Tensor] = field(default_factory=list)
    states: list[torch.Tensor] = field(default_factory=list)
    host_kv: list[torch.Tensor] = field(default_factory=list)
    host_states: list[torch.Tensor] = field(default_factory=list)
    kv_slots: int = 0
    host_kv_slots: int = 0
    full_evictable: int = 0
    full_protected: int = 0
    mamba_evictable: int = 0
    mamba_protected: int = 0
    host_lru_members: int = 0


def check_invariants(cache, held_kv: int | None = None, held_states: int | None = None) -> list[Violation]:
    """All violations of the cache's invariants.

    ``held_kv`` / ``held_states``: device KV slots and state slots currently allocated by callers
    (requests) and not owned by the tree. When given, pool accounting must balance exactly;
    otherwise the tree's slots must only not exceed what the pools handed out.
    """
    out: list[Violation] = []
    root = cache.root_node
    tiered = getattr(cache, "tiered", False)
    scan = _scan(cache, tiered, out)
    _check_lru(cache.full_lru_list, scan, "value", len(scan.kv), out, root=root)
    _check_lru(cache.mamba_lru_list, scan, "mamba_value", len(scan.states), out)
    _check_leaf_set(cache.evictable_full_device_leaves, scan.device_leaves, "device", out)
    _check_counters(cache, scan, out)
    _check_pool(out, "device KV", cache.kv_pool, scan.kv, scan.kv_slots, held_kv,
                cache.full_evictable_size_ + cache.full_protected_size_, scan.nodes, "value")
    _check_pool(out, "device state", cache.mamba_pool, scan.states, len(scan.states), held_states,
                cache.mamba_evictable_size_ + cache.mamba_protected_size_, scan.nodes, "mamba_value")
    if tiered:
        from himamba.cache.hi_invariants import check_host_invariants

        check_host_invariants(cache, scan, out)
    return out


def _scan(cache, tiered: bool, out: list[Violation]) -> TreeScan:
    """One depth-first pass from the root. Per node: I1 (links, keys, reached once), I2, I3, I4,
    I5, I11 and, on the tiered cache, the host rules I3, I6, I11 (pins) and I13. Collects the
    leaf sets the cache should hold, the counters' sums, and the (well-formed) slot tensors owned
    on each pool. A child is checked against the parent it was reached from."""
    root = cache.root_node
    ps = cache.page_size
    if len(root.key) != 0 or root.parent is not None:
        out.append(Violation("I1", root.id, "root must have an empty key and no parent"))
    if root.full_lock_ref != 1 or root.mamba_lock_ref != 1:
        out.append(Violation("I11", root.id, "root must keep full_lock_ref = mamba_lock_ref = 1"))
    nodes = [root]
    seen = {root}
    scan = TreeScan(nodes, seen)
    kv, states, host_kv, host_states = scan.kv, scan.states, scan.host_kv, scan.host_states
    device_leaves, host_leaves = scan.device_leaves, scan.host_leaves
    have_device_leaves = cache.evictable_full_device_leaves
    have_host_leaves = cache.evictable_full_host_leaves if tiered else None
    legacy_b5 = tiered and cache.config.has_legacy("B5")
    through = tiered and cache.config.write_policy != "write_back"
    fe = fp = me = mp = host_lru = kv_slots = host_kv_slots = 0
    stack = [root]
    while stack:
        parent = stack.pop()
        parent_on_device = parent is root or parent.value is not None
        for ck, n in parent.children.items():
            if n in seen:
                out.append(Violation("I1", n.id, "node reached twice (cycle or shared child)"))
                continue
            if n.parent is not parent:
                out.append(Violation("I1", n.id, f"parent link points to #{getattr(n.parent, 'id', None)}, not #{parent.id}"))
            key = n.key
            tokens = key.token_ids
            k = len(tokens)
            if k == 0:
                out.append(Violation("I1", n.id, "empty key"))
                continue
            if k % ps:
                out.append(Violation("I1", n.id, f"key length {k} is not a multiple of page size {ps}"))
            if (tokens[0] != ck) if (ps == 1 and key.extra_key is None) else (key.child_key(ps) != ck):
                out.append(Violation("I1", n.id, f"filed under {ck!r} but its child key is {key.child_key(ps)!r}"))
            seen.add(n)
            nodes.append(n)
            children = n.children
            if children:
                stack.append(n)
            v, mv = n.value, n.mamba_value
            fl, ml = n.full_lock_ref, n.mamba_lock_ref
            # One size test per tensor: 8 bytes a slot. A tensor of another dtype or rank that
            # passes it is caught by the pool check's concatenation (see _check_pool).
            if v is not None:
                if v.nbytes != k << 3:
                    out.append(_shape_violation(n, "value", k))
                else:
                    kv.append(v)
                    kv_slots += k
                if not parent_on_device:
                    out.append(Violation("I4", n.id, f"on device but parent #{parent.id} is not"))
                elif parent is not root and parent.full_lock_ref < fl:
                    out.append(Violation("I11", n.id, f"full_lock_ref {fl} exceeds parent #{parent.id}'s {parent.full_lock_ref}"))
                if fl == 0:
                    fe += k
                    for c in children.values():
                        if c.value is not None:
                            break
                    else:
                        device_leaves.add(n)
                else:
                    fp += k
            elif fl > 0:
                out.append(Violation("I11", n.id, f"full_lock_ref {fl} on a node whose KV is not on device"))
            if mv is not None:
                if mv.nbytes != 8:
                    out.append(_shape_violation(n, "mamba_value", 1))
                else:
                    states.append(mv)
                if v is None:
                    out.append(Violation("I5", n.id, "device state without device KV"))
                if ml == 0:
                    me += 1
                else:
                    mp += 1
            elif ml > 0:
                out.append(Violation("I11", n.id, f"mamba_lock_ref {ml} without a device state"))
            if fl < 0 or ml < 0:
                out.append(Violation("I11", n.id, f"negative lock (fl={fl}, ml={ml})"))
            if ml > fl:
                out.append(Violation("I11", n.id, f"mamba_lock_ref {ml} > full_lock_ref {fl}"))
            if not tiered:
                if v is None:
                    out.append(Violation("I3", n.id, "KV on no tier (evicted and not backed up) but still in the tree"))
                continue
            # -- host rules (tiered cache) ------------------------------------------------------
            hv, mh = n.host_value, n.mamba_host_value
            hr, hmr = n.host_ref_counter, n.host_mamba_ref_counter
            if hv is not None:
                if hv.nbytes != k << 3:
                    out.append(_shape_violation(n, "host_value", k))
                else:
                    host_kv.append(hv)
                    host_kv_slots += k
                if through and parent is not root and parent.host_value is None:
                    out.append(Violation("I13", n.id, f"backed up but parent #{parent.id} is not"))
                if v is None and (cache._is_host_leaf(n) if legacy_b5 else (hr == 0 and hmr == 0 and not children)):
                    host_leaves.add(n)
            elif v is None:
                out.append(Violation("I3", n.id, "KV on no tier (evicted and not backed up) but still in the tree"))
            if mh is not None:
                if mh.nbytes != 8:
                    out.append(_shape_violation(n, "mamba_host_value", 1))
                else:
                    host_states.append(mh)
                if hv is None and v is None:
                    out.append(Violation("I3", n.id, "host state on a node without KV"))
                if hmr == 0 or legacy_b5:
                    host_lru += 1
            elif (mv is None and not children and fl == 0 and hr == 0 and hmr == 0
                  and n not in have_device_leaves and n not in have_host_leaves):
                out.append(Violation("I6", n.id, "childless full tombstone that no eviction can reach (in no leaf set, not held)"))
            if hr < 0 or hmr < 0:
                out.append(Violation("I11", n.id, "negative host pin"))
    scan.full_evictable, scan.full_protected = fe, fp
    scan.mamba_evictable, scan.mamba_protected = me, mp
    scan.host_lru_members = host_lru
    scan.kv_slots, scan.host_kv_slots = kv_slots, host_kv_slots
    return scan


def _check_lru(lru: LRUList, scan: TreeScan, value_attr: str, expected: int, out: list[Violation], *,
               root: TreeNode | None = None, time_order: bool = True, unpinned: str | None = None) -> None:
    """I7 (membership and the list's own links) and, with ``time_order``, I9 (list order = time
    order, newest first) for one list.

    A member must be in the tree, hold ``value_attr`` (and have the counter ``unpinned`` at 0,
    when given) and not be ``root``. The walk needs no set of visited links and no step limit:
    when every ``prev`` link points back to the link before it, no link can occur twice (its
    one ``prev`` would have to be two different links), so the walk ends. When, in addition,
    every member met is valid and the count equals both the size counter and ``expected`` (how
    many tree nodes qualify), list and tree agree. Only otherwise is the list walked again to
    name what is missing.
    """
    name = f"{lru.kind} LRU"
    in_tree = scan.in_tree
    value_of = attrgetter(value_attr)
    pins_of = attrgetter(unpinned) if unpinned else None
    link, prev_link, tail = lru.head.next, lru.head, lru.tail
    prev_time, prev_node, count, suspect = math.inf, None, 0, False
    while link is not tail:
        if link is None or link.prev is not prev_link or link.node is None:
            out.append(Violation("I7", getattr(getattr(link, "node", None), "id", None), f"{name}: broken links (a "
                                 "sentinel, a repeated or a stray member inside the list)"))
            suspect = True
            break
        node = link.node
        count += 1
        if node not in in_tree or node is root or value_of(node) is None or (pins_of is not None and pins_of(node)):
            suspect = True
            out.append(Violation("I7", node.id, f"{name}: member should not be in the list (not in tree or no value)"))
        if time_order:
            t = node.last_access_time
            if prev_time < t:
                out.append(Violation("I9", node.id, f"{name}: #{node.id} (t={t:g}) is behind older #{prev_node.id} "
                                     f"(t={prev_time:g})"))
            prev_time, prev_node = t, node
        prev_link, link = link, link.next
    if count != lru.size:
        out.append(Violation("I7", None, f"{name}: size counter {lru.size} but {count} members"))
    if suspect or count != expected:
        listed = set(_members(lru))
        for n in scan.nodes[1:]:
            if value_of(n) is not None and (pins_of is None or not pins_of(n)) and n not in listed:
                out.append(Violation("I7", n.id, f"{name}: missing from the list"))


def _members(lru: LRUList):
    """The nodes of a list, head to tail, stopping at the first broken link (for diagnosis)."""
    link, steps = lru.head.next, 0
    while link is not lru.tail and link is not None and link.node is not None and steps <= lru.size + 1:
        yield link.node
        link, steps = link.next, steps + 1


def _check_leaf_set(have: set[TreeNode], want: set[TreeNode], tier: str, out: list[Violation]) -> None:
    """I8: an evictable-leaf set is exactly the computed one."""
    if have == want:
        return
    for n in have - want:
        out.append(Violation("I8", n.id, f"in the evictable {tier}-leaf set but not an evictable {tier} leaf"))
    for n in want - have:
        out.append(Violation("I8", n.id, f"an evictable {tier} leaf missing from the evictable {tier}-leaf set"))


def _check_counters(cache, scan: TreeScan, out: list[Violation]) -> None:
    """I10: evictable/protected counters equal the sums over the tree."""
    for label, have, want in (
        ("full_evictable_size_", cache.full_evictable_size_, scan.full_evictable),
        ("full_protected_size_", cache.full_protected_size_, scan.full_protected),
        ("mamba_evictable_size_", cache.mamba_evictable_size_, scan.mamba_evictable),
        ("mamba_protected_size_", cache.mamba_protected_size_, scan.mamba_protected),
    ):
        if have != want:
            out.append(Violation("I10", None, f"{label} is {have}, the tree holds {want}"))


def _shape_violation(node: TreeNode, attr: str, length: int) -> Violation:
    v = getattr(node, attr)
    return Violation("I2", node.id, f"{attr} has shape {tuple(v.shape)} ({v.dtype}), expected ({length},) int64")


def _well_formed(out: list[Violation], owned: list[torch.Tensor], nodes: list[TreeNode], attr: str) -> list[torch.Tensor]:
    """Report I2 for every owned tensor (held by a node's ``attr``) that is not a 1-D int64 tensor
    of the node's length; return the others. Runs only when the concatenation showed a problem."""
    per_token = attr in ("value", "host_value")
    owned_ids = {id(t) for t in owned}
    bad = set()
    for n in nodes:
        v = getattr(n, attr)
        if v is None or id(v) not in owned_ids:
            continue
        length = len(n.key) if per_token else 1
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.dtype is not _INT64 or v.numel() != length:
            bad.add(id(v))
            out.append(_shape_violation(n, attr, length))
    return [t for t in owned if id(t) not in bad]


def _check_pool(out: list[Violation], label: str, pool, owned: list[torch.Tensor], expected: int, held: int | None,
                counted: int | None, nodes: list[TreeNode], attr: str) -> None:
    """POOL: slots owned by the tree are allocated and owned once; accounting balances.

    ``counted``: what the cache's own size counters say the tree owns (``None`` for a pool the
    cache keeps no counter for: the host pools).

    ``owned``: the tensors the scan accepted, each of 8 bytes per slot it should name;
    ``expected``: how many slots they should name together. The one concatenation completes
    their I2 test: a tensor of another rank makes it fail or come out with another rank; one of
    another 8-byte dtype (or a wider one) makes it come out with another dtype or fail; one of a
    narrower dtype has more elements than slots, so the total exceeds ``expected``. On any of
    these signs each tensor is tested alone, I2 is reported on the ``attr`` of the ``nodes``
    that hold the bad ones, and the pool check goes on without them."""
    alloc = pool.allocator
    total = 0
    if owned:
        try:
            flat = torch.cat(owned) if len(owned) > 1 else owned[0]
        except (RuntimeError, TypeError):
            flat = None
        if flat is None or flat.dim() != 1 or flat.dtype is not _INT64 or flat.numel() != expected:
            owned = _well_formed(out, owned, nodes, attr)
            flat = torch.cat(owned) if owned else torch.empty(0, dtype=_INT64)
        total = int(flat.numel())
        if total and not _slots_owned_once(flat, alloc):
            problem = _slot_problem(flat, alloc)
            out.append(Violation("POOL", None, f"{label}: {problem}"))
            if problem.startswith("the tree owns slots outside"):
                return
    used = pool.used_size()
    if counted is not None and total != counted:
        out.append(Violation("POOL", None, f"{label}: tree owns {total} slots but its counters say {counted}"))
    if held is None:
        if total > used:
            out.append(Violation("POOL", None, f"{label}: tree owns {total} slots, pool has only {used} in use"))
    elif pool.available_size() + total + held != pool.capacity:
        out.append(Violation("POOL", None, f"{label}: free {pool.available_size()} + tree {total} + held {held} != capacity {pool.capacity}"))


def _slots_owned_once(flat: torch.Tensor, alloc) -> bool:
    """Are the owned slots ``flat`` (1-D int64) all inside the pool, allocated, and each named
    once? One count per slot over the whole pool, then, with one slot per page, one comparison
    with the pages' in-use marks (a slot may be named at most as often as it is marked); with
    bigger pages, the count must not exceed 1 and every named page must be marked. On the CPU
    this runs in numpy, whose calls cost a fraction of torch's on these small arrays."""
    in_use = alloc._in_use
    if flat.device.type == "cpu" and in_use.device.type == "cpu":
        slots, marks = flat.numpy(), in_use.numpy()
        try:
            counts = np.bincount(slots, minlength=alloc.capacity)
        except ValueError:  # a negative slot
            return False
    else:
        if bool((flat < 0).any()):
            return False
        slots, marks = flat, in_use.to(flat.device)
        counts = torch.bincount(slots, minlength=alloc.capacity)
    if counts.shape[0] > alloc.capacity:
        return False
    if alloc.page_size == 1:
        return not bool((counts > marks).any())
    return int(counts.max()) <= 1 and bool(marks[slots // alloc.page_size].all())


def _slot_problem(flat: torch.Tensor, alloc) -> str:
    """Why :func:`_slots_owned_once` said no, in words (the first reason found)."""
    flat = flat.cpu()
    if int(flat.min()) < 0 or int(flat.max()) >= alloc.capacity:
        return "the tree owns slots outside the pool"
    if int(torch.bincount(flat).max()) > 1:
        return "a slot is owned twice"
    return "the tree owns slots the pool considers free"
