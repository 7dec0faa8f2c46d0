"""Exceptions raised by himamba.

Two families:

* :class:`ValueError` subclasses for bad input from the caller (an unaligned key, a value of the
  wrong length, a lock released below zero, a slot freed twice). They are raised *before* any
  state changes, so the cache is left exactly as it was.
* :class:`CacheAssertionError` for the internal assertions that upstream SGLang makes (same
  message text, e.g. ``parent does not have child key``). With every legacy switch off they
  never fire; the legacy switches exist precisely to make some of them fire again.
"""

from __future__ import annotations


class HiMambaError(Exception):
    """Base class of every exception this package raises on purpose."""


class InvalidInputError(HiMambaError, ValueError):
    """The caller passed something the cache cannot accept; nothing was changed."""


class PoolError(InvalidInputError):
    """A pool was asked to free a slot it never handed out, or one that is already free."""


class LockError(InvalidInputError):
    """A lock or pin would go below zero; nothing was changed."""


class ConcurrentUseError(InvalidInputError):
    """A cache operation was called while another runs: from a second thread, or from inside an
    event listener. A cache serves one caller at a time; nothing was changed."""


class TransferFailure(HiMambaError, RuntimeError):
    """A copy between the tiers failed (a copy engine's error; injected by ``CacheConfig(faults=...)``)."""


class AllocationFailure(HiMambaError, RuntimeError):
    """An allocation for a transfer failed (a device or host allocator's error)."""


class CacheAssertionError(HiMambaError, AssertionError):
    """An upstream assertion failed: the tree reached a state the algorithm forbids."""


class UpstreamFailure(HiMambaError):
    """A failure path of SGLang 0.5.11 that a legacy switch reproduces (profile
    ``"sglang-0.5.11"``): the message begins with upstream's exception class and message, e.g.
    ``RuntimeError: Can not alloc mamba cache``."""


class OracleError(AssertionError):
    """A driver saw behaviour the reference forbids that no invariant covers (e.g. B2, or a
    result that disagrees with the tree)."""
