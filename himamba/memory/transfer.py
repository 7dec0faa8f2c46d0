"""TransferController: device <-> host copies of KV rows and mamba states, with acknowledgements.

The cache never copies bytes itself. It asks the controller to

* ``write(device_idx, node_id, state)`` — device -> host: allocates host KV slots (and a host
  state slot when the state transfer has none), issues the copy, queues a write ack;
* ``load(host_idx, node_id, states)`` — host -> device: allocates device KV slots (and device
  state slots), queues the copy; :meth:`start_loading` issues queued loads and queues their acks;
* ``evict_device(idx)`` / ``evict_host(idx)`` — free KV slots, returning how many.

**CUDA**: device pools live on the GPU and host pools in pinned memory. Copies run on a side
stream (one for writes, one for loads) that first waits on an event recorded on the compute
stream; each ack carries a finish event and keeps every tensor the copy touches alive until the
ack is processed. A device -> host copy gathers rows on the GPU, copies them into a pinned staging
buffer asynchronously, and scatters them into the host pool when the ack is processed.
**CPU**: the same steps run at once on the current thread; events are always complete.

**Manual acks** (``manual_acks=True``): acks stay in flight until :meth:`complete` releases them
(one by one, in any order), so in-flight states can be shown and stepped through. Blocking waits
(write-back) complete the acks they wait for.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from himamba.memory.pools import KVPool, MambaPool


@dataclass(slots=True)
class StateTransfer:
    """One mamba state to move with a KV transfer: ``host`` and ``device`` slots (1-element
    tensors). A missing side is allocated by the controller and filled in."""

    host: torch.Tensor | None = None
    device: torch.Tensor | None = None
    extra_device: torch.Tensor | None = None  # a second device destination (a request's slot)
    alloc_extra: bool = False  # load: allocate ``extra_device`` too when it is None


@dataclass(eq=False)
class Ack:
    """A transfer in flight: its direction, the nodes it serves, and how to tell it is done."""

    ack_id: int
    kind: str  # "write" (device -> host) or "load" (host -> device)
    node_ids: list[int]
    kv_tokens: int
    states: int
    finish_event: object | None = None
    manual_done: bool = False
    manual: bool = False
    finalize: Callable[[], None] | None = None
    keep_alive: list = field(default_factory=list)
    device_slots: tuple = ()  # (KV slots, state slots) a load writes to; for integrity checks

    def done(self) -> bool:
        """Has the copy finished (and, in manual mode, been completed by the caller)?"""
        if self.manual and not self.manual_done:
            return False
        return self.finish_event is None or self.finish_event.query()

    def wait(self) -> None:
        """Block until the copy has landed (completes a manual ack)."""
        self.manual_done = True
        if self.finish_event is not None:
            self.finish_event.synchronize()
        self._finish()

    def _finish(self) -> None:
        if self.finalize is not None:
            self.finalize()
            self.finalize = None
        self.keep_alive.clear()


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
    ) -> None:
        self.device_kv, self.device_states = device_kv, device_states
        self.host_kv, self.host_states = host_kv, host_states
        self.manual_acks = manual_acks
        self.evict_host_states = evict_host_states
        self.evict_device_states = evict_device_states
        self.ack_write_queue: deque[Ack] = deque()
        self.ack_load_queue: deque[Ack] = deque()
        self.pending_loads: list[tuple[Ack, Callable[[], None]]] = []
        self._ids = itertools.count()
        self.bytes_device_to_host = 0
        self.bytes_host_to_device = 0
        # slots copied per direction, so a caller can price them at another model's sizes
        self.kv_slots_device_to_host = self.kv_slots_host_to_device = 0
        self.states_device_to_host = self.states_host_to_device = 0
        self.writes_issued = 0
        self.loads_issued = 0
        self.cuda = device_kv.device.type == "cuda"
        if self.cuda:
            self.write_stream = torch.cuda.Stream(device=device_kv.device)
            self.load_stream = torch.cuda.Stream(device=device_kv.device)

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
        if state is not None and state.host is None:
            new_host_slot = self._alloc_state(self.host_states, self.evict_host_states)
            if new_host_slot is None:
                self.host_kv.free(host_idx)
                return None
            state.host = new_host_slot
        ack = Ack(next(self._ids), "write", [node_id], len(device_idx), int(state is not None), manual=self.manual_acks)
        self._copy(self.device_kv, device_idx, self.host_kv, host_idx, [state] if state else [], ack, to_host=True)
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
        taken: list[tuple[StateTransfer, str]] = []
        for st in states:
            for attr in ("device", "extra_device"):
                if getattr(st, attr) is not None or (attr == "extra_device" and not st.alloc_extra):
                    continue
                slot = self._alloc_state(self.device_states, self.evict_device_states)
                if slot is None:
                    for owner, name in taken:
                        self.device_states.free(getattr(owner, name))
                        setattr(owner, name, None)
                    self.device_kv.free(device_idx)
                    return None
                setattr(st, attr, slot)
                taken.append((st, attr))
        ack = Ack(next(self._ids), "load", [node_id], len(host_idx), len(states), manual=self.manual_acks)
        ack.device_slots = (device_idx, [s for st in states for s in (st.device, st.extra_device) if s is not None])

        def issue() -> None:
            self._copy(self.host_kv, host_idx, self.device_kv, device_idx, states, ack, to_host=False)

        self.pending_loads.append((ack, issue))
        return device_idx

    def start_loading(self) -> int:
        """Issue every queued load (SGLang: when the consuming batch launches). Returns how many."""
        started = 0
        while self.pending_loads:
            ack, issue = self.pending_loads.pop(0)
            issue()
            self.ack_load_queue.append(ack)
            self.loads_issued += 1
            started += 1
        return started

    def pending_device_slots(self) -> tuple[set[int], set[int]]:
        """Device KV slots and state slots that queued (not yet issued) loads will fill."""
        kv: set[int] = set()
        states: set[int] = set()
        for ack, _ in self.pending_loads:
            if ack.device_slots:
                kv.update(ack.device_slots[0].tolist())
                for s in ack.device_slots[1]:
                    states.update(s.tolist())
        return kv, states

    def unlanded_write_node_ids(self) -> set[int]:
        """Nodes whose device -> host bytes have not reached the host pool yet (CUDA only)."""
        return {nid for ack in self.ack_write_queue if ack.finalize is not None for nid in ack.node_ids}

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
        """Manual mode: mark one in-flight ack (default: the oldest write, else load) complete."""
        if ack is None:
            for queue in (self.ack_write_queue, self.ack_load_queue):
                for candidate in queue:
                    if not candidate.manual_done:
                        ack = candidate
                        break
                if ack is not None:
                    break
        if ack is not None:
            ack.manual_done = True
        return ack

    def in_flight(self) -> list[Ack]:
        """Every ack not yet processed by the cache, writes first."""
        return [*self.ack_write_queue, *self.ack_load_queue, *(a for a, _ in self.pending_loads)]

    # -- the copy itself ------------------------------------------------------------------------
    def _copy(self, src_kv: KVPool, src_idx: torch.Tensor, dst_kv: KVPool, dst_idx: torch.Tensor,
              states: list[StateTransfer], ack: Ack, *, to_host: bool) -> None:
        src_states = self.device_states if to_host else self.host_states
        dst_states = self.host_states if to_host else self.device_states
        pairs = [(src_kv.k_buffer, src_idx, dst_kv.k_buffer, dst_idx), (src_kv.v_buffer, src_idx, dst_kv.v_buffer, dst_idx)]
        for st in states:
            s_src = st.device if to_host else st.host
            dsts = [st.host] if to_host else [d for d in (st.device, st.extra_device) if d is not None]
            for d in dsts:
                pairs.append((src_states.conv, s_src, dst_states.conv, d))
                pairs.append((src_states.ssm, s_src, dst_states.ssm, d))
        nbytes = sum(_row_bytes(buf) * idx.numel() for buf, idx, _, _ in pairs)
        if to_host:
            self.bytes_device_to_host += nbytes
            self.kv_slots_device_to_host += src_idx.numel()
            self.states_device_to_host += len(states)
        else:
            self.bytes_host_to_device += nbytes
            self.kv_slots_host_to_device += src_idx.numel()
            self.states_host_to_device += len(states)
        if not self.cuda:
            ps = src_kv.page_size
            for src, s_idx, dst, d_idx in pairs:
                n = s_idx.numel()
                if n == 1:  # one big slot (a state): a plain slice copy is ~10x faster
                    dst[:, int(d_idx)].copy_(src[:, int(s_idx)])
                elif n and ps > 1 and n % ps == 0 and src.shape[1] % ps == 0 and dst.shape[1] % ps == 0:
                    # KV rows come in whole aligned pages: copy page blocks, not single rows
                    src_pages = src.view(src.shape[0], -1, ps, *src.shape[2:])
                    dst_pages = dst.view(dst.shape[0], -1, ps, *dst.shape[2:])
                    dst_pages.index_copy_(1, d_idx[::ps] // ps, src_pages.index_select(1, s_idx[::ps] // ps))
                elif n:
                    dst.index_copy_(1, d_idx, src.index_select(1, s_idx))
            return
        self._copy_cuda(pairs, ack, to_host)

    def _copy_cuda(self, pairs: list, ack: Ack, to_host: bool) -> None:
        compute = torch.cuda.current_stream()
        start = torch.cuda.Event()
        start.record(compute)
        stream = self.write_stream if to_host else self.load_stream
        finish = torch.cuda.Event()
        staged = []
        with torch.cuda.stream(stream):
            stream.wait_event(start)
            for src, s_idx, dst, d_idx in pairs:
                if not s_idx.numel():
                    continue
                if to_host:
                    gathered = src[:, s_idx.to(src.device, non_blocking=True)]
                    pinned = torch.empty(gathered.shape, dtype=gathered.dtype, pin_memory=True)
                    pinned.copy_(gathered, non_blocking=True)
                    staged.append((dst, d_idx, pinned))
                    ack.keep_alive += [gathered, s_idx]
                else:
                    pinned = src[:, s_idx.cpu()].pin_memory()
                    on_device = pinned.to(dst.device, non_blocking=True)
                    dst[:, d_idx] = on_device
                    ack.keep_alive += [pinned, on_device, d_idx]
            finish.record(stream)
        ack.finish_event = finish

        def scatter() -> None:
            for dst, d_idx, pinned in staged:
                dst[:, d_idx.cpu()] = pinned

        ack.finalize = scatter if to_host else None


def _row_bytes(buf: torch.Tensor) -> int:
    """Bytes of one slot across all layers of a layer-major ``[layers, slots, ...]`` buffer."""
    return buf.element_size() * buf.shape[0] * (buf[0, 0].numel() if buf.shape[1] else 0)
