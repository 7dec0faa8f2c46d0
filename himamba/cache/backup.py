"""Backup: the device -> host write of one node (§3.9) and the processing of write and load acks
(§3.11).

A node counts as backed up as soon as its copy is *issued* (``host_value`` is set); the bytes land
later, and the ack is processed by ``writing_check``. A write-through write locks the node until
then; a write-back write (made while the node is being evicted) is waited for on the spot.
"""

from __future__ import annotations

from himamba.cache.alloc import allocate_or_make_room
from himamba.cache.device_tier import DeviceTier
from himamba.cache.host_tier import HostTier
from himamba.cache.in_flight import InFlight
from himamba.cache.words import count
from himamba.core.key import preview
from himamba.core.node import TreeNode
from himamba.errors import AllocationFailure, TransferFailure, UpstreamFailure
from himamba.memory.transfer import StateTransfer, TransferController
from himamba.observe.events import EventKind


class Backup:
    """Writes and acks of one tiered cache (``cache`` is the facade: its ``evict_host`` makes host
    room, its storage tier takes acknowledged writes).

    Variants fixed at construction: ``contiguous`` (off with legacy B4: a node is written even if
    its parent is not backed up), ``lock_while_making_room`` (off with legacy B18),
    ``drain_unlocks`` (off with legacy B15), ``strict_load_acks`` (legacy B20)."""

    def __init__(self, cache, device: DeviceTier, host: HostTier, controller: TransferController,
                 in_flight: InFlight, *, contiguous: bool = True, lock_while_making_room: bool = True,
                 drain_unlocks: bool = True, strict_load_acks: bool = False) -> None:
        self.cache, self.device, self.host, self.controller, self.in_flight = cache, device, host, controller, in_flight
        self.events = cache.events
        self.contiguous = contiguous
        self.lock_while_making_room = lock_while_making_room
        self.drain_unlocks = drain_unlocks
        self.strict_load_acks = strict_load_acks

    # -- device -> host -------------------------------------------------------------------------
    def write(self, node: TreeNode, write_back: bool = False, quiet: bool = True) -> int:
        """Issue the write of ``node``'s device KV (and device state) to host. Returns host tokens
        written (0: skipped for contiguity, or host memory short even after one ``evict_host``).

        A failed copy or allocation (:class:`TransferFailure`, :class:`AllocationFailure`) leaves
        the node as it was (the controller gives back what it took, any lock taken meanwhile is
        released) and is reported in a step; ``quiet`` then returns 0 (the node stays on device
        only), else the error is raised."""
        cache, events = self.cache, self.events
        parent = node.parent
        if not write_back and self.contiguous and parent is not cache.root_node and parent.host_value is None:
            if events.active:
                events.emit(EventKind.WRITE_ISSUED, f"#{node.id} not backed up: parent #{parent.id} is not backed up (contiguity)", (node.id,), skipped=True)
            return 0
        lru_h = self.host.mamba_host_lru_list
        if node.mamba_value is not None and node.mamba_host_value is not None and lru_h.in_list(node):
            lru_h.reset_node_mru(node)
        transfer: list[StateTransfer | None] = [None]

        def issue():
            state = StateTransfer(node.mamba_host_value, node.mamba_value) if node.mamba_value is not None else None
            transfer[0] = state
            return self.controller.write(node.value, node.id, state)

        # Host eviction may delete this node's host children; its cascade must not then delete the
        # node being written (a childless tombstone by then): lock it meanwhile (legacy B18 drops
        # the lock, as upstream).
        hold = node if self.lock_while_making_room else None
        try:
            host = allocate_or_make_room(issue, cache.evict_host, len(node.value), self.device, hold)
        except (TransferFailure, AllocationFailure) as exc:
            if events.active:
                events.emit(EventKind.WRITE_ISSUED, f"#{node.id} not backed up: {exc} (nothing changed)", (node.id,),
                            skipped=True, failed=type(exc).__name__)
            if quiet:
                return 0
            raise
        state = transfer[0]
        if host is None:
            if events.active:
                events.emit(EventKind.WRITE_ISSUED, f"#{node.id} not backed up: host memory is full", (node.id,), skipped=True)
            return 0
        node.host_value = host
        if state is not None and node.mamba_host_value is None:
            node.mamba_host_value = state.host
            if self.host.admits(node):
                lru_h.insert_mru(node)
        self.in_flight.write_through[node.id] = node
        if not write_back:
            self.device.lock(node)
            self.in_flight.locked_writes.add(node.id)
        if events.active:
            what = "KV and state" if state is not None else "KV only (no device state)"
            why = ("write-back: the leaf is being evicted" if write_back else
                   f"{self.cache.write_policy}: {node.hit_count} hit(s) reached the threshold {self.cache.write_through_threshold}")
            events.emit(EventKind.WRITE_ISSUED, f"#{node.id}{preview(node.key.token_ids)} backed up to host: {what}, {count(len(host), 'token')} ({why})", (node.id,))
        return len(host)

    def writing_check(self, write_back: bool = False) -> int:
        """Process finished write acks (all of them, waiting, with ``write_back``). Returns acks
        processed."""
        queue = self.controller.ack_write_queue
        done = 0
        if write_back:
            while queue:
                self.finish_write(queue.popleft(), unlock=self.drain_unlocks)
                done += 1
            return done
        if not self.in_flight.write_through:
            return 0
        while queue and queue[0].done():
            self.finish_write(queue.popleft())
            done += 1
        return done

    def report_landing_failures(self) -> None:
        """Steps for copies that failed while landing and were copied again (injected faults)."""
        faults = getattr(self.controller, "faults", None)
        if faults is None or not faults.landing_failures:
            return
        texts, faults.landing_failures[:] = list(faults.landing_failures), []
        if self.events.active:
            for text in texts:
                self.events.emit(EventKind.WRITE_ACKED, text, (), failed="TransferFailure")

    def finish_write(self, ack, unlock: bool = True) -> None:
        """Complete one write ack: its nodes leave the write map; those whose write locked them are
        unlocked (unless ``unlock`` is false: legacy B15 leaks the lock); each is then offered
        to the storage tier."""
        ack.wait()
        self.report_landing_failures()
        in_flight = self.in_flight
        for node_id in ack.node_ids:
            node = in_flight.write_through.pop(node_id, None)
            if node is None:
                continue
            locked = node_id in in_flight.locked_writes
            in_flight.locked_writes.discard(node_id)
            unlock = unlock and locked
            if unlock:
                self.device.unlock(node)
            if self.events.active:
                self.events.emit(EventKind.WRITE_ACKED, f"write of #{node.id} acknowledged" + (" (unlocked)" if unlock else ""), (node.id,))
            if self.cache.storage is not None:
                self.cache.write_backup_storage(node)

    # -- host -> device acks ---------------------------------------------------------------------------
    def loading_check(self) -> int:
        """Process finished load acks in order, stopping at the first unfinished one: each
        releases its load-back lock. Returns acks processed."""
        queue = self.controller.ack_load_queue
        loads = self.in_flight.load_back
        done = 0
        while queue and queue[0].done():
            ack = queue.popleft()
            ack.wait()
            self.report_landing_failures()
            done += 1
            for node_id in ack.node_ids:
                if node_id not in loads and self.strict_load_acks:
                    raise UpstreamFailure(f"KeyError: {node_id}")
                node = loads.pop(node_id, None)
                if node is not None:
                    self.device.unlock(node)
                    if self.events.active:
                        self.events.emit(EventKind.LOAD_ACKED, f"load of #{node.id} acknowledged (unlocked)", (node.id,))
        return done
