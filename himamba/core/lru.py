"""Intrusive LRU lists with explicit link objects and sentinels.

Every :class:`~himamba.core.node.TreeNode` carries one :class:`LRULink` per list
(``full_link``, ``mamba_link``, ``host_mamba_link``). A list is a doubly linked chain of those
links between two sentinels: ``head`` (most recently used side) and ``tail`` (least recently used
side). Membership is "the link is chained" (``link.prev is not None``), so no dictionary is kept.

The three lists of the tiered cache (reference §1.4):

=================  ==================  ===================================================
list               skips when locked   members
=================  ==================  ===================================================
``full``           ``full_lock_ref``   non-root nodes whose KV is on the device
``mamba``          ``mamba_lock_ref``  nodes with a device state
``host_mamba``     ``mamba_lock_ref``  nodes with a host state and no host-state pin
                   (the *device* lock: an upstream quirk kept on purpose)
=================  ==================  ===================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from himamba.errors import CacheAssertionError

if TYPE_CHECKING:
    from himamba.core.node import TreeNode


class LRULink:
    """One node's position in one LRU list."""

    __slots__ = ("prev", "next", "node")

    def __init__(self, node: TreeNode | None) -> None:
        self.prev: LRULink | None = None
        self.next: LRULink | None = None
        self.node = node


_LINK_ATTR = {"full": "full_link", "mamba": "mamba_link", "host_mamba": "host_mamba_link"}
_LOCK_ATTR = {"full": "full_lock_ref", "mamba": "mamba_lock_ref", "host_mamba": "mamba_lock_ref"}


