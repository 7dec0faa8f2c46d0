"""check_invariants: every structural rule of the reference's section 2, checked on a live cache.

Returns a list of :class:`Violation` (empty when healthy); each names the invariant and the
node. Run it after every operation in tests, as sortedcontainers runs ``_check()``.

Checked on every cache: I1 links and key shapes, I2 value shapes, I3 no node without KV on
any tier, I4 device residency closed under ancestors, I5 states only on device nodes, I7 LRU
membership (and the lists' own links), I8 the evictable-leaf set, I9 LRU order equals time
order, I10 size counters, I11 lock arithmetic, and POOL: tree-owned slots are allocated, owned
once, and free + evictable + protected (+ slots held by requests, when given) = capacity.
The tiered cache adds the host rules (see :mod:`himamba.cache.hi_invariants`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from himamba.core.lru import LRUList
from himamba.core.node import TreeNode


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the invariant's id (``"I1"`` … ``"I13"``, ``"POOL"``), the node, a sentence."""

    invariant: str
    node_id: int | None
    message: str

    def __str__(self) -> str:
        where = f" node #{self.node_id}" if self.node_id is not None else ""
        return f"{self.invariant}{where}: {self.message}"


def check_invariants(cache, held_kv: int | None = None, held_states: int | None = None) -> list[Violation]:
    """All violations of the cache's invariants.

    ``held_kv`` / ``held_states``: device KV slots and state slots currently allocated by callers
    (requests) and not owned by the tree. When given, pool accounting must balance exactly;
    otherwise the tree's slots must only not exceed what the pools handed out.
    """
    out: list[Violation] = []
    nodes = _walk(cache, out)
    _check_nodes(cache, nodes, out)
    _check_lru(cache, cache.full_lru_list, [n for n in nodes if n.value is not None and n is not cache.root_node], out)
    _check_lru(cache, cache.mamba_lru_list, [n for n in nodes if n.mamba_value is not None], out)
    _check_leaf_set(cache, nodes, out)
    _check_counters(cache, nodes, out)
    _check_pool(out, "device KV", cache.kv_pool, [n.value for n in nodes if n.value is not None and n is not cache.root_node],
                held_kv, cache.full_evictable_size_ + cache.full_protected_size_)
    _check_pool(out, "device state", cache.mamba_pool, [n.mamba_value for n in nodes if n.mamba_value is not None],
                held_states, cache.mamba_evictable_size_ + cache.mamba_protected_size_)
    if getattr(cache, "tiered", False):
        from himamba.cache.hi_invariants import check_host_invariants

        check_host_invariants(cache, nodes, out)
    return out


def _walk(cache, out: list[Violation]) -> list[TreeNode]:
    """Nodes reachable from the root (each once); I1 link checks on the way."""
    ps = cache.page_size
    root = cache.root_node
    nodes, seen, stack = [], set(), [root]
    if len(root.key) != 0 or root.parent is not None:
        out.append(Violation("I1", root.id, "root must have an empty key and no parent"))
    while stack:
        node = stack.pop()
        if node.id in seen:
            out.append(Violation("I1", node.id, "node reached twice (cycle or shared child)"))
            continue
        seen.add(node.id)
        nodes.append(node)
        for ck, child in node.children.items():
            if child.parent is not node:
                out.append(Violation("I1", child.id, f"parent link points to #{getattr(child.parent, 'id', None)}, not #{node.id}"))
            if len(child.key) == 0:
                out.append(Violation("I1", child.id, "empty key"))
                continue
            if len(child.key) % ps:
                out.append(Violation("I1", child.id, f"key length {len(child.key)} is not a multiple of page size {ps}"))
            if child.key.child_key(ps) != ck:
                out.append(Violation("I1", child.id, f"filed under {ck!r} but its child key is {child.key.child_key(ps)!r}"))
            stack.append(child)
    return nodes


def _check_nodes(cache, nodes: list[TreeNode], out: list[Violation]) -> None:
    root = cache.root_node
    if root.full_lock_ref != 1 or root.mamba_lock_ref != 1:
        out.append(Violation("I11", root.id, "root must keep full_lock_ref = mamba_lock_ref = 1"))
    for n in nodes:
        if n is root:
            continue
        k = len(n.key)
        for name in ("value", "host_value"):
            v = getattr(n, name)
            if v is not None and (v.shape != (k,) or v.dtype != torch.int64):
                out.append(Violation("I2", n.id, f"{name} has shape {tuple(v.shape)} ({v.dtype}) for a {k}-token key"))
        for name in ("mamba_value", "mamba_host_value"):
            v = getattr(n, name)
            if v is not None and v.shape != (1,):
                out.append(Violation("I2", n.id, f"{name} has shape {tuple(v.shape)}, expected (1,)"))
        if n.value is None and n.host_value is None:
            out.append(Violation("I3", n.id, "KV on no tier (evicted and not backed up) but still in the tree"))
        if n.value is not None and n.parent is not root and n.parent.value is None:
            out.append(Violation("I4", n.id, f"on device but parent #{n.parent.id} is not"))
        if n.mamba_value is not None and n.value is None:
            out.append(Violation("I5", n.id, "device state without device KV"))
        fl, ml = n.full_lock_ref, n.mamba_lock_ref
        if fl < 0 or ml < 0:
            out.append(Violation("I11", n.id, f"negative lock (fl={fl}, ml={ml})"))
        if ml > fl:
            out.append(Violation("I11", n.id, f"mamba_lock_ref {ml} > full_lock_ref {fl}"))
        if ml > 0 and n.mamba_value is None:
            out.append(Violation("I11", n.id, f"mamba_lock_ref {ml} without a device state"))
        if n.value is None and fl > 0:
            out.append(Violation("I11", n.id, f"full_lock_ref {fl} on a node whose KV is not on device"))
        if n.value is not None and n.parent is not root and n.parent.value is not None and n.parent.full_lock_ref < fl:
            out.append(Violation("I11", n.id, f"full_lock_ref {fl} exceeds parent #{n.parent.id}'s {n.parent.full_lock_ref}"))


