"""Floor 1: the pure data of the radix tree (keys, nodes, LRU lists). No torch devices here."""

from himamba.core.key import RadixKey, as_key
from himamba.core.lru import LRUList
from himamba.core.node import TreeNode

__all__ = ["LRUList", "RadixKey", "TreeNode", "as_key"]
