"""Eviction policies: which leaf leaves first and which states go, chosen by
``CacheConfig(eviction=...)``.

A policy answers three questions for :mod:`himamba.cache.eviction`:

* ``leaf_key(node)`` — the sort key of an evictable leaf (device or host); smallest goes first;
* ``drain_states(lru, budget, take)`` — walk state candidates, calling ``take`` on each until
  ``budget`` states are freed (``take`` returns how many it freed);
* ``describe(node)`` — the words that say why ``node`` came first (for the step texts).

:class:`LRU` is SGLang 0.5.11's rule and the default.
"""

from __future__ import annotations

from collections.abc import Callable

from himamba.core.lru import LRUList
from himamba.core.node import TreeNode


class LRU:
    """Least recently used: leaves by ``last_access_time`` (ties by id), states from the LRU end
    of their list, passing locked ones."""

    name = "lru"

    def leaf_key(self, node: TreeNode) -> tuple[float, int]:
        return (node.last_access_time, node.id)

    def drain_states(self, lru: LRUList, budget: int, take: Callable[[TreeNode], int]) -> int:
        return lru.drain(budget, take)

    def describe(self, node: TreeNode) -> str:
        return f"t={node.last_access_time:g}"
