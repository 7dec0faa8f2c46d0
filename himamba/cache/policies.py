"""Policy objects: the axes along which caches differ, each a small object chosen when the cache
is built (:mod:`himamba.cache.build`).

* **Cascade rule** — where the tombstone cascade stops (reference §3.10):
  :class:`DeviceCascadeRule`, :class:`TieredCascadeRule`, :class:`UnifiedCascadeRule`.
* **Write policy** — what an insert-time hit does and how a device leaf leaves the device
  (§3.6, §3.9): :class:`NoHostTier`, :class:`WriteThrough`, :class:`WriteBack`.
* **Load-back rule** — when a host hit is worth loading (§3.12): :class:`LoadBackRule`.

Eviction order (which leaf, which state) is :mod:`himamba.cache.eviction_policies`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from himamba.core.node import TreeNode
from himamba.errors import AllocationFailure, TransferFailure
from himamba.observe.events import EventKind


class CacheParts(Protocol):
    """What a write policy uses of a cache: its ``eviction`` part, its ``backup`` part (tiered),
    its ``events`` and the public ``write_backup`` / ``writing_check``."""

    eviction: Any
    backup: Any
    events: Any

    def write_backup(self, node: TreeNode, write_back: bool = False) -> int: ...
    def writing_check(self, write_back: bool = False) -> int: ...


# -- cascade rules -------------------------------------------------------------------------------
class DeviceCascadeRule:
    """Single tier: stop at the root, at a parent holding a device state, at a locked parent."""

    def stop_reason(self, parent: TreeNode, root: TreeNode) -> str | None:
        """Why the cascade must keep ``parent`` (``None``: delete it)."""
        if parent is root:
            return "parent is the root"
        if parent.mamba_value is not None:
            return f"parent #{parent.id} holds a device state"
        if parent.full_lock_ref > 0 or parent.mamba_lock_ref > 0:
            return f"parent #{parent.id} is locked (full_lock_ref={parent.full_lock_ref})"
        return None


class TieredCascadeRule(DeviceCascadeRule):
    """The single-tier rule, then: a host state, a host pin (the #23696 fix; ``honour_pins``
    off is legacy B1)."""

    def __init__(self, honour_pins: bool = True) -> None:
        self.honour_pins = honour_pins

    def stop_reason(self, parent: TreeNode, root: TreeNode) -> str | None:
        reason = super().stop_reason(parent, root)
        if reason is not None:
            return reason
        if parent.mamba_host_value is not None:
            return f"parent #{parent.id} holds a host state"
        if self.honour_pins and (parent.host_ref_counter > 0 or parent.host_mamba_ref_counter > 0):
            return f"host pin: parent #{parent.id} has host_ref_counter={parent.host_ref_counter}"
        return None


class UnifiedCascadeRule(TieredCascadeRule):
    """SGLang's unified tree (``cascade_rule="unified"``): every childless tombstone stays, as a
    leaf that ordinary eviction removes later."""

    def stop_reason(self, parent: TreeNode, root: TreeNode) -> str | None:
        reason = super().stop_reason(parent, root)
        if reason is not None:
            return reason
        tier = "device" if parent.value is not None else "host"
        return f"unified rule: parent #{parent.id} stays as a {tier} leaf (its KV is on {tier})"


# -- write policies --------------------------------------------------------------------------------
class NoHostTier:
    """A device-only cache: a hit only counts; a device leaf leaving the device is deleted."""

    name = "none"

    def on_hit(self, cache: CacheParts, node: TreeNode, chunked: bool) -> None:
        """Count an insert-time hit unless the insert is a chunk of a chunked prefill."""
        if not chunked:
            node.hit_count += 1

    def evict_leaf(self, cache: CacheParts, node: TreeNode) -> tuple[int, TreeNode | None]:
        """Take one evictable device leaf off the device. Returns (device tokens freed, the deepest
        surviving ancestor, ``None`` when the leaf stays)."""
        return cache.eviction.delete_leaf(node)


class WriteThrough(NoHostTier):
    """``write_through`` (threshold 1) and ``write_through_selective`` (threshold 2): a hit that
    reaches the threshold backs the node up; a backed-up leaf is demoted, any other deleted."""

    def __init__(self, name: str, threshold: int) -> None:
        self.name = name
        self.threshold = threshold

    def on_hit(self, cache: CacheParts, node: TreeNode, chunked: bool) -> None:
        if chunked:
            return
        node.hit_count += 1
        if node.host_value is None and node.hit_count >= self.threshold:
            # a failed write is reported in a step, the node as it was: a later hit writes it again
            with contextlib.suppress(TransferFailure, AllocationFailure):
                cache.write_backup(node)

    def evict_leaf(self, cache: CacheParts, node: TreeNode) -> tuple[int, TreeNode | None]:
        if node.host_value is not None:
            return cache.eviction.demote(node)
        return cache.eviction.delete_leaf(node)


class WriteBack(NoHostTier):
    """``write_back``: hits are not counted; a leaf is written to host when it is evicted, then
    demoted. A failed write deletes the leaf, or keeps it when it has host children;
    ``demote_failed`` (legacy B7) demotes it anyway and asserts as upstream."""

    name = "write_back"
    threshold = 2

    def __init__(self, demote_failed: bool = False) -> None:
        self.demote_failed = demote_failed

    def on_hit(self, cache: CacheParts, node: TreeNode, chunked: bool) -> None:
        return

    def evict_leaf(self, cache: CacheParts, node: TreeNode) -> tuple[int, TreeNode | None]:
        eviction = cache.eviction
        if node.host_value is not None:
            return eviction.demote(node)
        written = cache.backup.write(node, write_back=True)
        cache.writing_check(write_back=True)
        if written or self.demote_failed:
            return eviction.demote(node)
        if node.children:
            if cache.events.active:
                cache.events.emit(EventKind.CASCADE, f"#{node.id}: backup failed and it has host children: kept on device", (node.id,))
            return 0, None
        return eviction.delete_leaf(node)


# -- load-back rule ----------------------------------------------------------------------------------
class LoadBackRule:
    """A load of ``n`` host tokens is skipped below ``threshold`` tokens (unless it restores a
    state) or above the caller's quota. ``quota_ignored_with_restore`` (legacy B13) lifts both
    whenever a state is restored."""

    def __init__(self, threshold: int, quota_ignored_with_restore: bool = False) -> None:
        self.threshold = threshold
        self.quota_ignored_with_restore = quota_ignored_with_restore

    def explain(self, n: int, restore: bool) -> str:
        """Why a load of ``n`` host tokens goes ahead, for its step text."""
        if restore and n < self.threshold:
            return f"load-back rule: restores a state, so the threshold of {self.threshold} tokens is lifted"
        return f"load-back rule: {n} host tokens >= threshold {self.threshold}, within the quota"

    def skip(self, n: int, restore: bool, over_quota: bool) -> bool:
        if self.quota_ignored_with_restore:
            return n > 0 and (n < self.threshold or over_quota) and not restore
        return n > 0 and ((n < self.threshold and not restore) or over_quota)
