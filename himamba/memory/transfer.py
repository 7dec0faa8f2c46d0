"""TransferController: device <-> host copies of KV rows and mamba states, with acknowledgements.

The cache never copies bytes itself. It asks the controller to

* ``write(device_idx, node_id, state)`` — device -> host: allocates host KV slots (and a host
  state slot when the state transfer has none), issues the copy, queues a write :class:`Ack`;
* ``load(host_idx, node_id, states)`` — host -> device: allocates device KV slots (and device
  state slots), queues the copy; :meth:`start_loading` issues queued loads, makes the compute
  stream wait on them and queues their acks;
* ``evict_device(idx)`` / ``evict_host(idx)`` — free KV slots, returning how many.

The bytes move through a copy engine (:mod:`himamba.memory.copy_engines`): ``"sync"`` (CPU, at
once), ``"deferred"`` (CPU with CUDA's timing: bytes land at completion, destinations poisoned
until then) or ``"cuda"`` (side streams and events, :mod:`himamba.memory.cuda_engine`).
:meth:`unlanded_slots` names every destination slot whose bytes are not there yet, so checks
can skip exactly those. Until a transfer has landed, its allocators hold every slot it names
(:meth:`~himamba.memory.allocator.SlotAllocator.hold`): freed meanwhile, such a slot is parked,
not handed out again, and joins the free list when the ack is waited for or seen done.

**Manual acks** (``manual_acks=True``): acks stay in flight until :meth:`complete` releases them
(one by one, in any order), so in-flight states can be shown and stepped through. Blocking waits
(write-back) complete the acks they wait for.

Size: over 300 lines because the controller's writes, loads, their slot plans and their acks share
its queues; the copy engines themselves live in :mod:`himamba.memory.copy_engines`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from himamba.errors import InvalidInputError
from himamba.memory.copy_engines import CopyEngine, CopyHandle, CopyPlan, RowCopy, SyncCopyEngine
from himamba.memory.pools import KVPool, MambaPool


@dataclass(slots=True)
class StateTransfer:
    """One mamba state to move with a KV transfer: ``host`` and ``device`` slots (1-element
    tensors). A missing side is allocated by the controller and filled in."""

    host: torch.Tensor | None = None
    device: torch.Tensor | None = None
    extra_device: torch.Tensor | None = None  # a second device destination (a request's slot)
    alloc_extra: bool = False  # load: allocate ``extra_device`` too when it is None


@dataclass(frozen=True, slots=True)
class TransferSlots:
    """The slots one side of a transfer names: KV rows and state slots, all in one tier."""

    kv: torch.Tensor
    states: tuple[torch.Tensor, ...] = ()


@dataclass(eq=False)
class Ack:
    """A transfer in flight: its direction, the nodes it serves, where its bytes come from and go,
    and the engine's handle that says whether they have landed (``None`` while a load is queued)."""

    ack_id: int
    kind: str  # "write" (device -> host) or "load" (host -> device)
    node_ids: list[int]
    kv_tokens: int
    states: int
    src: TransferSlots
    dst: TransferSlots
    manual: bool = False
    manual_done: bool = False
    handle: CopyHandle | None = None
    # (allocator, pages) pairs this transfer keeps from reuse until it has landed
    holds: list = field(default_factory=list)

    def done(self) -> bool:
        """Has the copy finished (and, in manual mode, been completed by the caller)?"""
        if self.manual and not self.manual_done:
            return False
        if self.handle is None or not self.handle.ready():
            return self.handle is None
        self.release_holds_if_landed()
        return True

    def wait(self) -> None:
        """Block until the copy has landed (completes a manual ack); its slots may then be reused."""
        self.manual_done = True
        if self.handle is not None:
            self.handle.wait()
        self.release_holds()

    def release_holds_if_landed(self) -> None:
        """Release the holds once the CPU knows the bytes are in place."""
        if self.handle is not None and self.handle.landed:
            self.release_holds()

    def release_holds(self) -> None:
        """Let the allocators hand this transfer's slots out again (once; the copy has landed
        or will never be issued)."""
        for allocator, pages in self.holds:
            allocator.release(pages)
        self.holds.clear()

    @property
    def landed(self) -> bool:
        """Are the bytes in their destination (as far as the CPU knows without waiting)?"""
        return self.handle is not None and self.handle.landed

    @property
    def failed(self) -> bool:
        """Did the copy fail while landing (its destinations hold no valid bytes)?"""
        return self.handle is not None and self.handle.failed


@dataclass(slots=True)
class UnlandedSlots:
    """Slots whose bytes a transfer has not delivered yet, per pool (sets of slot ids)."""

    device_kv: set[int] = field(default_factory=set)
    device_states: set[int] = field(default_factory=set)
    host_kv: set[int] = field(default_factory=set)
    host_states: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _PendingLoad:
    ack: Ack
    plan: CopyPlan