def _check_lru(cache, lru: LRUList, members: list[TreeNode], out: list[Violation]) -> None:
    """I7 (membership and list links) and I9 (list order = time order) for one list."""
    name = f"{lru.kind} LRU"
    expected = {n.id: n for n in members}
    seen: dict[int, TreeNode] = {}
    link, prev_link, prev_node = lru.head.next, lru.head, None
    steps = 0
    while link is not lru.tail and link is not None and steps <= lru.size + 1:
        node = link.node
        if link.prev is not prev_link:
            out.append(Violation("I7", getattr(node, "id", None), f"{name}: broken prev link"))
        if node is None or node.id in seen:
            out.append(Violation("I7", getattr(node, "id", None), f"{name}: sentinel or repeated member inside the list"))
            break
        seen[node.id] = node
        if node.id not in expected or expected[node.id] is not node:
            out.append(Violation("I7", node.id, f"{name}: member should not be in the list (not in tree or no value)"))
        if prev_node is not None and prev_node.last_access_time < node.last_access_time:
            out.append(Violation("I9", node.id, f"{name}: #{node.id} (t={node.last_access_time:g}) is behind older #{prev_node.id} (t={prev_node.last_access_time:g})"))
        prev_link, prev_node, link = link, node, link.next
        steps += 1
    if len(seen) != lru.size:
        out.append(Violation("I7", None, f"{name}: size counter {lru.size} but {len(seen)} members"))
    for node_id in expected.keys() - seen.keys():
        out.append(Violation("I7", node_id, f"{name}: missing from the list"))


def _check_leaf_set(cache, nodes: list[TreeNode], out: list[Violation]) -> None:
    """I8: the evictable device-leaf set is exactly the computed one."""
    root = cache.root_node
    want = set()
    for n in nodes:
        if n is root or n.value is None or n.full_lock_ref != 0:
            continue
        if not any(c.value is not None for c in n.children.values()):
            want.add(n)
    have = cache.evictable_full_device_leaves
    for n in have - want:
        out.append(Violation("I8", n.id, "in the evictable device-leaf set but not an unlocked device leaf"))
    for n in want - have:
        out.append(Violation("I8", n.id, "an unlocked device leaf missing from the evictable device-leaf set"))


def _check_counters(cache, nodes: list[TreeNode], out: list[Violation]) -> None:
    """I10: evictable/protected counters equal the sums over the tree."""
    root = cache.root_node
    fe = fp = me = mp = 0
    for n in nodes:
        if n is root:
            continue
        if n.value is not None:
            if n.full_lock_ref == 0:
                fe += n.value.shape[0]
            else:
                fp += n.value.shape[0]
        if n.mamba_value is not None:
            if n.mamba_lock_ref == 0:
                me += 1
            else:
                mp += 1
    for label, have, want in (
        ("full_evictable_size_", cache.full_evictable_size_, fe),
        ("full_protected_size_", cache.full_protected_size_, fp),
        ("mamba_evictable_size_", cache.mamba_evictable_size_, me),
        ("mamba_protected_size_", cache.mamba_protected_size_, mp),
    ):
        if have != want:
            out.append(Violation("I10", None, f"{label} is {have}, the tree holds {want}"))


def _check_pool(out: list[Violation], label: str, pool, owned: list[torch.Tensor], held: int | None, counted: int) -> None:
    """POOL: slots owned by the tree are allocated and owned once; accounting balances."""
    alloc = pool.allocator
    total = 0
    if owned:
        flat = torch.cat(owned) if len(owned) > 1 else owned[0]
        total = int(flat.numel())
        pages = flat if alloc.page_size == 1 else flat // alloc.page_size
        counts = torch.bincount(pages, minlength=alloc.num_pages)
        owners_per_page = alloc.page_size if alloc.page_size > 1 else 1
        if int(counts.max()) > owners_per_page:
            out.append(Violation("POOL", None, f"{label}: a slot is owned by two nodes"))
        if bool(((counts > 0) & (alloc._in_use == 0)).any()):
            out.append(Violation("POOL", None, f"{label}: the tree owns slots the pool considers free"))
    used = pool.used_size()
    if total != counted:
        out.append(Violation("POOL", None, f"{label}: tree owns {total} slots but its counters say {counted}"))
    if held is None:
        if total > used:
            out.append(Violation("POOL", None, f"{label}: tree owns {total} slots, pool has only {used} in use"))
    elif pool.available_size() + total + held != pool.capacity:
        out.append(Violation("POOL", None, f"{label}: free {pool.available_size()} + tree {total} + held {held} != capacity {pool.capacity}"))
