"""Turning a device name ("auto", "cpu", "cuda", "cuda:1") into a checked ``torch.device``."""

from __future__ import annotations

import torch

from himamba.errors import InvalidInputError
from himamba.validate import physical_memory_bytes


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` gives ``cuda`` when a GPU is visible, else ``cpu``. Asking for CUDA on a
    machine without one, or for an unknown device type, raises :class:`InvalidInputError`."""
    if isinstance(name, torch.device):
        dev = name
    elif name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError) as exc:
            raise InvalidInputError(f"unknown device {name!r}: {exc}") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise InvalidInputError(f"device {str(dev)!r}: there is one CPU device (use 'cpu')")
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"device {str(dev)!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"device {str(dev)!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return dev
    raise InvalidInputError(f"device type {dev.type!r} is not supported (use 'auto', 'cpu' or 'cuda')")


def memory_bytes(device: torch.device) -> int | None:
    """The memory a pool on ``device`` can take: the GPU's total memory, or this machine's RAM
    for the CPU (``None`` when unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return physical_memory_bytes()


def check_on_device(indices: torch.Tensor, device: torch.device, what: str) -> None:
    """Raise :class:`InvalidInputError` unless the index tensor ``indices`` lives on ``device``
    (the device of the pool it indexes). Reads only the tensor's metadata: no host sync."""
    if indices.is_cpu and device.type == "cpu":  # the common case, without building a device object
        return
    have = indices.device
    if have.type != device.type or (device.index is not None and have.index != device.index):
        raise InvalidInputError(
            f"{what} is on {str(have)!r} but indexes a pool on {str(device)!r}; pass index tensors on the pool's device "
            f"(e.g. .to({str(device)!r}))"
        )
