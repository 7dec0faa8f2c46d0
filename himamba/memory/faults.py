"""Injected faults: what a GPU server meets — a copy that fails when issued or while landing, an
allocation that raises or comes back short — drawn at a seeded rate, so that every recovery path
of the cache runs in tests and in ``himamba fuzz --faults RATE``.

``CacheConfig(faults="0.05")`` injects every kind at 5%; ``faults="copy_issue=0.1,alloc_short=0.2,
seed=3"`` names kinds (the others stay off). The kinds:

==============  ===================================================================================
``copy_issue``  the engine raises :class:`~himamba.errors.TransferFailure` when a write's copy is
                issued (nothing moved); the transfer controller gives back what it allocated for
                it (a load's copy is issued when the batch launches: its faults are landing ones)
``copy_land``   the copy fails while landing. A write's copy is copied again from its source
                (still held by the transfer), and the failure is reported
                (``FaultPlan.landing_failures``). A load's copy leaves its destinations poisoned
                and its handle ``failed``: ``ready_to_load_host_cache`` retracts the load (its
                chain is host-only again, see :mod:`himamba.cache.load_failure`)
``alloc_raise`` a transfer's allocation raises :class:`~himamba.errors.AllocationFailure`
``alloc_short`` a transfer's allocation returns fewer slots than asked (the pool front refuses
                the short answer, gives it back and reports a shortage)
``storage``     a storage operation fails when it completes: a backup stores nothing and releases
                its pin; a prefetch inserts nothing, frees the host slots it fetched into and
                releases its pins (:class:`~himamba.cache.storage.StorageOps`)
==============  ===================================================================================

Allocation faults apply to the slots the transfer controller allocates (host slots of a write,
device slots of a load), not to the slots a caller allocates for its own request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from himamba.errors import AllocationFailure, InvalidInputError, TransferFailure
from himamba.memory.copy_engines import POISON, CopyEngine, CopyHandle, CopyPlan, copy_rows

KINDS = ("copy_issue", "copy_land", "alloc_raise", "alloc_short", "storage")


@dataclass
class FaultPlan:
    """Rates per kind and a seeded draw; counts what it injected (``injected``)."""

    rates: dict[str, float]
    seed: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    landing_failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"faults-{self.seed}")

    def fires(self, kind: str) -> bool:
        rate = self.rates.get(kind, 0.0)
        if rate and self._rng.random() < rate:
            self.injected[kind] = self.injected.get(kind, 0) + 1
            return True
        return False


def parse_faults(spec: object) -> FaultPlan | None:
    """A :class:`FaultPlan` from ``None``/``""`` (no faults), a rate (``0.05``, ``"0.05"``: every
    kind) or ``"kind=rate,...,seed=N"``; InvalidInputError naming the problem otherwise."""
    if spec is None or spec == "" or spec == 0:
        return None
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        raise InvalidInputError(f"faults must be a rate or 'kind=rate,...', got {spec!r}")
    rates: dict[str, float] = {}
    seed = 0
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    for part in parts:
        name, eq, value = part.partition("=")
        if not eq:
            name, value = "*", name
        try:
            number = float(value)
        except ValueError:
            raise InvalidInputError(f"faults: {part!r} is not kind=rate (kinds: {', '.join(KINDS)}, seed)") from None
        if name == "seed":
            seed = int(number)
            continue
        if not 0.0 <= number <= 1.0:
            raise InvalidInputError(f"faults: the rate in {part!r} must be between 0 and 1")
        if name == "*":
            rates.update(dict.fromkeys(KINDS, number))
        elif name in KINDS:
            rates[name] = number
        else:
            raise InvalidInputError(f"faults: unknown kind {name!r} (kinds: {', '.join(KINDS)})")
    return FaultPlan(rates, seed) if any(rates.values()) else None


class FaultyEngine(CopyEngine):
    """Wraps a copy engine: a write's issue may raise; a copy may fail while landing (a write is
    then copied again, a load is marked ``failed`` for the cache to retract)."""

    def __init__(self, inner: CopyEngine, plan: FaultPlan) -> None:
        self.inner, self.plan = inner, plan
        self.name = inner.name

    def prepare(self, plan: CopyPlan) -> None:
        self.inner.prepare(plan)

    def issue(self, plan: CopyPlan) -> CopyHandle:
        if plan.to_host and self.plan.fires("copy_issue"):
            raise TransferFailure(f"injected fault: the device -> host copy of {plan.nbytes:,} bytes failed when issued")
        handle = self.inner.issue(plan)
        if handle.landed:  # the synchronous engine: landed at issue, nothing can fail later
            return handle
        return _FaultyHandle(handle, plan, self.plan)

    def order_compute_after(self, handle: CopyHandle) -> None:
        if isinstance(handle, _FaultyHandle):
            handle.wait()
        else:
            self.inner.order_compute_after(handle)


class _FaultyHandle(CopyHandle):
    def __init__(self, inner: CopyHandle, copy: CopyPlan, plan: FaultPlan) -> None:
        self.inner, self.copy, self.plan = inner, copy, plan
        self.landed = False
        self.failed = False

    def ready(self) -> bool:
        if not self.inner.ready():
            return False
        self.wait()
        return True

    def release(self) -> None:
        self.wait()

    def wait(self) -> None:
        if self.landed:
            return
        self.inner.wait()
        if self.plan.fires("copy_land"):
            for row in self.copy.rows:  # the bytes did not arrive
                if row.dst_idx.numel():
                    row.dst.index_fill_(1, row.dst_idx, POISON)
            if self.copy.to_host:  # a write: its sources are still held by the transfer, copy again
                self.plan.landing_failures.append(f"a device -> host copy of {self.copy.nbytes:,} bytes failed while landing and was copied again")
                copy_rows(self.copy)
            else:  # a load: the cache retracts it (or, where it cannot, calls retry)
                self.failed = True
        self.landed = True

    def retry(self, why: str) -> None:
        """Copy a failed load again from its sources (still held by the transfer); ``why`` says
        why the cache could not retract it instead (reported with the failure)."""
        copy_rows(self.copy)
        self.failed = False
        self.plan.landing_failures.append(f"a host -> device copy of {self.copy.nbytes:,} bytes failed while landing "
                                          f"and was copied again ({why})")


class FaultyPool:
    """A pool front whose ``alloc`` may raise or come back short (the controller's view of a pool);
    everything else is the pool's own."""

    def __init__(self, pool, plan: FaultPlan) -> None:
        self._pool, self._plan = pool, plan

    def __getattr__(self, name: str):
        return getattr(self._pool, name)

    def alloc(self, n: int) -> torch.Tensor | None:
        if self._plan.fires("alloc_raise"):
            raise AllocationFailure(f"injected fault: an allocation of {n} slot(s) failed")
        got = self._pool.alloc(n)
        if got is not None and n > self._pool.page_size and self._plan.fires("alloc_short"):
            short = got[: n - self._pool.page_size]
            self._pool.free(got[n - self._pool.page_size :])
            got = short
        if got is not None and got.shape[0] != n:  # a short answer: give it back, report a shortage
            self._pool.free(got)
            return None
        return got
