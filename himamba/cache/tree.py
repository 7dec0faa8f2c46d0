"""RadixTree: the structure of the cache and nothing else (no pools, no LRU lists, no counters).

Walks (``nodes``, ``node_at``, ``path_tokens``, and :func:`depth` for one node), node identity (``new_node``, ``node_by_id``,
``check_in_tree``), the access clock (``tick``) and the three structural edits every algorithm
uses: ``attach`` a child, ``detach`` it, and ``split_edge``. Which memory a node holds is the
tiers' business (:mod:`himamba.cache.device_tier`, :mod:`himamba.cache.host_tier`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from himamba.core.key import RadixKey, as_key
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError, InvalidInputError


class RadixTree:
    """The nodes of one cache, keyed by page: a node's children are filed under the first page of
    their key (``RadixKey.child_key``). The root has an empty key, never leaves the tree, and
    holds one lock of each kind, so no walk ever evicts it."""

    def __init__(self, page_size: int, root_value: torch.Tensor) -> None:
        self.page_size = page_size
        self._root_value = root_value
        self.reset()

    def reset(self) -> None:
        """Start from a lone root; node ids restart at 0 and the clock at 0.0."""
        self.next_id = 0
        self.clock = 0.0
        self.root = self.new_node(RadixKey([]), None)
        self.root.value = self._root_value
        self.root.full_lock_ref = 1
        self.root.mamba_lock_ref = 1

    def tick(self) -> float:
        """The access clock: returns the current time, then advances it by 1.0."""
        t = self.clock
        self.clock = t + 1.0
        return t

    def new_node(self, key: RadixKey, parent: TreeNode | None) -> TreeNode:
        """A new node with the next id (not yet filed under ``parent``: see :meth:`attach`)."""
        node = TreeNode(self.next_id, key, parent)
        self.next_id += 1
        return node

    # -- walks -------------------------------------------------------------------------------------
    def nodes(self) -> Iterator[TreeNode]:
        """Every node, root first, parents before children (depth first, children by insertion)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    def node_by_id(self, node_id: int) -> TreeNode:
        """The node with this id; raises KeyError when it is not in the tree."""
        for node in self.nodes():
            if node.id == node_id:
                return node
        raise KeyError(f"no node #{node_id} in the tree")

    def node_at(self, tokens) -> TreeNode | None:
        """The node whose edge ends exactly after ``tokens`` (a list or RadixKey), or ``None``.
        A pure lookup: nothing changes."""
        key = as_key(tokens)
        node, ps = self.root, self.page_size
        while len(key):
            child = node.children.get(key.child_key(ps)) if len(key) >= ps else None
            if child is None or len(child.key) > len(key) or child.key.match(key, ps) != len(child.key):
                return None
            node, key = child, key[len(child.key):]
        return node

    def path_tokens(self, node: TreeNode) -> list[int]:
        """All tokens from the root down to the end of ``node``."""
        parts = []
        while node is not None and node is not self.root:
            parts.append(node.key.token_ids)
            node = node.parent
        return [t for part in reversed(parts) for t in part]

    def check_in_tree(self, node: TreeNode) -> None:
        """Raise InvalidInputError unless ``node`` is linked into this tree."""
        if not isinstance(node, TreeNode):
            raise InvalidInputError(f"expected a TreeNode, got {type(node).__name__}")
        ps = self.page_size
        root = self.root
        x = node
        while x is not root:
            parent, key = x.parent, x.key
            tokens = key.token_ids
            if (parent is None or not tokens or parent.children.get(
                    tokens[0] if ps == 1 and key.extra_key is None else key.child_key(ps)) is not x):
                raise InvalidInputError(f"node #{node.id} is not in this tree (it was deleted or belongs to another cache)")
            x = parent

    # -- structural edits -----------------------------------------------------------------------------
    def attach(self, parent: TreeNode, node: TreeNode) -> None:
        """File ``node`` under ``parent`` by its key's first page."""
        node.parent = parent
        parent.children[node.key.child_key(self.page_size)] = node

    def detach(self, node: TreeNode) -> None:
        """Pop ``node`` from its parent's children (upstream's assertion when the key is absent).

        A detached node never returns to the tree, so its unchained LRU links drop their back
        reference to it: with no node <-> link cycle left, the node is freed as soon as nothing
        else holds it, instead of waiting for the cycle collector."""
        ck = node.key.child_key(self.page_size)
        children = node.parent.children
        if ck not in children:
            raise CacheAssertionError(f"parent does not have child key, {ck!r} (node #{node.id})")
        del children[ck]
        for link in (node.full_link, node.mamba_link, node._host_mamba_link):
            if link is not None and link.prev is None:
                link.node = None

    def split_edge(self, child: TreeNode, split_len: int) -> TreeNode:
        """Cut ``child``'s edge after ``split_len`` tokens: a new node takes the first tokens and
        ``child``'s place under its parent; ``child`` keeps the rest under it. Moves no memory.
        Returns the new upper node."""
        ps = self.page_size
        if not 0 < split_len < len(child.key) or split_len % ps:
            raise CacheAssertionError(f"invalid split of node #{child.id} at {split_len} (len {len(child.key)}, page {ps})")
        parent = child.parent
        upper = self.new_node(child.key[:split_len], parent)
        parent.children[upper.key.child_key(ps)] = upper
        child.key = child.key[split_len:]
        child.parent = upper
        upper.children[child.key.child_key(ps)] = child
        return upper


def depth(node: TreeNode) -> int:
    """Key elements from the root to the end of ``node`` (``len(tree.path_tokens(node))``, without
    building the list)."""
    end = 0
    while node.parent is not None:
        end += len(node.key.token_ids)
        node = node.parent
    return end
