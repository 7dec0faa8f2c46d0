"""HiMambaRadixCache: the tiered (device + host) radix cache for hybrid Mamba/attention models.

Each node's KV and state can live on the device, the host, or both. The class is the facade of
:mod:`himamba.cache.facade` with the tiered operations added; the parts it is made of
(:mod:`himamba.cache.build`):

* ``host_tier`` (:mod:`~himamba.cache.host_tier`) — host pools, host LRU, host leaves, pins;
* ``cache_controller`` (:class:`~himamba.memory.transfer.TransferController`) — the copies;
* ``in_flight`` (:mod:`~himamba.cache.in_flight`) — writes, loads, storage operations under way;
* ``backup`` (:mod:`~himamba.cache.backup`), ``loader`` (:mod:`~himamba.cache.load_back`),
  ``storage_ops`` (:mod:`~himamba.cache.storage`);
* the tiered cascade rule, the write policy and the load-back rule (:mod:`~himamba.cache.policies`).

Size: over 300 lines because it is the tiered public contract (each operation's argument checks and
the docstring that states what it changes); the work itself is in the parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from himamba.cache import build
from himamba.cache.facade import RadixCacheBase
from himamba.cache.load_failure import settle_failed_loads
from himamba.cache.results import Request
from himamba.core.lru import LRUList
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError, LockError
from himamba.memory import slot_ids
from himamba.memory.pools import KVPool, MambaPool
from himamba.observe.events import operation
from himamba.validate import (
    check_allocation,
    check_bool,
    check_count,
    check_quota,
    check_slot_tensor,
    check_token_ids,
    physical_memory_bytes,
)


def _in_flight_field(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.in_flight, name), doc=doc)


class HiMambaRadixCache(RadixCacheBase):
    """Tiered radix cache over real device and host pools.

    ``HiMambaRadixCache(config, manual_acks=True)`` keeps every transfer in flight until
    ``cache.cache_controller.complete(...)`` (or ``cache.storage.complete(...)``) releases it.
    """

    tiered = True

    def __init__(self, config=None, *, manual_acks: bool = False, **overrides: Any) -> None:
        self._manual_acks = check_bool(manual_acks, "manual_acks")
        super().__init__(config, **overrides)

    def _check_memory(self, config) -> None:
        """The host pools live in this machine's RAM, next to the device pools when the device is
        the CPU; refuse sizes that cannot fit before anything is allocated."""
        super()._check_memory(config)
        host = config.host_bytes() + (config.device_bytes() if self.device.type == "cpu" else 0)
        check_allocation(host, "the host pools", physical_memory_bytes(), "this machine's RAM")

    def _assemble(self) -> None:
        host, controller = build.host_parts(self, self._manual_acks)
        self.host_tier = host
        self.cache_controller = controller
        self.host_kv_pool: KVPool = host.host_kv_pool
        self.host_mamba_pool: MambaPool = host.host_mamba_pool
        self.mamba_host_lru_list: LRUList = host.mamba_host_lru_list
        build.assemble(self, host, controller)

    def _tiers(self) -> tuple:
        return (self.device_tier, self.host_tier)

    @operation("reset")
    def reset(self) -> None:
        """Finish or drop everything in flight, free every slot the tree owns, start empty.

        Issued copies are waited for (so nothing lands later in reused slots); queued loads are
        dropped unissued; prefetch slots are freed; storage contents are kept."""
        cc = self.cache_controller
        cc.drop_pending_loads()
        for queue in (cc.ack_write_queue, cc.ack_load_queue):
            while queue:
                queue.popleft().wait()
        for entry in self.in_flight.prefetch.values():
            self.host_kv_pool.free(entry[2])
            if entry[4] is not None:
                self.host_mamba_pool.free(entry[4])
        if self.storage is not None:
            self.storage.ops.clear()
        super().reset()
        self.in_flight.reset()

    # -- fields of the parts ------------------------------------------------------------------------
    evictable_full_host_leaves = property(lambda self: self.host_tier.leaves, doc="Evictable host leaves.")
    ongoing_write_through = _in_flight_field("write_through", "Node id -> node whose write is not yet acknowledged.")
    _locked_writes = _in_flight_field("locked_writes", "Ids of writes that locked their node.")
    ongoing_load_back = _in_flight_field("load_back", "Node id -> node being loaded back.")
    ongoing_prefetch = _in_flight_field("prefetch", "Request id -> prefetch in flight.")
    ongoing_backup = _in_flight_field("backup", "Storage op id -> (node, state pinned).")

    @property
    def write_policy(self) -> str:
        return self.config.write_policy

    @property
    def write_through_threshold(self) -> int:
        """Insert-time hits at which a node is backed up (1 under write_through, else 2)."""
        return self.write_policy_object.threshold

    @property
    def load_back_threshold(self) -> int:
        return self.load_back_rule.threshold

    def check_releasable(self, node: TreeNode) -> None:
        """Also refuse a release that would take a lock an in-flight load or locked write holds
        (those are released by ``loading_check`` / ``writing_check`` only)."""
        super().check_releasable(node)
        self.in_flight.check_release(node, self.tree.root)

    # -- host pins (reference §3.13) ------------------------------------------------------------------
    @operation("protect_host")
    def protect_host(self, node: TreeNode, mamba: bool = False) -> None:
        """Pin ``node``'s host KV (and, with ``mamba``, its host state) against host eviction.

        Changes: ``host_ref_counter += 1`` (and ``host_mamba_ref_counter += 1``); the node leaves
        the host-leaf set (and the host LRU list)."""
        self.tree.check_in_tree(node)
        check_bool(mamba, "mamba")
        if node is self.root_node or node.host_value is None:
            raise InvalidInputError(f"protect_host: node #{node.id} has no host KV to pin (pin a backed-up node)")
        if mamba and node.mamba_host_value is None:
            raise InvalidInputError(f"protect_host(mamba=True): node #{node.id} has no host state to pin")
        self.host_tier.pin(node, mamba)

    @operation("release_host")
    def release_host(self, node: TreeNode, mamba: bool = False) -> None:
        """Release one pin taken by :meth:`protect_host` (same ``mamba`` flag). Raises
        :class:`LockError`, changing nothing, when a counter would go below zero. With legacy B1
        the cascade may have deleted a pinned node; its pin is released as upstream releases it
        (the node may then rejoin the host-leaf set, and the next ``evict_host`` that takes it
        fails with upstream's ``parent does not have child key``)."""
        try:
            self.tree.check_in_tree(node)
        except InvalidInputError:
            if not (self.release_deleted_pins and isinstance(node, TreeNode) and node.host_ref_counter > 0):
                raise
        check_bool(mamba, "mamba")
        kv_held, mamba_held = self.in_flight.internal_pins(node)
        if node.host_ref_counter <= kv_held or (mamba and node.host_mamba_ref_counter <= mamba_held):
            held = f"; {kv_held} held by storage operations in flight" if kv_held else ""
            raise LockError(f"release_host(#{node.id}, mamba={mamba}): no pin of the caller's to release "
                            f"(hr={node.host_ref_counter}, hmr={node.host_mamba_ref_counter}{held})")
        self.host_tier.unpin(node, mamba)

    # -- device -> host (reference §3.9, §3.11) --------------------------------------------------------
    @operation("write_backup")
    def write_backup(self, node: TreeNode, write_back: bool = False) -> int:
        """Copy ``node``'s device KV (and device state) to host; returns host tokens written (0 if
        skipped or host memory is short even after one ``evict_host``).

        Without ``write_back`` the copy is skipped unless the parent is root or backed up
        (contiguity, #22062; legacy B4 drops the check), and the node is locked until the ack.
        During the one ``evict_host`` retry the node is locked, so that the cascade of a host
        child's eviction cannot delete the node being written (upstream has no such guard).
        A failed copy or allocation raises :class:`~himamba.errors.TransferFailure` /
        :class:`~himamba.errors.AllocationFailure` with the node as it was.
        """
        self.tree.check_in_tree(node)
        check_bool(write_back, "write_back")
        if node is self.root_node or node.value is None:
            raise InvalidInputError(f"write_backup: node #{node.id} has no device KV to back up")
        if node.host_value is not None:
            raise InvalidInputError(f"write_backup: node #{node.id} is already backed up")
        return self.backup.write(node, write_back, quiet=False)

    @operation("writing_check")
    def writing_check(self, write_back: bool = False) -> int:
        """Process finished write acks in order: release the write-through lock and start the
        storage backup. ``write_back=True`` waits for (and completes) every ack in flight; write-back
        writes never locked, and a locked write drained this way is unlocked too (upstream's
        blocking drain unlocks nothing: legacy B15). Returns acks processed."""
        check_bool(write_back, "write_back")
        return self.backup.writing_check(write_back)

    # -- host -> device (reference §3.11, §3.12) --------------------------------------------------------
    @operation("ready_to_load_host_cache")
    def ready_to_load_host_cache(self) -> int:
        """Start the queued loads (the consuming batch is launching). Returns loads started.

        A load whose copy fails while landing is retracted here, before anything reads its bytes
        (:mod:`himamba.cache.load_failure`): its chain is host-only again, its device slots free,
        and a step says so. A caller that took the slots ``init_load_back`` returned checks that
        its node is still on device (``node.value is not None``) before using them."""
        started = self.cache_controller.start_loading()
        if started:
            settle_failed_loads(self)
        return started

    @operation("loading_check")
    def loading_check(self) -> int:
        """Process finished load acks in order, stopping at the first unfinished one: each
        releases its load-back lock. Returns acks processed."""
        return self.backup.loading_check()

    @operation("check_hicache_events")
    def check_hicache_events(self) -> None:
        """What a scheduler runs every step: writing_check, loading_check, storage progress."""
        self.writing_check()
        self.loading_check()
        if self.storage is not None:
            self.check_storage_progress()

    @operation("init_load_back")
    def init_load_back(self, node: TreeNode, mem_quota: int | None = None, req: Request | None = None
                       ) -> tuple[torch.Tensor, TreeNode]:
        """Bring the matched prefix ending at ``node`` (usually ``best_match_node``) to device.

        If ``node`` is not on device, or has only a host state, try :meth:`load_back`; when that
        loads, returns (its device indices, ``node``). A load whose allocation fails is skipped as
        a shortage is (reported in a step, nothing changed). Otherwise climbs to the nearest ancestor
        with device KV and a device state (or the root) and returns (empty, that node).
        """
        self._check_load_args(node, mem_quota, req)
        root = self.root_node
        if node.value is None or (node.mamba_value is None and node.mamba_host_value is not None):
            loaded = self.loader.load_back(node, mem_quota, req, quiet=True)
            if loaded is not None:
                return slot_ids.clone(loaded), node  # the caller's copy: the tree keeps its own
            while node is not root and (node.value is None or node.mamba_value is None):
                node = node.parent
        return self.empty_indices, node

    @operation("load_back")
    def load_back(self, node: TreeNode, mem_quota: int | None = None, req: Request | None = None) -> torch.Tensor | None:
        """Queue the host -> device load of ``node``'s evicted chain and restore its state.

        Returns the device slots of the loaded KV (empty when only a state is restored) or
        ``None`` when skipped (the load-back rule: fewer than ``load_back_threshold`` tokens, or
        more than ``mem_quota`` plus what locking freed; legacy B13 lifts both whenever a state is
        restored) or when device memory cannot be found. On success the chain is on device and
        ``node`` stays locked until ``loading_check``. While device room is made, ``node``'s host
        copies are pinned (upstream has no such guard: legacy B14), and loaded nodes enter the
        device lists at the place their access times give (legacy B17: at the MRU end).
        """
        self._check_load_args(node, mem_quota, req)
        if node is self.root_node or not (node.value is None or (node.mamba_value is None and node.mamba_host_value is not None)):
            raise InvalidInputError(f"load_back: node #{node.id} has nothing to load (its KV and state are on device or it has no host copy)")
        return self.loader.load_back(node, mem_quota, req, quiet=False)

    def _check_load_args(self, node: TreeNode, mem_quota: object, req: object) -> None:
        """``node`` in this tree, ``mem_quota`` None or a non-negative number, ``req`` None or a
        Request whose ``mamba_pool_idx`` (if set) is one allocated state slot of its own."""
        self.tree.check_in_tree(node)
        check_quota(mem_quota, "mem_quota")
        if req is None:
            return
        if not isinstance(req, Request):
            raise InvalidInputError(f"req must be a Request or None, got {type(req).__name__}")
        slot = req.mamba_pool_idx
        if slot is not None:
            check_slot_tensor(slot, "req.mamba_pool_idx", one=True)
            problem = self.mamba_pool.allocator.handover_problem(slot, 0, "req.mamba_pool_idx", pool="state")
            if problem is not None:
                raise InvalidInputError(problem)

    # -- host eviction (reference §3.8) ------------------------------------------------------------------
    @operation("evict_host")
    def evict_host(self, num_tokens: int) -> int:
        """Free host KV by deleting host-only leaves, oldest first (then the cascade).

        The loop stops once its count reaches ``num_tokens``; that count, as upstream's, adds
        each leaf's host tokens and the cascade's *device* tokens but not the cascade's host
        tokens (B11). Returns the host KV tokens actually freed. Pinned nodes are never taken.
        """
        check_count(num_tokens, "evict_host(num_tokens)")
        return self.eviction.evict_host(self.host_tier, num_tokens)

    @operation("evict_mamba_host")
    def evict_mamba_host(self, num_states: int) -> int:
        """Free up to ``num_states`` host state slots, least recently used first. A host-only leaf
        goes whole (host KV too, then the cascade); any other node only loses its host state.
        Returns the host states freed."""
        check_count(num_states, "evict_mamba_host(n)")
        return self.eviction.evict_mamba_host(self.host_tier, num_states)

    # -- storage (reference §3.14) -------------------------------------------------------------------------
    @operation("write_backup_storage")
    def write_backup_storage(self, node: TreeNode) -> int | None:
        """Copy ``node``'s host KV (and host state) to storage; pin the node until the storage
        ack (``check_storage_progress``). Returns the operation id (``None`` without storage)."""
        self.tree.check_in_tree(node)
        if self.storage_ops is None:
            return None
        return self.storage_ops.write_backup_storage(node)

    @operation("check_storage_progress")
    def check_storage_progress(self) -> int:
        """Finish completed storage backups: the pages land in storage and the pins are released.
        Returns backups finished."""
        return 0 if self.storage_ops is None else self.storage_ops.check_storage_progress()

    @operation("prefetch_from_storage")
    def prefetch_from_storage(self, req_id: object, anchor: TreeNode, tokens: Sequence[int]) -> int:
        """Fetch the stored pages that continue ``anchor`` by ``tokens`` into new host slots.

        ``anchor`` is the root or a backed-up node (upstream anchors at ``last_host_node``).
        Pins the anchor's host KV (and its host state once a state slot is allocated); allocates
        host KV (one ``evict_host`` retry) and a host state slot when storage has the state (one
        ``evict_mamba_host`` retry), undoing everything on failure. Returns the tokens being
        fetched (0: nothing to fetch, below the threshold, or no room).
        """
        self.tree.check_in_tree(anchor)
        tokens = check_token_ids(tokens, "tokens")
        try:
            hash(req_id)
        except TypeError:
            raise InvalidInputError(f"req_id must be hashable (a request id), got {type(req_id).__name__}") from None
        if anchor is not self.root_node and anchor.host_value is None:
            raise InvalidInputError(
                f"prefetch anchor #{anchor.id} is not backed up: anchor at the root or a match's last_host_node"
            )
        if self.storage_ops is None:
            return 0
        return self.storage_ops.prefetch_from_storage(req_id, anchor, tokens)

    @operation("check_prefetch_progress")
    def check_prefetch_progress(self, req_id: object) -> int | None:
        """If ``req_id``'s prefetch has completed: hang the fetched tokens under the anchor as
        host-only nodes, free the slots of the part already cached, release the pins. Returns the
        tokens newly inserted, or ``None`` while the prefetch is still in flight."""
        if self.storage_ops is None:
            raise InvalidInputError(f"no prefetch in flight for request {req_id!r}")
        return self.storage_ops.check_prefetch_progress(req_id)
