"""CudaCopyEngine: device <-> host copies on side streams, ordered by events, never by the CPU.

Ordering, read against CUDA's stream semantics:

* a copy first makes its side stream wait on the compute stream of the pool's device
  (``wait_stream``), so it reads what earlier kernels wrote;
* after a load is issued the compute stream waits on its finish event
  (:meth:`CudaCopyEngine.order_compute_after`, called at ``start_loading``): every later kernel,
  copy-on-write ``copy_slot`` included, sees the loaded bytes; no host synchronisation;
* index tensors made on the compute stream and read on a side stream are marked with
  ``record_stream``, so the caching allocator does not hand their memory out again before the
  side stream is done with them;
* device -> host rows are gathered on the GPU into a pinned staging buffer and scattered into
  the host pool when the ack is processed (until then the host rows have not landed); host ->
  device rows are gathered on the CPU into a pinned staging buffer and copied asynchronously.
  Staging buffers are reused across transfers (:class:`StagingBuffers`) and go back to the free
  list only once the copy that used them has finished.
"""

from __future__ import annotations

import torch

from himamba.memory.copy_engines import CopyEngine, CopyHandle, CopyPlan


class StagingBuffers:
    """Pinned host byte buffers reused across transfers. :meth:`take` gives a buffer of at least
    ``nbytes`` viewed as ``shape``/``dtype``; :meth:`give_back` returns it once its copy finished."""

    def __init__(self) -> None:
        self.free: list[torch.Tensor] = []
        self.allocated = 0  # pinned buffers created (a figure for the GPU check)

    def take(self, shape: torch.Size, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(the raw byte buffer, a view of it with ``shape`` and ``dtype``)."""
        nbytes = max(1, dtype.itemsize * shape.numel())
        for i, buf in enumerate(self.free):
            if buf.numel() >= nbytes:
                raw = self.free.pop(i)
                break
        else:
            size = 1 << max(20, (nbytes - 1).bit_length())  # at least 1 MiB, a power of two
            raw = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self.allocated += 1
        return raw, raw[: dtype.itemsize * shape.numel()].view(dtype).view(shape)

    def give_back(self, raws: list[torch.Tensor]) -> None:
        self.free.extend(raws)
        self.free.sort(key=torch.Tensor.numel)


class _CudaHandle(CopyHandle):
    """An issued CUDA copy: its finish event, the staging buffers it holds, and (device -> host)
    the host scatters to run when it is processed."""

    def __init__(self, event: torch.cuda.Event, staging: StagingBuffers, raws: list[torch.Tensor],
                 scatters: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.event = event
        self.staging = staging
        self.raws = raws
        self.scatters = scatters
        self.finished = False

    @property
    def landed(self) -> bool:
        """A load has landed once its event completed; a write once its rows were scattered
        into the host pool (when its ack is processed)."""
        return self.finished or (not self.scatters and self.event.query())

    def ready(self) -> bool:
        if self.finished:
            return True
        if not self.event.query():
            return False
        self._finish()
        return True

    def wait(self) -> None:
        if not self.finished:
            self.event.synchronize()
            self._finish()

    def _finish(self) -> None:
        for dst, d_idx, staged in self.scatters:
            dst.index_copy_(1, d_idx, staged)
        self.scatters = []
        self.staging.give_back(self.raws)
        self.raws = []
        self.finished = True


class CudaCopyEngine(CopyEngine):
    """Copies for pools on ``device`` (a CUDA device): one side stream for writes, one for loads."""

    name = "cuda"

    def __init__(self, device: torch.device | str) -> None:
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.write_stream = torch.cuda.Stream(device=device)
        self.load_stream = torch.cuda.Stream(device=device)
        self.staging = StagingBuffers()

    def issue(self, plan: CopyPlan) -> CopyHandle:
        compute = torch.cuda.current_stream(self.device)
        stream = self.write_stream if plan.to_host else self.load_stream
        raws: list[torch.Tensor] = []
        scatters: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        with torch.cuda.stream(stream):
            stream.wait_stream(compute)
            for r in plan.rows:
                if not r.src_idx.numel():
                    continue
                if plan.to_host:
                    s_idx = r.src_idx
                    s_idx.record_stream(stream)
                    gathered = r.src.index_select(1, s_idx)  # allocated on the side stream
                    raw, staged = self.staging.take(gathered.shape, gathered.dtype)
                    staged.copy_(gathered, non_blocking=True)
                    raws.append(raw)
                    scatters.append((r.dst, r.dst_idx, staged))
                else:
                    shape = (r.src.shape[0], r.src_idx.numel(), *r.src.shape[2:])
                    raw, staged = self.staging.take(torch.Size(shape), r.src.dtype)
                    torch.index_select(r.src, 1, r.src_idx, out=staged)  # host rows, gathered on the CPU
                    raws.append(raw)
                    on_device = staged.to(self.device, non_blocking=True)
                    d_idx = r.dst_idx
                    d_idx.record_stream(stream)
                    r.dst.index_copy_(1, d_idx, on_device)
            event = torch.cuda.Event()
            event.record(stream)
        return _CudaHandle(event, self.staging, raws, scatters)

    def order_compute_after(self, handle: CopyHandle) -> None:
        if isinstance(handle, _CudaHandle):
            torch.cuda.current_stream(self.device).wait_event(handle.event)