class LRUList:
    """A doubly linked LRU list over one of the node's link fields.

    ``kind`` is ``"full"``, ``"mamba"`` or ``"host_mamba"``; it picks the link field and the
    lock counter that :meth:`lru_no_lock` skips on. ``holds_value`` tells whether a node may be
    a member (KV on device, device state, host state); :meth:`insert_mru` asserts it and
    :meth:`reset_node_and_parents_mru` moves only ancestors for which it holds.
    """

    def __init__(self, kind: str, holds_value: Callable[[TreeNode], bool]) -> None:
        if kind not in _LINK_ATTR:
            raise ValueError(f"unknown LRU list kind {kind!r}; expected one of {sorted(_LINK_ATTR)}")
        self.kind = kind
        self.link_attr = _LINK_ATTR[kind]
        self.lock_attr = _LOCK_ATTR[kind]
        self.holds_value = holds_value
        self.head = LRULink(None)
        self.tail = LRULink(None)
        self.head.next = self.tail
        self.tail.prev = self.head
        self.size = 0

    # -- membership ----------------------------------------------------------------------------
    def link(self, node: TreeNode) -> LRULink:
        return getattr(node, self.link_attr)

    def in_list(self, node: TreeNode | None) -> bool:
        return node is not None and getattr(node, self.link_attr).prev is not None

    __contains__ = in_list

    def __len__(self) -> int:
        return self.size

    # -- mutation ------------------------------------------------------------------------------
    def _link_after(self, anchor: LRULink, link: LRULink) -> None:
        nxt = anchor.next
        link.prev = anchor
        link.next = nxt
        anchor.next = link
        nxt.prev = link

    @staticmethod
    def _unlink(link: LRULink) -> None:
        link.prev.next = link.next
        link.next.prev = link.prev
        link.prev = link.next = None

    def insert_mru(self, node: TreeNode) -> None:
        """Add ``node`` at the most-recently-used end. It must not be a member yet."""
        link = getattr(node, self.link_attr)
        if link.prev is not None:
            raise CacheAssertionError(f"{self.kind} LRU: node {node.id} is already in the list")
        if not self.holds_value(node):
            raise CacheAssertionError(f"{self.kind} LRU: node {node.id} has no value for this list")
        self._link_after(self.head, link)
        self.size += 1

    def insert_by_time(self, node: TreeNode) -> None:
        """Add ``node`` where its ``last_access_time`` belongs (behind every newer member), so that
        list order stays time order. Equals :meth:`insert_mru` for the newest node."""
        link = getattr(node, self.link_attr)
        if link.prev is not None:
            raise CacheAssertionError(f"{self.kind} LRU: node {node.id} is already in the list")
        if not self.holds_value(node):
            raise CacheAssertionError(f"{self.kind} LRU: node {node.id} has no value for this list")
        anchor, t = self.head, node.last_access_time
        while anchor.next is not self.tail and anchor.next.node.last_access_time > t:
            anchor = anchor.next
        self._link_after(anchor, link)
        self.size += 1

    def remove_node(self, node: TreeNode) -> None:
        """Take ``node`` out of the list. It must be a member."""
        link = getattr(node, self.link_attr)
        if link.prev is None:
            raise CacheAssertionError(f"{self.kind} LRU: node {node.id} is not in the list")
        self._unlink(link)
        self.size -= 1

    def discard(self, node: TreeNode) -> None:
        """Take ``node`` out of the list if it is a member."""
        link = getattr(node, self.link_attr)
        if link.prev is not None:
            self._unlink(link)
            self.size -= 1

    def reset_node_mru(self, node: TreeNode) -> None:
        """Move a member to the most-recently-used end."""
        link = getattr(node, self.link_attr)
        if link.prev is None:
            raise CacheAssertionError(f"{self.kind} LRU: node {node.id} is not in the list")
        self._unlink(link)
        self._link_after(self.head, link)

    def reset_node_and_parents_mru(self, node: TreeNode, root: TreeNode) -> None:
        """Move ``node`` and its ancestors (up to, not including, ``root``) to the MRU end,
        child ahead of parent. Ancestors for which ``holds_value`` is false are skipped; the
        ones that qualify must already be members."""
        anchor = self.head
        attr = self.link_attr
        holds = self.holds_value
        while node is not root and node is not None:
            if holds(node):
                link = getattr(node, attr)
                if link.prev is None:
                    raise CacheAssertionError(f"{self.kind} LRU: node {node.id} is not in the list")
                if link is not anchor.next:
                    self._unlink(link)
                    self._link_after(anchor, link)
                anchor = link
            node = node.parent

    # -- queries -------------------------------------------------------------------------------
    def lru_no_lock(self) -> TreeNode | None:
        """The least recently used member whose lock counter is 0, or ``None``."""
        return self._walk_to_head(self.tail.prev)

    def prev_no_lock(self, node: TreeNode) -> TreeNode | None:
        """The next more-recently-used unlocked member after ``node`` (toward the head)."""
        link = getattr(node, self.link_attr)
        if link.prev is None:
            raise CacheAssertionError(f"{self.kind} LRU: node {node.id} is not in the list")
        return self._walk_to_head(link.prev)

    def _walk_to_head(self, link: LRULink) -> TreeNode | None:
        lock_attr = self.lock_attr
        head = self.head
        while link is not head:
            if getattr(link.node, lock_attr) == 0:
                return link.node
            link = link.prev
        return None

    def drain(self, budget: int, take: Callable[[TreeNode], int]) -> int:
        """Offer unlocked members to ``take``, least recently used first, until ``budget`` units
        were taken or no member is left; returns the units taken.

        ``take(node)`` frees what it can and returns how many units it freed (0: skipped, the walk
        goes on toward the head). The next candidate is found before ``take`` runs; when ``take``
        freed something and that candidate left the list meanwhile (a cascade deleted it), the
        walk starts again at the tail.
        """
        taken = 0
        node = self.lru_no_lock()
        while taken < budget and self.in_list(node):
            following = self.prev_no_lock(node)
            got = take(node)
            taken += got
            if got and not self.in_list(following):
                following = self.lru_no_lock()
            node = following
        return taken

    def nodes(self) -> Iterator[TreeNode]:
        """Members from most to least recently used."""
        link = self.head.next
        while link is not self.tail:
            yield link.node
            link = link.next

    def order(self) -> list[int]:
        """Member ids from most to least recently used."""
        return [n.id for n in self.nodes()]

    def __repr__(self) -> str:
        return f"LRUList({self.kind}, MRU→LRU {self.order()})"
