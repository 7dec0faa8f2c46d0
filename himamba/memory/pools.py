"""Real memory pools: KV rows of the full-attention layers and mamba state slots.

Both pools pair a tensor store with a :class:`SlotAllocator`. Tensors are layer-major:

* :class:`KVPool` — ``k_buffer`` and ``v_buffer`` of shape ``[full_layers, capacity, kv_heads,
  head_dim]`` (``k_buffer[layer]`` is one layer's K).
* :class:`MambaPool` — ``conv`` of shape ``[mamba_layers, slots, channels, kernel - 1]`` and
  ``ssm`` of shape ``[mamba_layers, slots, *ssm_shape]``; one slot spans all mamba layers.

The same classes serve the device tier and the host tier: pass ``pin_memory=True`` for a host
pool that CUDA copies should read from and write to asynchronously.
"""

from __future__ import annotations

import numpy as np
import torch

from himamba.memory.allocator import SlotAllocator, check_pool_capacity
from himamba.memory.model import ModelSpec


class _Pool:
    """Allocator front shared by both pools (``alloc``, ``free``, ``available_size``, ``capacity``)."""

    allocator: SlotAllocator

    @property
    def capacity(self) -> int:
        return self.allocator.capacity

    @property
    def page_size(self) -> int:
        return self.allocator.page_size

    def alloc(self, n: int) -> torch.Tensor | None:
        """``n`` slots (int64 tensor) or ``None`` when short. See :meth:`SlotAllocator.alloc`."""
        return self.allocator.alloc(n)

    def free(self, indices: torch.Tensor) -> None:
        """Return slots the caller holds; double and foreign frees, and slots a tree node owns,
        raise :class:`~himamba.errors.PoolError` and change nothing."""
        self.allocator.free(indices)

    def free_owned(self, indices: torch.Tensor | np.ndarray) -> None:
        """Return slots the caller knows are allocated and distinct (unchecked, cheap): a slot
        tensor, or its host ids (``allocator.host_ids``)."""
        self.allocator.free_owned(indices)

    def available_size(self) -> int:
        return self.allocator.available_size()

    def used_size(self) -> int:
        return self.allocator.used_size()


class KVPool(_Pool):
    """K and V rows of every full-attention layer, one row per token slot."""

    def __init__(
        self,
        spec: ModelSpec,
        capacity: int,
        page_size: int = 1,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        check_pool_capacity(capacity, page_size)
        shape = (spec.num_full_layers, capacity, spec.kv_heads, spec.head_dim)
        self.k_buffer = _zeros(shape, spec.kv_dtype, self.device, pin_memory)
        self.v_buffer = _zeros(shape, spec.kv_dtype, self.device, pin_memory)
        self.allocator = SlotAllocator(capacity, page_size, self.device)

    @property
    def nbytes(self) -> int:
        return self.k_buffer.nbytes + self.v_buffer.nbytes

    def __repr__(self) -> str:
        return f"KVPool({self.available_size()}/{self.capacity} free, {self.device}, {self.nbytes} bytes)"


class MambaPool(_Pool):
    """Conv and SSM state of every mamba layer, one slot per cached prefix end."""

    def __init__(
        self,
        spec: ModelSpec,
        capacity: int,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        check_pool_capacity(capacity, 1)
        self.conv = _zeros((spec.num_mamba_layers, capacity, *spec.conv_shape), spec.conv_dtype, self.device, pin_memory)
        self.ssm = _zeros((spec.num_mamba_layers, capacity, *spec.ssm_shape), spec.ssm_dtype, self.device, pin_memory)
        self.allocator = SlotAllocator(capacity, 1, self.device)

    @property
    def nbytes(self) -> int:
        return self.conv.nbytes + self.ssm.nbytes

    def copy_slot(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Copy the state in slot ``src`` into slot ``dst`` (same pool)."""
        self.conv[:, dst] = self.conv[:, src]
        self.ssm[:, dst] = self.ssm[:, src]

    def __repr__(self) -> str:
        return f"MambaPool({self.available_size()}/{self.capacity} free, {self.device}, {self.nbytes} bytes)"


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, pin: bool) -> torch.Tensor:
    if pin and device.type == "cpu" and torch.cuda.is_available():
        return torch.zeros(shape, dtype=dtype, pin_memory=True)
    return torch.zeros(shape, dtype=dtype, device=device)
