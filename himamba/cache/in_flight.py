"""InFlight: the tiered cache's record of transfers under way — writes, loads, storage backups,
prefetches — and the locks and pins they hold (reference §3.9-3.14).

Only the completion of a transfer releases what it holds, so a caller's ``dec_lock_ref`` or
``release_host`` must never take a lock or pin of theirs: :meth:`check_release` and
:meth:`internal_pins` say which are held here.
"""

from __future__ import annotations

from himamba.core.node import TreeNode
from himamba.errors import LockError


class InFlight:
    """``write_through``: node id -> node whose device -> host write is not yet acknowledged
    (``locked_writes``: those whose write locked the node); ``load_back``: node id -> node being
    loaded (locked until its ack); ``backup``: storage op id -> (node, state pinned);
    ``prefetch``: request id -> (anchor, tokens, host slots, op, host state slot)."""

    def __init__(self) -> None:
        self.write_through: dict[int, TreeNode] = {}
        self.locked_writes: set[int] = set()
        self.load_back: dict[int, TreeNode] = {}
        self.prefetch: dict[object, tuple] = {}
        self.backup: dict[int, tuple[TreeNode, bool]] = {}

    def reset(self) -> None:
        self.__init__()

    def internal_pins(self, node: TreeNode) -> tuple[int, int]:
        """Host pins on ``node`` that storage operations in flight hold (KV pins, state pins)."""
        kv = state = 0
        for pinned, mamba in self.backup.values():
            if pinned is node:
                kv, state = kv + 1, state + mamba
        for entry in self.prefetch.values():
            if entry[0] is node:
                kv, state = kv + 1, state + (entry[4] is not None)
        return kv, state

    def check_release(self, node: TreeNode, root: TreeNode) -> None:
        """Refuse a release that would take a lock an in-flight load or locked write holds: on
        every node of the path the caller must hold at least one lock of its own."""
        if not self.load_back and not self.locked_writes:
            return
        held: dict[int, int] = {}
        writes = (self.write_through[i] for i in self.locked_writes if i in self.write_through)
        for holder in (*self.load_back.values(), *writes):
            x = holder
            while x is not root:
                held[x.id] = held.get(x.id, 0) + 1
                x = x.parent
        x = node
        while x is not root:
            h = held.get(x.id, 0)
            if h and x.full_lock_ref + x.evicted_lock_ref <= h:
                raise LockError(f"dec_lock_ref(#{node.id}): the lock on node #{x.id} belongs to a load-back or "
                                "write-through in flight (released by loading_check / writing_check), not to the caller")
            x = x.parent
