"""Load-back (reference §3.12): bring a host hit back to the device, in three named steps.

1. **plan** — the chain of nodes above ``node`` whose KV is off the device, the host slots to
   read, whether a host state is restored, and whether the load-back rule skips it;
2. **make room** — device slots for the chain (and a state slot), evicting once on shortage, with
   the host copies being read pinned meanwhile;
3. **adopt** — the chain is marked on device at once (listed and counted) and ``node`` stays
   locked until ``loading_check`` sees the ack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from himamba.cache.alloc import allocate_or_make_room
from himamba.cache.device_tier import DeviceTier
from himamba.cache.host_tier import HostTier
from himamba.cache.in_flight import InFlight
from himamba.cache.policies import LoadBackRule
from himamba.cache.results import Request
from himamba.cache.words import count
from himamba.core.node import TreeNode
from himamba.errors import AllocationFailure, CacheAssertionError, TransferFailure, UpstreamFailure
from himamba.memory.transfer import StateTransfer, TransferController
from himamba.observe.events import EventKind


@dataclass
class LoadPlan:
    """What one load-back reads: ``chain`` (root-most first) ends at ``node``; ``anchor`` is the
    deepest ancestor on device; ``host`` the chain's host slots (``n`` tokens)."""

    node: TreeNode
    anchor: TreeNode
    chain: list[TreeNode]
    host: torch.Tensor
    restore: bool

    @property
    def n(self) -> int:
        return len(self.host)