class TransferController:
    """Owns the copies between the four pools and the two ack queues."""

    def __init__(
        self,
        device_kv: KVPool,
        device_states: MambaPool,
        host_kv: KVPool,
        host_states: MambaPool,
        *,
        manual_acks: bool = False,
        evict_host_states: Callable[[int], int] | None = None,
        evict_device_states: Callable[[int], int] | None = None,
        engine: CopyEngine | None = None,
    ) -> None:
        self.device_kv, self.device_states = device_kv, device_states
        self.host_kv, self.host_states = host_kv, host_states
        self.manual_acks = manual_acks
        self.evict_host_states = evict_host_states
        self.evict_device_states = evict_device_states
        self.ack_write_queue: deque[Ack] = deque()
        self.ack_load_queue: deque[Ack] = deque()
        self.pending_loads: list[_PendingLoad] = []
        self._ids = itertools.count()
        self.bytes_device_to_host = 0
        self.bytes_host_to_device = 0
        # slots copied per direction, so a caller can price them at another model's sizes
        self.kv_slots_device_to_host = self.kv_slots_host_to_device = 0
        self.states_device_to_host = self.states_host_to_device = 0
        self.writes_issued = 0
        self.loads_issued = 0
        self.cuda = device_kv.device.type == "cuda"
        self.engine = engine if engine is not None else default_engine(device_kv.device)

    # -- allocation with one evict-and-retry --------------------------------------------------
    @staticmethod
    def _alloc_state(pool: MambaPool, evict: Callable[[int], int] | None) -> torch.Tensor | None:
        slot = pool.alloc(1)
        if slot is None and evict is not None:
            evict(1)
            slot = pool.alloc(1)
        return slot

    # -- device -> host --------------------------------------------------------------------------
    def write(self, device_idx: torch.Tensor, node_id: int, state: StateTransfer | None = None) -> torch.Tensor | None:
        """Back up KV rows ``device_idx`` (and ``state``'s device slot) to host.

        Returns the host KV slots, or ``None`` (nothing allocated, nothing copied) when host
        memory is short. ``state.host`` is filled in when a host state slot had to be allocated.
        The copy is issued now; its ack is appended to ``ack_write_queue``.
        """
        host_idx = self.host_kv.alloc(len(device_idx))
        if host_idx is None:
            return None
        new_host_slot = None
        try:
            if state is not None and state.host is None:
                new_host_slot = self._alloc_state(self.host_states, self.evict_host_states)
                if new_host_slot is None:
                    self.host_kv.free(host_idx)
                    return None
                state.host = new_host_slot
            return self._issue_write(device_idx, host_idx, node_id, state)
        except BaseException:  # a failed allocation or copy: give back what this write took
            self.host_kv.free(host_idx)
            if new_host_slot is not None:
                self.host_states.free(new_host_slot)
                state.host = None
            raise

    def _issue_write(self, device_idx: torch.Tensor, host_idx: torch.Tensor, node_id: int,
                     state: StateTransfer | None) -> torch.Tensor:
        plan = self._plan(self.device_kv, device_idx, self.host_kv, host_idx, to_host=True)
        if state is not None:
            self._plan_state(plan, self.device_states, state.device, self.host_states, state.host)
        src = TransferSlots(device_idx, (state.device,) if state is not None else ())
        dst = TransferSlots(host_idx, (state.host,) if state is not None else ())
        ack = Ack(next(self._ids), "write", [node_id], len(device_idx), int(state is not None), src, dst,
                  manual=self.manual_acks)
        ack.handle = self.engine.issue(plan)  # may raise: the caller gives the slots back
        self.bytes_device_to_host += plan.nbytes
        self.kv_slots_device_to_host += device_idx.numel()
        self.states_device_to_host += int(state is not None)
        if not ack.handle.landed:  # bytes still to move: keep both sides' slots until they have
            self._hold(ack, (self.device_kv, self.device_states), (self.host_kv, self.host_states))
        self.ack_write_queue.append(ack)
        self.writes_issued += 1
        return host_idx

    # -- host -> device --------------------------------------------------------------------------
    def load(self, host_idx: torch.Tensor, node_id: int, states: list[StateTransfer] = ()) -> torch.Tensor | None:
        """Queue a load of host KV ``host_idx`` (and ``states``) into newly allocated device slots.

        Returns the device KV slots, or ``None`` (everything rolled back) when device memory is
        short. State transfers get their missing device slots (and ``extra_device`` when
        ``alloc_extra``) allocated here, evicting device states once if needed. The copy starts
        at :meth:`start_loading`.
        """
        states = list(states)
        device_idx = self.device_kv.alloc(len(host_idx))
        if device_idx is None:
            return None
        try:
            ok = self._alloc_load_states(states)
        except BaseException:  # a failed allocation: give back the KV slots
            self.device_kv.free(device_idx)
            raise
        if not ok:
            self.device_kv.free(device_idx)
            return None
        plan = self._plan(self.host_kv, host_idx, self.device_kv, device_idx, to_host=False)
        for st in states:
            for d in (st.device, st.extra_device):
                if d is not None:
                    self._plan_state(plan, self.host_states, st.host, self.device_states, d)
        dst = TransferSlots(device_idx, tuple(d for st in states for d in (st.device, st.extra_device) if d is not None))
        src = TransferSlots(host_idx, tuple(st.host for st in states))
        ack = Ack(next(self._ids), "load", [node_id], len(host_idx), len(states), src, dst, manual=self.manual_acks)
        self._hold(ack, (self.host_kv, self.host_states), (self.device_kv, self.device_states))
        self.engine.prepare(plan)
        self.pending_loads.append(_PendingLoad(ack, plan))
        return device_idx

    def _alloc_load_states(self, states: list[StateTransfer]) -> bool:
        """Give every state transfer its missing device slot (and extra slot when asked); on
        shortage free what was taken here, reset those fields and return False."""
        taken: list[tuple[StateTransfer, bool]] = []  # (transfer, True: extra slot / False: main slot)
        for st in states:
            for extra in (False, True):
                present = st.extra_device if extra else st.device
                if present is not None or (extra and not st.alloc_extra):
                    continue
                try:
                    slot = self._alloc_state(self.device_states, self.evict_device_states)
                except BaseException:
                    self._give_back_states(taken)
                    raise
                if slot is None:
                    self._give_back_states(taken)
                    return False
                if extra:
                    st.extra_device = slot
                else:
                    st.device = slot
                taken.append((st, extra))
        return True

    def _give_back_states(self, taken: list[tuple[StateTransfer, bool]]) -> None:
        for owner, was_extra in taken:
            self.device_states.free(owner.extra_device if was_extra else owner.device)
            if was_extra:
                owner.extra_device = None
            else:
                owner.device = None

    def start_loading(self) -> int:
        """Issue every queued load (SGLang: when the consuming batch launches) and order the
        compute stream after each, so later compute sees the loaded bytes. Returns how many."""
        started = 0
        while self.pending_loads:
            pending = self.pending_loads.pop(0)
            self.bytes_host_to_device += pending.plan.nbytes
            self.kv_slots_host_to_device += pending.ack.kv_tokens
            self.states_host_to_device += pending.ack.states
            pending.ack.handle = self.engine.issue(pending.plan)
            pending.ack.release_holds_if_landed()
            self.engine.order_compute_after(pending.ack.handle)
            self.ack_load_queue.append(pending.ack)
            self.loads_issued += 1
            started += 1
        return started

    def unlanded_slots(self) -> UnlandedSlots:
        """Destination slots of queued loads and of issued copies whose bytes have not landed.

        Exact on every engine: a slot is named while a transfer still owes it bytes, whichever
        node (after a split, say) now holds it."""
        out = UnlandedSlots()
        for ack in self.in_flight():
            if ack.landed:
                continue
            kv, states = (out.host_kv, out.host_states) if ack.kind == "write" else (out.device_kv, out.device_states)
            kv.update(ack.dst.kv.tolist())
            for s in ack.dst.states:
                states.update(s.reshape(-1).tolist())
        return out

    def freed_in_flight(self) -> list[tuple[Ack, str]]:
        """(ack, sentence) for every unlanded transfer that names a slot no longer allocated: a
        source or destination freed, and so reusable, before the bytes landed; [] when none.
        (Locks and pins are what keep them allocated; this is the check that they did.)"""
        device, host = (self.device_kv, self.device_states), (self.host_kv, self.host_states)
        out: list[tuple[Ack, str]] = []
        for ack in self.in_flight():
            if ack.landed:
                continue
            sides = (("source", ack.src, device), ("destination", ack.dst, host)) if ack.kind == "write" else \
                (("source", ack.src, host), ("destination", ack.dst, device))
            for role, slots, (kv_pool, state_pool) in sides:
                if slots.kv.numel() and not bool(kv_pool.allocator.is_allocated(slots.kv).all()):
                    out.append((ack, f"{ack.kind} ack {ack.ack_id}: a {role} KV slot was freed before the copy landed"))
                if any(not state_pool.allocator.all_allocated(s) for s in slots.states):
                    out.append((ack, f"{ack.kind} ack {ack.ack_id}: a {role} state slot was freed before the copy landed"))
        return out

    # -- freeing ---------------------------------------------------------------------------------
    def evict_device(self, device_idx: torch.Tensor) -> int:
        """Free device KV slots; returns how many."""
        self.device_kv.free_owned(device_idx)
        return len(device_idx)

    def evict_host(self, host_idx: torch.Tensor) -> int:
        """Free host KV slots; returns how many."""
        self.host_kv.free_owned(host_idx)
        return len(host_idx)

    # -- acks ------------------------------------------------------------------------------------
    def complete(self, ack: Ack | None = None) -> Ack | None:
        """Manual mode: mark one in-flight ack (default: the oldest write, else load) complete.
        Its copy may land from now on (the deferred engine lands it here). ``ack`` must be one
        of this controller's :meth:`in_flight` acks: anything else (not an :class:`Ack`, another
        controller's, one already processed) raises :class:`InvalidInputError`, nothing changed."""
        if ack is None:
            ack = next((a for q in (self.ack_write_queue, self.ack_load_queue) for a in q if not a.manual_done), None)
        elif not isinstance(ack, Ack):
            raise InvalidInputError(f"complete() takes an Ack from in_flight() (or nothing), got {type(ack).__name__}")
        elif not any(a is ack for a in self.in_flight()):
            raise InvalidInputError(f"{ack.kind} ack {ack.ack_id} is not in flight on this controller: it belongs to "
                                    "another cache or has been processed already")
        if ack is not None:
            ack.manual_done = True
            if ack.handle is not None:
                ack.handle.release()
                ack.release_holds_if_landed()
        return ack

    def drop_pending_loads(self) -> None:
        """Forget the queued loads unissued (a reset): their slots are no longer held."""
        for pending in self.pending_loads:
            pending.ack.release_holds()
        self.pending_loads.clear()

    def in_flight(self) -> list[Ack]:
        """Every ack not yet processed by the cache, writes first."""
        return [*self.ack_write_queue, *self.ack_load_queue, *(p.ack for p in self.pending_loads)]

    @staticmethod
    def _hold(ack: Ack, src_pools: tuple[KVPool, MambaPool], dst_pools: tuple[KVPool, MambaPool]) -> None:
        """Keep every slot ``ack`` names (both sides) from being handed out before it lands."""
        for slots, (kv_pool, state_pool) in ((ack.src, src_pools), (ack.dst, dst_pools)):
            if slots.kv.numel():
                ack.holds.append((kv_pool.allocator, kv_pool.allocator.hold(slots.kv)))
            ack.holds += [(state_pool.allocator, state_pool.allocator.hold(s)) for s in slots.states]

    # -- plans ------------------------------------------------------------------------------------
    @staticmethod
    def _plan(src: KVPool, src_idx: torch.Tensor, dst: KVPool, dst_idx: torch.Tensor, *, to_host: bool) -> CopyPlan:
        return CopyPlan(to_host, [RowCopy(src.k_buffer, src_idx, dst.k_buffer, dst_idx),
                                  RowCopy(src.v_buffer, src_idx, dst.v_buffer, dst_idx)], src.page_size)

    @staticmethod
    def _plan_state(plan: CopyPlan, src: MambaPool, src_slot: torch.Tensor, dst: MambaPool, dst_slot: torch.Tensor) -> None:
        s, d = src_slot.reshape(-1), dst_slot.reshape(-1)
        plan.rows += [RowCopy(src.conv, s, dst.conv, d), RowCopy(src.ssm, s, dst.ssm, d)]


def default_engine(device: torch.device) -> CopyEngine:
    """The engine for pools on ``device``: CUDA streams on a GPU, synchronous copies on the CPU."""
    if device.type == "cuda":
        from himamba.memory.cuda_engine import CudaCopyEngine

        return CudaCopyEngine(device)
    return SyncCopyEngine()


def make_engine(name: str, device: torch.device) -> CopyEngine:
    """The copy engine called ``name`` ("auto", "sync", "deferred", "cuda") for pools on ``device``.
    Raises :class:`~himamba.errors.InvalidInputError` for a name that does not fit the device."""
    from himamba.memory.copy_engines import DeferredCopyEngine

    if name == "auto":
        return default_engine(device)
    if device.type == "cuda":
        if name != "cuda":
            raise InvalidInputError(f"copy_engine={name!r} runs on the CPU only; device {str(device)!r} uses 'cuda' (or 'auto')")
        return default_engine(device)
    if name == "sync":
        return SyncCopyEngine()
    if name == "deferred":
        return DeferredCopyEngine()
    raise InvalidInputError(f"copy_engine={name!r} needs a CUDA device; on {str(device)!r} use 'sync' or 'deferred'")
