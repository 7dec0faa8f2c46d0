"""Floor 2: every byte the cache owns — model shapes, pools, allocators, deterministic content."""

from himamba.memory.allocator import SlotAllocator
from himamba.memory.bandwidth import measure_bandwidth
from himamba.memory.content import kv_content, prefix_fingerprint, state_content
from himamba.memory.device import resolve_device
from himamba.memory.model import ModelSpec
from himamba.memory.pools import KVPool, MambaPool

__all__ = [
    "KVPool",
    "MambaPool",
    "ModelSpec",
    "SlotAllocator",
    "kv_content",
    "measure_bandwidth",
    "prefix_fingerprint",
    "resolve_device",
    "state_content",
]