class LoadBack:
    """Load-backs of one tiered cache (``cache`` is the facade: its ``evict`` and ``evict_mamba``
    make device room).

    Variants fixed at construction: ``pin_sources`` (off with legacy B14), ``at_mru`` (legacy
    B17), ``request_slot_first`` (legacy B19)."""

    def __init__(self, cache, device: DeviceTier, host: HostTier, controller: TransferController,
                 in_flight: InFlight, rule: LoadBackRule, *, pin_sources: bool = True, at_mru: bool = False,
                 request_slot_first: bool = False) -> None:
        self.cache, self.device, self.host, self.controller = cache, device, host, controller
        self.in_flight, self.rule = in_flight, rule
        self.events = cache.events
        self.pin_sources = pin_sources
        self.at_mru = at_mru
        self.request_slot_first = request_slot_first

    def load_back(self, node: TreeNode, mem_quota: int | None, req: Request | None,
                  quiet: bool = True) -> torch.Tensor | None:
        """Plan, make room, adopt. Returns the loaded device slots, or ``None`` when skipped or
        when device memory cannot be found. A failed allocation leaves everything as it was
        (pins and locks released, slots given back) and is reported in a step; ``quiet`` then
        returns ``None``, else the error is raised."""
        plan = self.plan(node)
        delta = self.device.lock(plan.anchor)
        over_quota = mem_quota is not None and plan.n > mem_quota + delta
        if self.rule.skip(plan.n, plan.restore, over_quota):
            self.device.unlock(plan.anchor)
            if self.events.active:
                self.events.emit(EventKind.LOAD_ISSUED, f"load of #{node.id} skipped ({plan.n} host tokens; threshold {self.rule.threshold}, quota {mem_quota})", (node.id,), skipped=True)
            return None
        if plan.restore and req is not None and req.mamba_pool_idx is None and self.request_slot_first:
            # upstream takes the request's slot before the KV, and on failure raises with the
            # ancestor still locked
            slot = self.cache.alloc_state(self.device.mamba_pool, self.cache.evict_mamba, lock_node=node)
            if slot is None:
                raise UpstreamFailure("RuntimeError: Cannot alloc request mamba cache for host load back")
            req.mamba_pool_idx = slot
        wanted = plan.restore
        try:
            device = self.make_room(plan, req)
        except (TransferFailure, AllocationFailure) as exc:
            self.device.unlock(plan.anchor)
            if self.events.active:
                self.events.emit(EventKind.LOAD_ISSUED, f"load of #{node.id} failed: {exc} (nothing changed)", (node.id,),
                                 skipped=True, failed=type(exc).__name__)
            if quiet:
                return None
            raise
        self.device.unlock(plan.anchor)
        if device is None:
            return None
        self.adopt(plan, device, wanted)
        return device

    # -- 1. plan ---------------------------------------------------------------------------------------
    def plan(self, node: TreeNode) -> LoadPlan:
        """The chain to load for ``node`` (changes nothing)."""
        chain = []
        anchor = node
        while anchor.value is None:
            chain.append(anchor)
            anchor = anchor.parent
        chain.reverse()
        restore = node.mamba_host_value is not None and node.mamba_value is None
        host = torch.cat([c.host_value for c in chain]) if chain else self.cache.empty_indices.cpu()
        return LoadPlan(node, anchor, chain, host, restore)

    # -- 2. make room ----------------------------------------------------------------------------------
    def make_room(self, plan: LoadPlan, req: Request | None) -> torch.Tensor | None:
        """Issue the load, evicting ``plan.n`` device tokens once on shortage. Making room (device
        evictions, write-back writes, host evictions) must not take the host copies this load
        reads: they are pinned meanwhile (a guard of ours; legacy B14 drops it, and then the
        state to restore is rebuilt from what is left, as upstream)."""
        node = plan.node
        guard = (bool(plan.chain) or plan.restore) and self.pin_sources
        if guard:
            self.host.pin(node, mamba=plan.restore)

        def issue() -> torch.Tensor | None:
            return self.issue(node, plan.host, plan.restore, req)

        def evict(need: int) -> None:
            self.cache.evict(need)
            if not guard:
                plan.restore = plan.restore and node.mamba_host_value is not None

        try:
            device = allocate_or_make_room(issue, evict, plan.n) if plan.n else issue()
        finally:
            if guard:
                self.host.unpin(node, mamba=plan.restore)
        return device

    def issue(self, node: TreeNode, host: torch.Tensor, restore: bool, req: Request | None) -> torch.Tensor | None:
        """One try at the load: device slots for ``host`` (and a state slot when ``restore``; the
        request's own slot, allocated if needed, receives a copy). ``None`` when short."""
        states = []
        stale = restore and node.mamba_host_value is None  # legacy B14: freed before this load
        if stale:
            restore = False
        if restore:
            want_req = req is not None
            extra = req.mamba_pool_idx if want_req else None
            states.append(StateTransfer(node.mamba_host_value, None, extra, alloc_extra=want_req and extra is None))
        device = self.controller.load(host, node.id, states)
        if device is not None and (stale or (restore and node.mamba_host_value is None)):
            # only reachable with legacy B14: making device room freed the host state being loaded
            raise UpstreamFailure("TypeError: object of type 'NoneType' has no len()")
        if device is not None and restore:
            node.mamba_value = states[0].device.view(1)
            self.device.mamba_pool.allocator.mark_owned(node.mamba_value)
            if req is not None:
                req.mamba_pool_idx = states[0].extra_device
        return device

    # -- 3. adopt ----------------------------------------------------------------------------------------
    def adopt(self, plan: LoadPlan, device: torch.Tensor, wanted: bool) -> None:
        """The chain takes ``device`` (marked on device now, though the bytes land later); loaded
        nodes enter the device lists at the place their access times give (legacy B17: at the MRU
        end, which breaks list/time order when ``node`` is not the node the last match retimed
        most recently); ``node`` is locked until its ack."""
        node, tier = plan.node, self.device
        tier.kv_pool.allocator.mark_owned(device)
        by_time = not self.at_mru
        offset = 0
        for c in plan.chain:
            if c.host_value is None:  # only with legacy B14: making room freed this host KV
                raise UpstreamFailure("TypeError: object of type 'NoneType' has no len()")
            k = len(c.host_value)
            c.value = device[offset : offset + k]
            offset += k
            tier.gain_kv(c, by_time)
            self.cache.eviction.refresh(c)
        if wanted and not plan.restore:  # legacy B14: the state to restore was freed while room was made
            raise CacheAssertionError(f"Inserting mamba tombstone node in lru list: node.id={node.id}")
        if plan.restore:
            tier.gain_state(node, by_time)
        self.cache.eviction.refresh(plan.anchor)
        tier.lock(node)
        self.in_flight.load_back[node.id] = node
        if self.events.active:
            self.events.emit(EventKind.LOAD_ISSUED, f"load back #{node.id}: {count(plan.n, 'token')} over {count(len(plan.chain), 'node')}"
                             + (" + its state" if plan.restore else "") + f" ({self.rule.explain(plan.n, plan.restore)})", (node.id,))
