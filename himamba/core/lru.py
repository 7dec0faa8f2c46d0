"""Intrusive LRU lists with explicit link objects and sentinels.

Every node carries one :class:`LRULink` per list, as an ordinary field (a
:class:`~himamba.core.node.TreeNode` has ``full_link``, ``mamba_link`` and ``host_mamba_link``).
A list is a doubly linked chain of those links between two sentinels: ``head`` (most recently
used side) and ``tail`` (least recently used side). Membership is "the link is chained"
(``link.prev is not None``), so no dictionary is kept.

A list is told three things when it is built, each as a plain function of a node: ``link`` (which
of the node's link fields it chains), ``lock_count`` (the counter that, when not 0, makes
:meth:`LRUList.lru_no_lock` pass the node by) and ``holds_value`` (may the node be a member).
This module knows no node class; :mod:`himamba.core.node` builds the tiered cache's three lists
(reference §1.4) with :func:`~himamba.core.node.full_lru_list` and its siblings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from himamba.errors import CacheAssertionError

Node = Any  # anything with an ``id``, a ``parent`` and a ``last_access_time``


class LRULink:
    """One node's position in one LRU list (``node`` is ``None`` for the two sentinels, and once a
    node has left the tree for good: see ``_detach``)."""

    __slots__ = ("prev", "next", "node")

    def __init__(self, node: Node | None) -> None:
        self.prev: LRULink | None = None
        self.next: LRULink | None = None
        self.node = node


class LRUList:
    """A doubly linked LRU list over one of the node's link fields.

    ``name`` labels messages (``"full"``, ``"mamba"``, ``"host_mamba"``). ``link(node)`` is the
    node's link for this list; ``lock_count(node)`` its lock counter for this list (members with
    a counter other than 0 are skipped by :meth:`lru_no_lock`, :meth:`prev_no_lock` and
    :meth:`drain`); ``holds_value(node)`` tells whether a node may be a member (KV on device,
    device state, host state): :meth:`insert_mru` asserts it and
    :meth:`reset_node_and_parents_mru` moves only ancestors for which it holds.
    """

    def __init__(self, name: str, *, link: Callable[[Node], LRULink], lock_count: Callable[[Node], int],
                 holds_value: Callable[[Node], bool]) -> None:
        self.kind = name
        self.link = link
        self.lock_count = lock_count
        self.holds_value = holds_value
        self.head = LRULink(None)
        self.tail = LRULink(None)
        self.head.next = self.tail
        self.tail.prev = self.head
        self.size = 0

    # -- membership ----------------------------------------------------------------------------
    def in_list(self, node: Node | None) -> bool:
        return node is not None and self.link(node).prev is not None

    __contains__ = in_list

    def __len__(self) -> int:
        return self.size

    # -- mutation ------------------------------------------------------------------------------
    @staticmethod
    def _link_after(anchor: LRULink, link: LRULink) -> None:
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

    def _not_outside(self, node: Node) -> CacheAssertionError:
        """Why ``node`` cannot be inserted: already a member, or holds no value for this list."""
        why = "is already in the list" if self.link(node).prev is not None else "has no value for this list"
        return CacheAssertionError(f"{self.kind} LRU: node {node.id} {why}")

    def _not_member(self, node: Node) -> CacheAssertionError:
        return CacheAssertionError(f"{self.kind} LRU: node {node.id} is not in the list")

    def insert_mru(self, node: Node) -> None:
        """Add ``node`` at the most-recently-used end. It must not be a member yet."""
        link = self.link(node)
        if link.prev is not None or not self.holds_value(node):
            raise self._not_outside(node)
        self._link_after(self.head, link)
        self.size += 1

    def insert_by_time(self, node: Node) -> None:
        """Add ``node`` where its ``last_access_time`` belongs (behind every newer member), so that
        list order stays time order. Equals :meth:`insert_mru` for the newest node."""
        link = self.link(node)
        if link.prev is not None or not self.holds_value(node):
            raise self._not_outside(node)
        anchor, t, tail = self.head, node.last_access_time, self.tail
        while anchor.next is not tail and anchor.next.node.last_access_time > t:
            anchor = anchor.next
        self._link_after(anchor, link)
        self.size += 1

    def remove_node(self, node: Node) -> None:
        """Take ``node`` out of the list. It must be a member."""
        link = self.link(node)
        if link.prev is None:
            raise self._not_member(node)
        self._unlink(link)
        self.size -= 1

    def discard(self, node: Node) -> None:
        """Take ``node`` out of the list if it is a member."""
        link = self.link(node)
        if link.prev is not None:
            self._unlink(link)
            self.size -= 1

    def reset_node_mru(self, node: Node) -> None:
        """Move a member to the most-recently-used end."""
        link = self.link(node)
        prev = link.prev
        if prev is None:
            raise self._not_member(node)
        head = self.head
        if prev is head:
            return
        # unlink and relink at the head in one step: the hottest list operation (every walk)
        nxt = link.next
        prev.next = nxt
        nxt.prev = prev
        first = head.next
        link.prev, link.next = head, first
        head.next = first.prev = link

    def reset_node_and_parents_mru(self, node: Node, root: Node) -> None:
        """Move ``node`` and its ancestors (up to, not including, ``root``) to the MRU end,
        child ahead of parent. Ancestors for which ``holds_value`` is false are skipped; the
        ones that qualify must already be members."""
        anchor = self.head
        link_of, holds = self.link, self.holds_value
        while node is not root and node is not None:
            if holds(node):
                link = link_of(node)
                if link.prev is None:
                    raise self._not_member(node)
                if link.prev is not anchor:
                    self._unlink(link)
                    self._link_after(anchor, link)
                anchor = link
            node = node.parent

    # -- queries -------------------------------------------------------------------------------
    def lru_no_lock(self) -> Node | None:
        """The least recently used member whose lock counter is 0, or ``None``."""
        return self._walk_to_head(self.tail.prev)

    def prev_no_lock(self, node: Node) -> Node | None:
        """The next more-recently-used unlocked member after ``node`` (toward the head)."""
        link = self.link(node)
        if link.prev is None:
            raise self._not_member(node)
        return self._walk_to_head(link.prev)

    def _walk_to_head(self, link: LRULink) -> Node | None:
        lock_count = self.lock_count
        head = self.head
        while link is not head:
            if lock_count(link.node) == 0:
                return link.node
            link = link.prev
        return None

    def drain(self, budget: int, take: Callable[[Node], int]) -> int:
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

    def nodes(self) -> Iterator[Node]:
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
