"""TreeNode: one edge of the radix tree with its device/host KV, its mamba states and counters.

Field names follow SGLang's ``TreeNode`` so that readers can map them one to one:

=========================  ========================================================================
``key``                    the edge's tokens (:class:`RadixKey`)
``value``                  int64 device KV slots, one per token; ``None`` => KV not on device
``host_value``             int64 host KV slots, one per token; ``None`` => no host copy
``mamba_value``            1-element tensor, device state slot after the last token; ``None`` =>
                           device tombstone
``mamba_host_value``       1-element tensor, host state slot; ``None`` => no host state
``full_lock_ref``          device KV lock count (propagated to ancestors by ``inc_lock_ref``)
``mamba_lock_ref``         device state lock count (this node only)
``host_ref_counter``       host KV pin count
``host_mamba_ref_counter`` host state pin count
``tombstone_lock_ref``     locks taken on this node while it had no device state (ours: the B10
                           guard, so such a lock is never released as a state lock)
``evicted_lock_ref``       locks whose walk passed this node while its KV was off device (ours:
                           the same guard for KV, so such a lock is not released from a node
                           that came back to device in between)
``hit_count``              insert-time hits (drives write-through)
``last_access_time``       value of the cache's access clock; orders nodes in heaps (``__lt__``)
=========================  ========================================================================

Each LRU list has its own explicit link object on the node (``full_link``, ``mamba_link``,
``host_mamba_link``, the last made on first use); the functions at the end of this module build
the three lists over them (reference §1.4):

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

from typing import Any

from himamba.core.key import RadixKey, preview
from himamba.core.lru import LRULink, LRUList
from himamba.errors import LockError


class TreeNode:
    """A node of the radix tree. Structure is plain Python; values are index tensors."""

    __slots__ = (
        "id",
        "key",
        "parent",
        "children",
        "value",
        "host_value",
        "mamba_value",
        "mamba_host_value",
        "full_lock_ref",
        "mamba_lock_ref",
        "host_ref_counter",
        "host_mamba_ref_counter",
        "tombstone_lock_ref",
        "evicted_lock_ref",
        "hit_count",
        "last_access_time",
        "full_link",
        "mamba_link",
        "_host_mamba_link",
    )

    def __init__(self, node_id: int, key: RadixKey, parent: TreeNode | None = None) -> None:
        self.id = node_id
        self.key = key
        self.parent = parent
        self.children: dict[Any, TreeNode] = {}
        self.value = None
        self.host_value = None
        self.mamba_value = None
        self.mamba_host_value = None
        self.full_lock_ref = 0
        self.mamba_lock_ref = 0
        self.host_ref_counter = 0
        self.host_mamba_ref_counter = 0
        self.tombstone_lock_ref = 0
        self.evicted_lock_ref = 0
        self.hit_count = 0
        self.last_access_time = 0.0
        self.full_link = LRULink(self)
        self.mamba_link = LRULink(self)
        self._host_mamba_link: LRULink | None = None  # made on first use: see host_mamba_link

    @property
    def host_mamba_link(self) -> LRULink:
        """The host-state list's link, made on first use: a device-only tree never needs one, and
        every object a node carries is one more for the garbage collector to visit."""
        link = self._host_mamba_link
        if link is None:
            link = self._host_mamba_link = LRULink(self)
        return link

    # -- predicates (reference §1.3) ---------------------------------------------------------
    @property
    def evicted(self) -> bool:
        """KV is not on the device (``value is None``)."""
        return self.value is None

    @property
    def backuped(self) -> bool:
        """KV has a host copy (``host_value is not None``)."""
        return self.host_value is not None

    @property
    def mamba_evicted(self) -> bool:
        """No device state: the node is a (device) tombstone."""
        return self.mamba_value is None

    @property
    def mamba_backuped(self) -> bool:
        """The state has a host copy."""
        return self.mamba_host_value is not None

    @property
    def is_root(self) -> bool:
        return self.parent is None

    # -- raw host pins (as SGLang's TreeNode; the cache's protect_host keeps sets right) -----
    def protect_host(self) -> None:
        """Raw: ``host_ref_counter += 1``. Leaf sets are *not* updated; use the cache's method."""
        self.host_ref_counter += 1

    def release_host(self) -> None:
        """Raw: ``host_ref_counter -= 1``; raises :class:`LockError` below zero."""
        if self.host_ref_counter <= 0:
            raise LockError(f"node {self.id}: release_host with host_ref_counter == 0")
        self.host_ref_counter -= 1

    def protect_host_mamba(self) -> None:
        """Raw: ``host_mamba_ref_counter += 1``."""
        self.host_mamba_ref_counter += 1

    def release_host_mamba(self) -> None:
        """Raw: ``host_mamba_ref_counter -= 1``; raises :class:`LockError` below zero."""
        if self.host_mamba_ref_counter <= 0:
            raise LockError(f"node {self.id}: release_host_mamba with host_mamba_ref_counter == 0")
        self.host_mamba_ref_counter -= 1

    # -- presentation ------------------------------------------------------------------------
    def __lt__(self, other: TreeNode) -> bool:
        return self.last_access_time < other.last_access_time

    def kv_tier(self) -> str:
        """``D``, ``H``, ``DH`` or ``-``."""
        return tier_text(self.value is not None, self.host_value is not None)

    def state_tier(self) -> str:
        """``-``, ``d``, ``h`` or ``dh``."""
        return tier_text(self.mamba_value is not None, self.mamba_host_value is not None, state=True)

    def label(self) -> str:
        """One-line summary, e.g. ``#3[4,5] KV=DH M=dh fl=1 ml=1 hr=0 hmr=0``."""
        return node_label(self.id, self.key.token_ids, self.kv_tier(), self.state_tier(), self.full_lock_ref,
                          self.mamba_lock_ref, self.host_ref_counter, self.host_mamba_ref_counter)

    def __repr__(self) -> str:
        return f"TreeNode({self.label()})"


