"""Backup and load-back: write_backup and the write policies (§3.9), ack processing (§3.11),
init_load_back / load_back (§3.12).

A node counts as backed up as soon as its device -> host copy is *issued* (``host_value`` is
set); the bytes land later, and the ack is processed by ``writing_check``. Under write-through
the node is locked until then; under write-back, eviction waits for the copy on the spot.
Loading back marks the chain on device at once and locks it until ``loading_check`` sees the ack.

Size: over 300 lines because a write, its ack and a load-back share the in-flight maps and the locks
they hold (§3.9-3.12); apart, a reader would lose the path from a copy to its ack.
"""

from __future__ import annotations

import torch

from himamba.cache.hi_base import HiTreeBase
from himamba.cache.results import Request
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError, InvalidInputError, UpstreamFailure
from himamba.memory.transfer import StateTransfer
from himamba.observe.events import EventKind, operation
from himamba.validate import check_bool, check_quota, check_slot_tensor


class BackupMixin(HiTreeBase):
    """write_backup, writing_check, loading_check, init_load_back, load_back."""

    # -- device -> host -------------------------------------------------------------------------
    @operation("write_backup")
    def write_backup(self, node: TreeNode, write_back: bool = False) -> int:
        """Copy ``node``'s device KV (and device state) to host; returns host tokens written (0 if
        skipped or host memory is short even after one ``evict_host``).

        Without ``write_back`` the copy is skipped unless the parent is root or backed up
        (contiguity, #22062; legacy B4 drops the check), and the node is locked until the ack.
        During the one ``evict_host`` retry the node is locked, so that the cascade of a host
        child's eviction cannot delete the node being written (upstream has no such guard).
        """
        self._check_in_tree(node)
        check_bool(write_back, "write_back")
        if node is self.root_node or node.value is None:
            raise InvalidInputError(f"write_backup: node #{node.id} has no device KV to back up")
        if node.host_value is not None:
            raise InvalidInputError(f"write_backup: node #{node.id} is already backed up")
        return self._write_backup(node, write_back)

    def _write_backup(self, node: TreeNode, write_back: bool = False) -> int:
        parent = node.parent
        if (not write_back and parent is not self.root_node and parent.host_value is None
                and not self.config.has_legacy("B4")):
            if self.events.active:
                self.events.emit(EventKind.WRITE_ISSUED, f"#{node.id} not backed up: parent #{parent.id} is not backed up (contiguity)", (node.id,), skipped=True)
            return 0
        lru_h = self.mamba_host_lru_list
        if node.mamba_value is not None and node.mamba_host_value is not None and lru_h.in_list(node):
            lru_h.reset_node_mru(node)
        cc = self.cache_controller
        state = StateTransfer(node.mamba_host_value, node.mamba_value) if node.mamba_value is not None else None
        host = cc.write(node.value, node.id, state)
        if host is None:
            # Host eviction may delete this node's host children; its cascade must not then
            # delete the node being written (a childless tombstone by then): lock it meanwhile
            # (legacy B18 drops the lock, as upstream).
            if self.config.has_legacy("B18"):
                self.evict_host(len(node.value))
            else:
                self._inc_lock_ref(node)
                try:
                    self.evict_host(len(node.value))
                finally:
                    self._dec_lock_ref(node)
            state = StateTransfer(node.mamba_host_value, node.mamba_value) if node.mamba_value is not None else None
            host = cc.write(node.value, node.id, state)
        if host is None:
            if self.events.active:
                self.events.emit(EventKind.WRITE_ISSUED, f"#{node.id} not backed up: host memory is full", (node.id,), skipped=True)
            return 0
        node.host_value = host
        if state is not None and node.mamba_host_value is None:
            node.mamba_host_value = state.host
            if self._host_lru_admits(node):
                lru_h.insert_mru(node)
        self.ongoing_write_through[node.id] = node
        if not write_back:
            self._inc_lock_ref(node)
            self._locked_writes.add(node.id)
        if self.events.active:
            what = "KV and state" if state is not None else "KV only (no device state)"
            self.events.emit(EventKind.WRITE_ISSUED, f"#{node.id}{preview(node.key.token_ids)} backed up to host: {what}, {len(host)} tokens", (node.id,))
        return len(host)

    @operation("writing_check")
    def writing_check(self, write_back: bool = False) -> int:
        """Process finished write acks in order: release the write-through lock and start the
        storage backup. ``write_back=True`` waits for (and completes) every ack in flight; write-back
        writes never locked, and a locked write drained this way is unlocked too (upstream's
        blocking drain unlocks nothing, which only matters if a locked write was in flight).
        Returns acks processed."""
        check_bool(write_back, "write_back")
        queue = self.cache_controller.ack_write_queue
        done = 0
        if write_back:
            unlock = not self.config.has_legacy("B15")
            while queue:
                self._finish_write(queue.popleft(), unlock=unlock)
                done += 1
            return done
        if not self.ongoing_write_through:
            return 0
        while queue and queue[0].done():
            self._finish_write(queue.popleft())
            done += 1
        return done

    def _finish_write(self, ack, unlock: bool = True) -> None:
        """Complete one write ack: its nodes leave ``ongoing_write_through``; those whose write
        locked them are unlocked (unless ``unlock`` is false: legacy B15 leaks the lock)."""
        ack.wait()
        for node_id in ack.node_ids:
            node = self.ongoing_write_through.pop(node_id, None)
            if node is None:
                continue
            locked = node_id in self._locked_writes
            self._locked_writes.discard(node_id)
            unlock = unlock and locked
            if unlock:
                self._dec_lock_ref(node)
            if self.events.active:
                self.events.emit(EventKind.WRITE_ACKED, f"write of #{node.id} acknowledged" + (" (unlocked)" if unlock else ""), (node.id,))
            if self.storage is not None:
                self.write_backup_storage(node)

    # -- host -> device -------------------------------------------------------------------------
    @operation("ready_to_load_host_cache")
    def ready_to_load_host_cache(self) -> int:
        """Start the queued loads (the consuming batch is launching). Returns loads started."""
        return self.cache_controller.start_loading()

    @operation("loading_check")
    def loading_check(self) -> int:
        """Process finished load acks in order, stopping at the first unfinished one: each
        releases its load-back lock. Returns acks processed."""
        queue = self.cache_controller.ack_load_queue
        done = 0
        while queue and queue[0].done():
            ack = queue.popleft()
            ack.wait()
            done += 1
            for node_id in ack.node_ids:
                if node_id not in self.ongoing_load_back and self.config.has_legacy("B20"):
                    raise UpstreamFailure(f"KeyError: {node_id}")
                node = self.ongoing_load_back.pop(node_id, None)
                if node is not None:
                    self._dec_lock_ref(node)
                    if self.events.active:
                        self.events.emit(EventKind.LOAD_ACKED, f"load of #{node.id} acknowledged (unlocked)", (node.id,))
        return done

    @operation("check_hicache_events")
    def check_hicache_events(self) -> None:
        """What a scheduler runs every step: writing_check, loading_check, storage progress."""
        self.writing_check()
        self.loading_check()
        if self.storage is not None:
            self.check_storage_progress()

    @operation("init_load_back")
    def init_load_back(
        self, node: TreeNode, mem_quota: int | None = None, req: Request | None = None
    ) -> tuple[torch.Tensor, TreeNode]:
        """Bring the matched prefix ending at ``node`` (usually ``best_match_node``) to device.

        If ``node`` is not on device, or has only a host state, try :meth:`load_back`; when that
        loads, returns (its device indices, ``node``). Otherwise climbs to the nearest ancestor
        with device KV and a device state (or the root) and returns (empty, that node).
        """
        self._check_load_args(node, mem_quota, req)
        root = self.root_node
        if node.value is None or (node.mamba_value is None and node.mamba_host_value is not None):
            loaded = self._load_back(node, mem_quota, req)
            if loaded is not None:
                return loaded, node
            while node is not root and (node.value is None or node.mamba_value is None):
                node = node.parent
        return self._empty_indices, node

    @operation("load_back")
    def load_back(self, node: TreeNode, mem_quota: int | None = None, req: Request | None = None) -> torch.Tensor | None:
        """Queue the host -> device load of ``node``'s evicted chain and restore its state.

        Returns the device slots of the loaded KV (empty when only a state is restored) or
        ``None`` when skipped (fewer than ``load_back_threshold`` tokens, or more than
        ``mem_quota`` plus what locking freed — legacy B13 lifts both whenever a state is
        restored; by default only the threshold is lifted) or when device memory cannot be found.
        On success the chain is on device and ``node`` stays locked until ``loading_check``.

        While device room is made, ``node``'s host KV and host state are pinned, so that the
        evictions this may cause (through write-back writes and host evictions) cannot free the
        host copies being loaded; upstream has no such guard.

        Loaded nodes enter the device LRU lists at the place their access times give (upstream
        inserts at the MRU end, which breaks list/time order when ``node`` is not the node the
        last match retimed most recently, e.g. ``best_match_node`` above a deeper usable node).
        """
        self._check_load_args(node, mem_quota, req)
        if node is self.root_node or not (node.value is None or (node.mamba_value is None and node.mamba_host_value is not None)):
            raise InvalidInputError(f"load_back: node #{node.id} has nothing to load (its KV and state are on device or it has no host copy)")
        return self._load_back(node, mem_quota, req)

    def _check_load_args(self, node: TreeNode, mem_quota: object, req: object) -> None:
        """``node`` in this tree, ``mem_quota`` None or a non-negative number, ``req`` None or a
        Request whose ``mamba_pool_idx`` (if set) is one allocated state slot of its own."""
        self._check_in_tree(node)
        check_quota(mem_quota, "mem_quota")
        if req is None:
            return
        if not isinstance(req, Request):
            raise InvalidInputError(f"req must be a Request or None, got {type(req).__name__}")
        slot = req.mamba_pool_idx
        if slot is not None:
            check_slot_tensor(slot, "req.mamba_pool_idx", one=True)
            alloc = self.mamba_pool.allocator
            problem = alloc.handover_problem(slot, 0, "req.mamba_pool_idx", pool="state")
            if problem is not None:
                raise InvalidInputError(problem)

    def _load_back(self, node: TreeNode, mem_quota: int | None, req: Request | None) -> torch.Tensor | None:
        chain = []
        anchor = node
        while anchor.value is None:
            chain.append(anchor)
            anchor = anchor.parent
        chain.reverse()
        restore = node.mamba_host_value is not None and node.mamba_value is None
        delta = self._inc_lock_ref(anchor)
        host = torch.cat([c.host_value for c in chain]) if chain else self._empty_indices.cpu()
        n = len(host)
        over_quota = mem_quota is not None and n > mem_quota + delta
        if self.config.has_legacy("B13"):
            skip = n > 0 and (n < self.load_back_threshold or over_quota) and not restore
        else:
            skip = n > 0 and ((n < self.load_back_threshold and not restore) or over_quota)
        if skip:
            self._dec_lock_ref(anchor)
            if self.events.active:
                self.events.emit(EventKind.LOAD_ISSUED, f"load of #{node.id} skipped ({n} host tokens; threshold {self.load_back_threshold}, quota {mem_quota})", (node.id,), skipped=True)
            return None
        if restore and req is not None and req.mamba_pool_idx is None and self.config.has_legacy("B19"):
            # upstream takes the request's slot before the KV, and on failure raises with the
            # ancestor still locked
            slot = self._alloc_state(self.mamba_pool, self.evict_mamba, lock_node=node)
            if slot is None:
                raise UpstreamFailure("RuntimeError: Cannot alloc request mamba cache for host load back")
            req.mamba_pool_idx = slot
        # Making room (device evictions, write-back writes, host evictions) must not take the
        # host copies this load reads: pin them meanwhile (a guard of ours; see the docstring).
        guard = (bool(chain) or restore) and not self.config.has_legacy("B14")
        wanted = restore
        if guard:
            self._protect_host_node(node, protect_mamba=restore)
        try:
            device = self._load(node, host, restore, req)
            if device is None and n:
                self.evict(n)
                if not guard:  # legacy B14: upstream rebuilds the state transfer from what is left
                    restore = restore and node.mamba_host_value is not None
                device = self._load(node, host, restore, req)
        finally:
            if guard:
                self._release_host_node(node, release_mamba=restore)
        self._dec_lock_ref(anchor)
        if device is None:
            return None
        self.kv_pool.allocator.mark_owned(device)
        mru = self.config.has_legacy("B17")
        offset = 0
        for c in chain:
            if c.host_value is None:  # only with legacy B14: making room freed this host KV
                raise UpstreamFailure("TypeError: object of type 'NoneType' has no len()")
            k = len(c.host_value)
            c.value = device[offset : offset + k]
            offset += k
            if mru:
                self.full_lru_list.insert_mru(c)
            else:
                self.full_lru_list.insert_by_time(c)
            self.full_evictable_size_ += k
            self._refresh_leaf_status(c)
        if wanted and not restore:  # legacy B14: the state to restore was freed while room was made
            raise CacheAssertionError(f"Inserting mamba tombstone node in lru list: node.id={node.id}")
        if restore:
            if mru:
                self.mamba_lru_list.insert_mru(node)
            else:
                self.mamba_lru_list.insert_by_time(node)
            self.mamba_evictable_size_ += 1
        self._refresh_leaf_status(anchor)
        self._inc_lock_ref(node)
        self.ongoing_load_back[node.id] = node
        if self.events.active:
            self.events.emit(EventKind.LOAD_ISSUED, f"load back #{node.id}: {n} tokens over {len(chain)} node(s)" + (" + its state" if restore else ""), (node.id,))
        return device

    def _load(self, node: TreeNode, host: torch.Tensor, restore: bool, req: Request | None) -> torch.Tensor | None:
        states = []
        stale = restore and node.mamba_host_value is None  # legacy B14: freed before this load
        if stale:
            restore = False
        if restore:
            want_req = req is not None
            extra = req.mamba_pool_idx if want_req else None
            states.append(StateTransfer(node.mamba_host_value, None, extra, alloc_extra=want_req and extra is None))
        device = self.cache_controller.load(host, node.id, states)
        if device is not None and (stale or (restore and node.mamba_host_value is None)):
            # only reachable with legacy B14: making device room freed the host state being loaded
            raise UpstreamFailure("TypeError: object of type 'NoneType' has no len()")
        if device is not None and restore:
            node.mamba_value = states[0].device.view(1)
            self.mamba_pool.allocator.mark_owned(node.mamba_value)
            if req is not None:
                req.mamba_pool_idx = states[0].extra_device
        return device
