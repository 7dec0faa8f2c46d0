"""check_invariants: every structural rule of the reference's section 2, checked on a live cache.

Returns a list of :class:`Violation` (empty when healthy); each names the invariant and the
node. Run it after every operation in tests, as sortedcontainers runs ``_check()``.

The rules are split by tier. This module walks the tree once (:func:`walk_tree`): it checks I1
(links, keys, each node reached once) itself and hands every node it reaches to each tier's
per-node rules, :class:`~himamba.cache.device_invariants.DeviceRules` (I2-I5, I11 on the device
fields) and, on the tiered cache, :class:`~himamba.cache.host_invariants.HostRules` (the host
fields, I6, I13); each collects what its whole-cache rules need and checks them in its
``finish``: I7-I10 and POOL for the device lists, sets, counters and pools; the host list, the
host-leaf set, I12 (in flight) and the host pools. On a GPU, COPY compares the host copies of
the nodes' slot ids with their tensors. The shared walks and counts are in
:mod:`himamba.cache.checks`.

The fuzzer runs it after every operation, so it is written for speed: the healthy path builds no
messages and no per-list dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable

from himamba.cache.checks import TreeWalk, Violation
from himamba.cache.device_invariants import DeviceRules
from himamba.cache.host_invariants import HostRules
from himamba.core.node import TreeNode
from himamba.memory import slot_ids
from himamba.observe import subjects

NodeRule = Callable[[TreeNode, TreeNode, int], None]

__all__ = ["Violation", "check_invariants", "walk_tree"]


def check_invariants(cache, held_kv: int | None = None, held_states: int | None = None) -> list[Violation]:
    """All violations of the cache's invariants.

    ``held_kv`` / ``held_states``: device KV slots and state slots currently allocated by callers
    (requests) and not owned by the tree. When given, pool accounting must balance exactly;
    otherwise the tree's slots must only not exceed what the pools handed out.
    """
    foreign = subjects.handler(cache, "invariants")  # a live upstream cache: the lens's rules
    if foreign is not None:
        return foreign(cache, held_kv, held_states)
    out: list[Violation] = []
    tiered = getattr(cache, "tiered", False)
    device = DeviceRules(cache, out, only_tier=not tiered)
    host = HostRules(cache, out) if tiered else None
    tree = walk_tree(cache, out, device.visit, host.visit if host else None)
    device.finish(tree, held_kv, held_states)
    if host:
        host.finish(tree)
    if not cache.kv_pool.allocator.reads_tensor_memory or not cache.mamba_pool.allocator.reads_tensor_memory:
        _check_host_copies(tree, out)
    return out


def _check_host_copies(tree: TreeWalk, out: list[Violation]) -> None:
    """COPY: on a GPU (or a CPU cache taking slot ids as a GPU does), the host copy of each node's
    device slot ids (:mod:`himamba.memory.slot_ids`), where it has one, equals the tensor."""
    for n in tree.nodes:
        for what, t in (("KV", n.value), ("state", n.mamba_value)):
            if t is None:
                continue
            ids = slot_ids.mirrored(t)
            if ids is not None and ids.tolist() != t.reshape(-1).tolist():
                out.append(Violation("COPY", n.id, f"the host copy of its device {what} slot ids differs from the tensor"))


def walk_tree(cache, out: list[Violation], visit: NodeRule, then: NodeRule | None = None) -> TreeWalk:
    """One depth-first pass from the root: checks I1 (the root's shape; per node its parent link,
    a non-empty key of whole pages, the child key it is filed under, reached once) and calls
    ``visit(node, parent, key_length)``, then ``then`` (when given) with the same arguments, on
    every non-root node whose key is not empty, a child after the parent it was reached from."""
    root = cache.root_node
    ps = cache.page_size
    if len(root.key) != 0 or root.parent is not None:
        out.append(Violation("I1", root.id, "root must have an empty key and no parent"))
    nodes = [root]
    seen = {root}
    stack = [root]
    while stack:
        parent = stack.pop()
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
            if n.children:
                stack.append(n)
            visit(n, parent, k)
            if then is not None:
                then(n, parent, k)
    return TreeWalk(nodes, seen)
