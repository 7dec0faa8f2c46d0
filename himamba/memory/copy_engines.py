"""Copy engines: how the bytes of one transfer move between a device pool and a host pool.

The :class:`~himamba.memory.transfer.TransferController` decides *what* moves (a
:class:`CopyPlan`: rows of layer-major buffers); an engine decides *when* the bytes land and
returns a :class:`CopyHandle` that says whether they have.

* :class:`SyncCopyEngine` (``copy_engine="sync"``, the CPU default): copies at once; every handle
  has landed when ``issue`` returns.
* :class:`DeferredCopyEngine` (``copy_engine="deferred"``, CPU): CUDA's timing on the CPU. When a
  copy is queued or issued its destination rows are filled with :data:`POISON`; the source rows are read, and the bytes
  land, only when the copy is completed (a manual ack's ``complete``), checked (the next
  ``writing_check`` / ``loading_check`` asks ``ready``) or waited for. A read of a destination
  before then sees poison, and a source reused before then lands the wrong bytes: both show in
  ``check_integrity``. A load that the compute stream waits on (:meth:`CopyEngine.order_compute_after`,
  at ``start_loading``) lands at that moment, as CUDA orders every later kernel after it.
* :class:`~himamba.memory.cuda_engine.CudaCopyEngine` (``"cuda"``): side streams and events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

POISON = -7.0
"""The value a deferred copy's destination rows hold until it lands (content values are 0..250)."""


@dataclass(frozen=True, slots=True)
class RowCopy:
    """Rows ``src_idx`` (dimension 1) of the layer-major buffer ``src`` go to rows ``dst_idx`` of
    ``dst``. Both index tensors name the same number of rows."""

    src: torch.Tensor
    src_idx: torch.Tensor
    dst: torch.Tensor
    dst_idx: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes this copy moves (all layers)."""
        shape = self.src.shape  # (layers, rows, *row shape): metadata only, no tensor is made
        return self.src.itemsize * shape[0] * math.prod(shape[2:]) * self.src_idx.numel()


@dataclass(slots=True)
class CopyPlan:
    """Everything one transfer copies, in one direction. ``page_size`` lets engines copy KV in
    whole pages when rows come page-aligned."""

    to_host: bool
    rows: list[RowCopy] = field(default_factory=list)
    page_size: int = 1

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.rows)


class CopyHandle:
    """One issued copy. ``landed`` is what the CPU knows without waiting; :meth:`ready` may make
    progress (a deferred copy lands when checked); :meth:`release` lets a manual ack's copy
    finish; :meth:`wait` blocks until the bytes are in place, then finishes the copy."""

    landed = True
    failed = False  # a landed copy whose bytes never arrived (an injected load fault)

    def ready(self) -> bool:
        return True

    def release(self) -> None:
        """The caller completed the ack: the copy may land now."""

    def wait(self) -> None:
        """Block until every byte is in its destination."""


LANDED = CopyHandle()
"""The handle of a copy that landed when it was issued."""


class CopyEngine:
    """Moves the bytes of a :class:`CopyPlan`. Subclasses define the timing."""

    name = "sync"

    def prepare(self, plan: CopyPlan) -> None:
        """A load was queued (not issued yet): its destinations are reserved for it."""

    def issue(self, plan: CopyPlan) -> CopyHandle:
        """Start the copy (on CPU engines: do it, or arrange for it) and return its handle."""
        copy_rows(plan)
        return LANDED

    def order_compute_after(self, handle: CopyHandle) -> None:
        """Make every later compute-side read or write see this (load) copy's bytes, without a
        host synchronisation. The synchronous engine has nothing to do."""


class SyncCopyEngine(CopyEngine):
    """Copies on the calling thread at issue (CPU default)."""


class DeferredCopyEngine(CopyEngine):
    """CUDA's timing on the CPU: bytes land at completion, destinations hold :data:`POISON` until then.

    ``compute_waits=False`` reproduces a CUDA path whose compute stream never waits on loads: a
    load then stays unlanded until its ack, so a compute read in between sees poison.
    """

    name = "deferred"

    def __init__(self, compute_waits: bool = True) -> None:
        self.compute_waits = compute_waits

    def prepare(self, plan: CopyPlan) -> None:
        _poison(plan)

    def issue(self, plan: CopyPlan) -> CopyHandle:
        _poison(plan)
        return _DeferredHandle(plan)

    def order_compute_after(self, handle: CopyHandle) -> None:
        if self.compute_waits:
            handle.wait()


class _DeferredHandle(CopyHandle):
    __slots__ = ("plan", "landed")

    def __init__(self, plan: CopyPlan) -> None:
        self.plan = plan
        self.landed = False

    def ready(self) -> bool:
        self.wait()  # "at the next check": asking is what lets the copy finish
        return True

    def release(self) -> None:
        self.wait()

    def wait(self) -> None:
        if not self.landed:
            copy_rows(self.plan)  # sources are read now, as late as CUDA could read them
            self.landed = True


def _poison(plan: CopyPlan) -> None:
    for r in plan.rows:
        if r.dst_idx.numel():
            r.dst.index_fill_(1, r.dst_idx, POISON)


def copy_rows(plan: CopyPlan) -> None:
    """Copy every row of ``plan`` on the calling thread (CPU tensors)."""
    ps = plan.page_size
    for r in plan.rows:
        src, dst, s_idx, d_idx = r.src, r.dst, r.src_idx, r.dst_idx
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
