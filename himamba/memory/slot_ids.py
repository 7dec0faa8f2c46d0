"""Host copies of slot-id tensors: how the allocator checks slots on a GPU without waiting for it.

The allocator keeps every page's state on the host. To check slots it needs their ids there, and
reading a GPU tensor on the host makes the CPU wait for the device (a host synchronisation). So
each slot tensor the cache hands out on a GPU (an allocation, a node's value, a match's indices)
carries a host copy of its ids, recorded with the tensor's version counter:

* views share both (a view's ``_base`` holds the copy, and in-place writes through any view bump
  the one counter), so slices of a recorded tensor need no record of their own;
* :func:`cat`, :func:`clone`, :func:`own_copy` and :func:`assign` record what they make or
  change when their inputs are recorded;
* :func:`host_ids` answers from the copy while the tensor is unchanged, and otherwise reads the
  device once (:func:`read`, the one host read; the count of :mod:`himamba.memory.syncs` sees it)
  and records what it read.

A pool whose tensors live in host memory reads them directly (``Tensor.numpy()`` is the copy) and
records nothing; a test can make a CPU pool behave as a GPU one (copies and counted reads).
Contract: a copy is never changed in place (they are read-only arrays). Writes to a slot tensor
that bypass its version counter (``.data``, foreign kernels) are not seen, and inference tensors
(made under ``torch.inference_mode``) have no version counter: write to those only through
:func:`assign`. :func:`himamba.check_invariants` compares every node's copies with its tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_ATTR = "_himamba_ids"


def _version(t: torch.Tensor) -> int | None:
    """``t``'s version counter; ``None`` for an inference tensor, which has none."""
    return None if t.is_inference() else t._version


def record(t: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
    """Attach ``ids`` (the flattened values of ``t``) as ``t``'s host copy; returns ``t``."""
    ids.flags.writeable = False
    setattr(t, _ATTR, (_version(t), ids))
    return t


def mirrored(t: torch.Tensor) -> np.ndarray | None:
    """``t``'s ids (flattened, int64) from a host copy, or ``None`` when neither ``t`` nor the
    tensor it views has a current one. Reads nothing from the device."""
    rec = getattr(t, _ATTR, None)  # not t.__dict__: that would give every tensor a dict
    if rec is not None and rec[0] == _version(t):
        return rec[1]
    base = t._base
    if base is None:
        return None
    rec = getattr(base, _ATTR, None)
    if rec is None or rec[0] != _version(base) or base.dim() != 1 or base.stride(0) != 1:
        return None
    ids, off = rec[1], t.storage_offset() - base.storage_offset()
    if t.dim() == 0:
        return ids[off : off + 1]
    if t.dim() == 1:
        n, step = t.shape[0], t.stride(0)
        if n == 0:
            return ids[:0]
        return ids[off : off + step * (n - 1) + 1 : step] if step > 0 else None
    return ids[off : off + t.numel()] if t.is_contiguous() else None


def read(t: torch.Tensor) -> np.ndarray:
    """``t``'s ids read from its memory: one host read (on a GPU, a synchronisation)."""
    return np.array(t.reshape(-1).tolist(), dtype=np.int64)


def host_ids(t: torch.Tensor) -> np.ndarray:
    """``t``'s ids on the host, flattened: its copy when current, else one :func:`read`
    (recorded on ``t``, so the next call on the same tensor is free)."""
    ids = mirrored(t)
    if ids is None:
        ids = read(t)
        record(t, ids)
    return ids


def upload(ids: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` holding ``ids``, recorded with them. On a GPU the bytes go from a
    pinned buffer without waiting (the caching host allocator keeps that buffer until the copy
    has run)."""
    if device.type == "cuda":
        staged = torch.empty(len(ids), dtype=torch.int64, pin_memory=True)
        staged.numpy()[:] = ids
        out = staged.to(device, non_blocking=True)
    else:
        out = torch.from_numpy(ids.copy()).to(device)
    return record(out, ids.copy())


def cat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)``, recorded when every non-empty part has a current copy."""
    out = torch.cat(tuple(tensors))
    parts = []
    for t in tensors:
        ids = mirrored(t) if t.numel() else _EMPTY
        if ids is None:
            return out
        parts.append(ids)
    return record(out, np.concatenate(parts) if parts else _EMPTY)


def clone(t: torch.Tensor) -> torch.Tensor:
    """``t.clone()``, recorded when ``t`` has a current copy."""
    out = t.clone()
    ids = mirrored(t)
    return out if ids is None else record(out, ids)


def own_copy(t: torch.Tensor, ids: np.ndarray, start: int, *, host_memory: bool) -> torch.Tensor:
    """``t``'s slots from ``start`` on, flattened, in a tensor of their own (a clone), given
    ``ids``, ``t``'s host ids (what the allocator checked). ``host_memory``: the pool reads
    tensors' own memory (a CPU pool), so the copy is made from the ids (one torch call where a
    slice and a clone take two); otherwise it is a device clone, recorded with its ids."""
    if host_memory:
        return torch.from_numpy(ids[start:].copy())
    part = t.reshape(-1)[start:] if start or t.dim() != 1 else t
    return record(part.clone(), ids[start:].copy())


def assign(dst: torch.Tensor, start: int, stop: int, src: torch.Tensor) -> None:
    """``dst[start:stop] = src`` (``dst`` 1-D). When ``dst`` (or the tensor it views) had a
    current copy, the copy is updated with ``src``'s ids (read once if ``src`` has none);
    otherwise any copy left is dropped."""
    owner = dst if dst._base is None else dst._base
    before = mirrored(owner)
    simple = dst.dim() == 1 and dst.stride(0) == 1 and owner.dim() == 1 and owner.stride(0) == 1
    part = host_ids(src) if before is not None and simple else None
    dst[start:stop] = src
    for t in (dst, owner):
        if getattr(t, _ATTR, None) is not None:
            delattr(t, _ATTR)
    if part is not None:
        off = dst.storage_offset() - owner.storage_offset()
        after = before.copy()
        after[off : off + len(dst)][start:stop] = part
        record(owner, after)


_EMPTY = np.empty(0, dtype=np.int64)
_EMPTY.flags.writeable = False
