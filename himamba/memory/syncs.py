"""Counting host synchronisations: the calls that read a tensor's values on the host.

On a GPU each of them (``.item()``, ``.tolist()``, ``bool(t)``, ``int(t)``, ``torch.equal``, ...)
makes the CPU wait for the device. :func:`count_host_syncs` counts them per call site (the
innermost ``himamba`` frame) while its block runs:

* on the CPU, a counting hook wraps those tensor methods (they are not syncs there, but they would
  be on a GPU, so the count is what a CUDA run pays);
* with ``device`` a CUDA device, ``torch.cuda.set_sync_debug_mode("warn")`` reports the
  synchronisations CUDA itself sees, and each warning is counted at its site.

Reads made for the allocator (its checks, host copies of slot ids) count at the cache's frame
that asked for them. Frames in this module, in the checks (``invariants``, ``integrity``, the
fuzzer's oracle) and outside ``himamba`` are not call sites of the cache's hot paths; calls from
them count under ``"(outside)"``.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

_PACKAGE = str(Path(__file__).resolve().parents[1])
_NOT_HOT = ("invariants.py", "integrity.py", "syncs.py", "hi_invariants.py", "held_requests.py")
_PASS_THROUGH = ("slot_ids.py", "allocator.py")  # a read there is charged to the frame that asked
_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")
OUTSIDE = "(outside)"


@dataclass
class SyncCount:
    """Host reads counted per call site (``"cache/lookup.py:123"``); ``total`` counts hot-path sites
    only, ``raw`` every one seen (outside sites included)."""

    by_site: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(n for site, n in self.by_site.items() if site != OUTSIDE)

    @property
    def raw(self) -> int:
        return sum(self.by_site.values())


def _site(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_PACKAGE) and not name.endswith(_PASS_THROUGH):
            rel = name[len(_PACKAGE) + 1:]
            return OUTSIDE if rel.endswith(_NOT_HOT) else f"{rel}:{frame.f_lineno}"
        frame = frame.f_back
    return OUTSIDE


@contextmanager
def count_host_syncs(device: torch.device | str = "cpu") -> Iterator[SyncCount]:
    """Count host synchronisations per call site while the block runs (see the module docstring).
    Restores every patched method, and the CUDA sync debug mode, on exit."""
    count = SyncCount()
    device = torch.device(device)
    if device.type == "cuda":
        before = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield count
            finally:
                torch.cuda.set_sync_debug_mode(before)
        for w in caught:
            if "synchroniz" in str(w.message):
                count.by_site[_site_of_file(w.filename, w.lineno)] += 1
        return
    originals = {name: getattr(torch.Tensor, name) for name in _METHODS}
    equal = torch.equal

    def counting(name: str):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            count.by_site[_site()] += 1
            return original(self, *args, **kwargs)

        return wrapper

    def counting_equal(*args, **kwargs):
        count.by_site[_site()] += 1
        return equal(*args, **kwargs)

    try:
        for name in _METHODS:
            setattr(torch.Tensor, name, counting(name))
        torch.equal = counting_equal
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
        torch.equal = equal


def _site_of_file(filename: str, lineno: int) -> str:
    if not filename.startswith(_PACKAGE):
        return OUTSIDE
    rel = filename[len(_PACKAGE) + 1:]
    return OUTSIDE if rel.endswith(_NOT_HOT) else f"{rel}:{lineno}"


def take_slot_ids_as_on_a_gpu(cache) -> None:
    """Make a CPU cache's device pools take slot ids as a GPU's do: from the host copies that
    tensors carry (:mod:`himamba.memory.slot_ids`), any other read counted by
    :func:`count_host_syncs`. Host pools stay as they are (on a GPU they are host memory too).
    For tests and sync counts: call before the cache hands out slots."""
    for pool in (cache.kv_pool, cache.mamba_pool):
        pool.allocator.reads_tensor_memory = False
