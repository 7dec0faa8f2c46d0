"""Stand-ins that let SGLang 0.5.11's cache modules import and run on a CPU-only machine.

Every object here is a **stand-in**, written for this project; none is SGLang code. Each
replaces something SGLang needs only for CUDA or for code paths the tree methods never use:

* :func:`install_import_standins` puts empty stand-in modules for ``torchvision`` (and its
  ``io``/``ops``/``transforms`` submodules) and ``sgl_kernel`` into ``sys.modules`` (imported at
  module level by a few sglang modules, never called on the cache paths), and makes the
  image-processor registration of ``sglang.srt.configs.utils`` a no-op (it fails without
  torchvision).
* :class:`StandInHostKV` / :class:`StandInHostMamba`: host pools whose allocators are
  upstream's own (``alloc``/``free``/``clear``/``available_size`` of ``HostKVCache`` and
  ``MambaPoolHost``, inherited unchanged) but that own no buffers.
* :func:`make_standin_controller`: a ``HybridCacheController`` subclass whose ``__init__`` builds
  no CUDA streams and whose copy steps (``start_writing``/``start_loading``) merge the queued
  operations with upstream's ``CacheOperation.merge_ops`` and acknowledge them at once (no
  bytes are copied: the differential runner compares bookkeeping, not contents).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from pathlib import Path

import torch

_MODULE_STANDINS = ("torchvision", "torchvision.io", "torchvision.ops", "torchvision.transforms",
                    "torchvision.transforms.functional", "sgl_kernel", "sgl_kernel.kvcacheio")


class _StandInModule(types.ModuleType):
    """A stand-in module: any attribute is a callable stand-in that raises if ever called."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def _not_available(*args, **kwargs):
            raise RuntimeError(f"stand-in {self.__name__}.{name} called: not available on a CPU-only machine")

        _not_available.__name__ = name
        return _not_available


def install_import_standins() -> None:
    """Install the import stand-ins, so that ``import sglang.srt.mem_cache...`` works on a
    CPU-only machine (idempotent)."""
    # transformers decides once whether torchvision exists: let it see that it does not, before
    # the stand-in module appears.
    importlib.import_module("transformers.image_utils")
    for name in _MODULE_STANDINS:
        if name in sys.modules:
            continue
        module = _StandInModule(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__path__ = []  # a package, so that submodules resolve
        sys.modules[name] = module
    for parent, _, child in (n.rpartition(".") for n in _MODULE_STANDINS if "." in n):
        setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])
    # sglang.srt.configs.utils registers image processors at import time; without torchvision
    # that registration fails. Load that module (upstream's file, unchanged) before its package
    # and replace its registration function with a no-op stand-in.
    name = "sglang.srt.configs.utils"
    if name not in sys.modules:
        sglang_srt = importlib.util.find_spec("sglang.srt")
        path = Path(sglang_srt.submodule_search_locations[0]) / "configs" / "utils.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.register_image_processor = _register_image_processor_standin
        sys.modules[name] = module


def _register_image_processor_standin(*args, **kwargs) -> None:
    """Stand-in for ``sglang.srt.configs.utils.register_image_processor``: does nothing."""
    return None


class _StandInAck:
    """A stand-in for a finished CUDA event: ``query()`` is true, ``synchronize()`` returns."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def record(self, *args) -> None:
        return None

    def wait(self, *args) -> None:
        return None


def _host_pool_classes():
    install_import_standins()
    from sglang.srt.mem_cache.memory_pool_host import MambaPoolHost, MHATokenToKVPoolHost

    class StandInHostKV(MHATokenToKVPoolHost):
        """Stand-in host KV pool: upstream's allocator (inherited), no buffers."""

        def __init__(self, size: int, page_size: int) -> None:
            self.size, self.page_size, self.device = size, page_size, "cpu"
            self.layout, self.start_layer, self.end_layer = "layer_first", 0, 0
            self.lock = threading.RLock()
            self.clear()

    class StandInHostMamba(MambaPoolHost):
        """Stand-in host state pool: upstream's allocator (inherited), no buffers."""

        def __init__(self, size: int) -> None:
            self.size, self.page_size, self.device = size, 1, "cpu"
            self.layout, self.start_layer, self.end_layer = "layer_first", 0, 0
            self.lock = threading.RLock()
            self.clear()

    return StandInHostKV, StandInHostMamba


def make_host_pools(kv_tokens: int, mamba_slots: int, page_size: int):
    """The two stand-in host pools (KV, state) of the given sizes."""
    kv_cls, mamba_cls = _host_pool_classes()
    return kv_cls(kv_tokens, page_size), mamba_cls(mamba_slots)


def make_standin_controller(allocator, host_group, page_size: int, write_policy: str):
    """A stand-in ``HybridCacheController`` over upstream's own ``write``/``load``/``evict_*``
    and allocation logic, with no CUDA streams; queued copies are merged and acknowledged at
    once."""
    install_import_standins()
    from sglang.srt.mem_cache.hybrid_cache.hybrid_cache_controller import (
        CacheOperation,
        HybridCacheController,
    )

    class StandInController(HybridCacheController):
        """Stand-in controller: upstream's queueing and allocation, copies acknowledged at once."""

        def __init__(self) -> None:
            self.mem_pool_device_allocator = allocator
            self.mem_pool_device = allocator.get_kvcache()
            self.mem_pool_host = host_group
            self.page_size = page_size
            self.write_policy = write_policy
            self.device = torch.device("cpu")
            self.enable_storage = False
            self.write_queue, self.load_queue = [], []
            self.ack_write_queue, self.ack_load_queue = [], []

        def reset(self) -> None:
            self.write_queue.clear()
            self.load_queue.clear()
            self.ack_write_queue.clear()
            self.ack_load_queue.clear()

        def start_writing(self) -> None:
            if not self.write_queue:
                return
            op = CacheOperation.merge_ops(self.write_queue)
            self.write_queue.clear()
            self.ack_write_queue.append((_StandInAck(), _StandInAck(), op.node_ids))

        def start_loading(self) -> int:
            if not self.load_queue:
                return -1
            op = CacheOperation.merge_ops(self.load_queue)
            self.load_queue.clear()
            self.ack_load_queue.append((_StandInAck(), _StandInAck(), op.node_ids))
            return 0

    return StandInController()