# -- the text form of a node (a live one here, a snapshot's NodeView in himamba.observe) ----------
def tier_text(on_device: bool, on_host: bool, *, state: bool = False) -> str:
    """Where a node's KV is (``D``, ``H``, ``DH``, ``-``) or, with ``state``, its state (``d``,
    ``h``, ``dh``, ``-``)."""
    text = ("D" if on_device else "") + ("H" if on_host else "")
    return (text.lower() if state else text) or "-"


def node_label(node_id: int, tokens, kv_tier: str, state_tier: str, full_lock_ref: int, mamba_lock_ref: int,
               host_ref_counter: int, host_mamba_ref_counter: int) -> str:
    """``#3[4,5] KV=DH M=dh fl=1 ml=1 hr=0 hmr=0``: a node in one line."""
    return (f"#{node_id}{preview(tokens)} KV={kv_tier} M={state_tier} fl={full_lock_ref} ml={mamba_lock_ref} "
            f"hr={host_ref_counter} hmr={host_mamba_ref_counter}")


# -- the three LRU lists (see the table above) ----------------------------------------------------
def full_lru_list() -> LRUList:
    """Device KV: members have ``value``; nodes with ``full_lock_ref`` are passed by."""
    return LRUList("full", link=lambda n: n.full_link, lock_count=lambda n: n.full_lock_ref,
                   holds_value=lambda n: n.value is not None)


def mamba_lru_list() -> LRUList:
    """Device states: members have ``mamba_value``; nodes with ``mamba_lock_ref`` are passed by."""
    return LRUList("mamba", link=lambda n: n.mamba_link, lock_count=lambda n: n.mamba_lock_ref,
                   holds_value=lambda n: n.mamba_value is not None)


def host_mamba_lru_list() -> LRUList:
    """Host states: members have ``mamba_host_value``; nodes with the *device* state lock
    ``mamba_lock_ref`` are passed by (upstream's rule). Keeping pinned states out is the cache's
    business (it inserts and removes them)."""
    return LRUList("host_mamba", link=lambda n: n.host_mamba_link, lock_count=lambda n: n.mamba_lock_ref,
                   holds_value=lambda n: n.mamba_host_value is not None)
