"""The checks both tiers' invariant rules share: :class:`Violation`, the LRU-list walk (I7, I9),
the leaf-set comparison (I8) and pool accounting (POOL).

:mod:`himamba.cache.device_invariants` and :mod:`himamba.cache.host_invariants` call them on the
lists, sets and pools of their tier, with what the one tree pass of
:func:`himamba.cache.invariants.check_invariants` collected. Every function here reads the cache's
structures only; none asks the cache what it thinks of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from himamba.core.lru import LRUList
from himamba.core.node import TreeNode
from himamba.memory.allocator import FREE

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


@dataclass(frozen=True, slots=True)
class TreeWalk:
    """What the tree pass reached: every node (root first, each once) and the same as a set."""

    nodes: list[TreeNode]
    in_tree: set[TreeNode]


def check_lru(lru: LRUList, tree: TreeWalk, member: Callable[[TreeNode], bool], expected: int,
              out: list[Violation], *, root: TreeNode | None = None, time_order: bool = True) -> None:
    """I7 (membership and the list's own links) and, with ``time_order``, I9 (list order = time
    order, newest first) for one list.

    A member must be in the tree, satisfy ``member`` (the rule for belonging to this list, written
    by the caller from the reference, not taken from the list) and not be ``root``. The walk
    needs no set of visited links and no step limit: when every ``prev`` link points back to the
    link before it, no link can occur twice (its one ``prev`` would have to be two different
    links), so the walk ends. When, in addition, every member met is valid and the count equals
    both the size counter and ``expected`` (how many tree nodes qualify), list and tree agree.
    Only otherwise is the list walked again to name what is missing.
    """
    name = f"{lru.kind} LRU"
    in_tree = tree.in_tree
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
        if node not in in_tree or node is root or not member(node):
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
        for n in tree.nodes[1:]:
            if member(n) and n not in listed:
                out.append(Violation("I7", n.id, f"{name}: missing from the list"))


def _members(lru: LRUList):
    """The nodes of a list, head to tail, stopping at the first broken link (for diagnosis)."""
    link, steps = lru.head.next, 0
    while link is not lru.tail and link is not None and link.node is not None and steps <= lru.size + 1:
        yield link.node
        link, steps = link.next, steps + 1


def check_leaf_set(have: set[TreeNode], want: set[TreeNode], tier: str, out: list[Violation]) -> None:
    """I8: an evictable-leaf set is exactly the computed one."""
    if have == want:
        return
    for n in have - want:
        out.append(Violation("I8", n.id, f"in the evictable {tier}-leaf set but not an evictable {tier} leaf"))
    for n in want - have:
        out.append(Violation("I8", n.id, f"an evictable {tier} leaf missing from the evictable {tier}-leaf set"))


def shape_violation(node: TreeNode, attr: str, length: int) -> Violation:
    """I2 for ``node``'s field ``attr``, which should be a ``(length,)`` int64 tensor."""
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
            out.append(shape_violation(n, attr, length))
    return [t for t in owned if id(t) not in bad]


def check_pool(out: list[Violation], label: str, pool, owned: list[torch.Tensor], expected: int, held: int | None,
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
    in_use = alloc._state != FREE
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
