"""Allocate, and on shortage make room once and retry: the one sequence every allocation of the
cache follows (a request's state slot, a write's host slots, a load's device slots, a prefetch's
host slots)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from himamba.core.node import TreeNode

T = TypeVar("T")


class Locks(Protocol):
    def lock(self, node: TreeNode) -> int: ...
    def unlock(self, node: TreeNode) -> int: ...


def allocate_or_make_room(alloc: Callable[[], T | None], make_room: Callable[[int], object], need: int,
                          locks: Locks | None = None, hold: TreeNode | None = None,
                          release_on_error: bool = True) -> T | None:
    """``alloc()``; when it gives ``None``, ``make_room(need)`` once and ``alloc()`` again.

    With ``hold``, that node is locked (through ``locks``) while room is made, so the eviction
    cannot take it; the lock is released afterwards, and also when ``make_room`` raises unless
    ``release_on_error`` is false (legacy B22 leaves it, as upstream). Returns what the last
    ``alloc()`` gave."""
    got = alloc()
    if got is not None:
        return got
    if hold is None:
        make_room(need)
        return alloc()
    locks.lock(hold)
    if release_on_error:
        try:
            make_room(need)
        except BaseException:
            locks.unlock(hold)
            raise
    else:
        make_room(need)
    locks.unlock(hold)
    return alloc()
