"""Node ends: how many key elements lie between the root and the end of each node's edge.

``FlopAware`` (:mod:`himamba.cache.eviction_policies`) prices every candidate by the prefill FLOPs
between its start and its end, at every eviction. A node's end never moves (a split puts a new
node above it and shortens its own key by as much), so :class:`NodeEnds` computes it once per node
and keeps it by node id for as long as the tree keeps its root (``reset`` makes a new root and
restarts the ids, and no id is given twice before that).

Nodes leave the tree all the time, so the memo is pruned: when it holds more than ``floor``
entries and more than twice the nodes the tree had at the last pruning, the entries of nodes no
longer in the tree are dropped. It stays within a few times the tree's size, and a pruning costs
time linear in the entries added since the one before.
"""

from __future__ import annotations

from himamba.cache.tree import RadixTree
from himamba.core.node import TreeNode


class NodeEnds:
    """The ends of ``tree``'s nodes, by node id (see the module docstring)."""

    def __init__(self, tree: RadixTree, floor: int = 4096) -> None:
        self.tree = tree
        self.floor = floor  # never pruned at or below this many entries
        self._root: TreeNode | None = None
        self._ends: dict[int, int] = {}
        self._prune_at = floor

    def current(self) -> dict[int, int]:
        """The memo for the tree as it is now, ``{node id: end}``: a caller fills in a node it
        misses with :func:`himamba.cache.tree.depth`. Restarts on a new root; prunes as the module says."""
        root = self.tree.root
        if root is not self._root:
            self._root, self._ends, self._prune_at = root, {}, self.floor
        elif len(self._ends) > self._prune_at:
            live = {node.id for node in self.tree.nodes()}
            self._ends = {i: end for i, end in self._ends.items() if i in live}
            self._prune_at = max(self.floor, 2 * len(live))
        return self._ends

    def known(self) -> dict[int, int]:
        """A copy of the memo as it stands (no pruning, no restart)."""
        return dict(self._ends)

