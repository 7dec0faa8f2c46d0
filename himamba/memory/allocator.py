"""SlotAllocator: a free list of slot indices, page by page, that refuses double and foreign frees.

Slots are handed out in whole pages of ``page_size`` consecutive slots (page ``p`` holds slots
``p*page_size .. p*page_size + page_size - 1``), so a paged KV cache gets page-aligned rows. With
``page_size == 1`` a page is a slot. Freed pages go to the back of the list (first in, first out).

Every page carries an in-use mark, so freeing a slot that is free already, freeing the same slot
twice in one call, or freeing an index outside the pool raises :class:`PoolError` and changes
nothing.
"""

from __future__ import annotations

import torch

from himamba.errors import InvalidInputError, PoolError
from himamba.validate import check_int


class SlotAllocator:
    """Free-list allocator over ``capacity`` slots grouped in pages of ``page_size``."""

    def __init__(self, capacity: int, page_size: int = 1, device: torch.device | str = "cpu") -> None:
        check_pool_capacity(capacity, page_size)
        self.capacity = capacity
        self.page_size = page_size
        self.device = torch.device(device)
        # read several values in one host read: on a GPU each read is a sync; on the CPU two
        # plain ints are cheaper than one fused read (a measurement may turn it on there too)
        self.fused_reads = self.device.type != "cpu"
        self.num_pages = capacity // page_size
        self._free = torch.arange(self.num_pages, dtype=torch.int64, device=self.device)
        self._released: list[torch.Tensor] = []
        self._available_pages = self.num_pages
        self._in_use = torch.zeros(self.num_pages, dtype=torch.int32, device=self.device)
        self._owned = torch.zeros(self.num_pages, dtype=torch.bool, device=self.device)  # held by a tree node
        self._offsets = torch.arange(page_size, dtype=torch.int64, device=self.device)

    # -- queries -------------------------------------------------------------------------------
    def available_size(self) -> int:
        """Free slots."""
        return self._available_pages * self.page_size

    def used_size(self) -> int:
        """Slots handed out and not yet freed."""
        return self.capacity - self.available_size()

    def is_allocated(self, indices: torch.Tensor) -> torch.Tensor:
        """Boolean tensor, one flag per slot: is it currently handed out? (Indices must be in range.)"""
        flat = indices.reshape(-1).to(device=self.device, dtype=torch.int64)
        return self._in_use[flat // self.page_size].bool()

    def all_allocated(self, indices: torch.Tensor) -> bool:
        """Are all these slots in range and currently handed out?"""
        if self.page_size == 1 and isinstance(indices, torch.Tensor) and indices.numel() == 1 \
                and indices.dtype is torch.int64:
            if not self.fused_reads:  # host reads cost nothing on the CPU; two ints are fastest
                i = int(indices)
                return 0 <= i < self.num_pages and int(self._in_use[i]) == 1
            # on a GPU: one host read for the range and the in-use flag together
            indices = indices.to(self.device)
            inside = (indices >= 0) & (indices < self.num_pages)
            return bool(inside & (self._in_use[indices.clamp(0, self.num_pages - 1)] == 1))
        try:
            pages = self._pages_of(indices, check=True)
        except PoolError:
            return False
        return pages.numel() == 0 or bool(self._in_use.index_select(0, pages).all())

    def problem_with(self, indices: torch.Tensor) -> str | None:
        """Why these slots cannot be handed to the tree as one owner's (out of range, not
        allocated, named twice, partial pages), or ``None`` when they can. Changes nothing."""
        try:
            pages = self._pages_of(indices, check=True)
        except PoolError as exc:
            return str(exc)
        if pages.numel() == 0:
            return None
        in_use = self._in_use
        in_use.index_put_((pages,), _PLUS_ONE, accumulate=True)
        lo, hi = self._two_ints(*in_use.index_select(0, pages).aminmax())
        in_use.index_put_((pages,), _MINUS_ONE, accumulate=True)
        if lo < 2:
            return "names slots that are not allocated"
        if hi > 2:
            return "names the same slot more than once"
        return None

    # -- ownership: which allocated slots a tree node holds ----------------------------------------
    def mark_owned(self, indices: torch.Tensor) -> None:
        """Record that a tree node adopted these (allocated) slots; freeing them clears the mark."""
        self._owned.index_fill_(0, self._pages_of(indices, check=False), True)

    def owned_flags(self, indices: torch.Tensor) -> torch.Tensor:
        """One flag per slot (indices must be in range): does a tree node hold its page?"""
        flat = indices.reshape(-1)
        return self._owned.index_select(0, flat if self.page_size == 1 else flat // self.page_size)

    # -- alloc / free --------------------------------------------------------------------------
    def alloc(self, n: int) -> torch.Tensor | None:
        """``n`` free slots as an int64 tensor, or ``None`` when fewer than ``n`` are free.

        ``n`` must be a non-negative multiple of the page size.
        """
        if type(n) is not int:
            n = check_int(n, "alloc(n)")
        if n < 0 or n % self.page_size:
            raise InvalidInputError(f"cannot allocate {n} slots: need a non-negative multiple of page size {self.page_size}")
        pages_needed = n // self.page_size
        if pages_needed > self._available_pages:
            return None
        if pages_needed > self._free.numel():
            self._free = torch.cat([self._free, *self._released])
            self._released.clear()
        pages = self._free[:pages_needed]
        self._free = self._free[pages_needed:]
        self._in_use.index_fill_(0, pages, 1)
        self._available_pages -= pages_needed
        if self.page_size == 1:
            return pages
        return (pages.unsqueeze(1) * self.page_size + self._offsets).reshape(-1)

    def free(self, indices: torch.Tensor) -> None:
        """Return slots to the free list. Raises :class:`PoolError` (changing nothing) for a slot
        outside the pool, a slot that is not in use, a slot named twice, or a partial page."""
        pages = self._pages_of(indices, check=True)
        if pages.numel() == 0:
            return
        in_use = self._in_use
        # Count each mention down by one: a page named twice, or already free, goes below zero.
        in_use.index_put_((pages,), _MINUS_ONE, accumulate=True)
        if int(in_use.index_select(0, pages).amin()) < 0:
            in_use.index_put_((pages,), _PLUS_ONE, accumulate=True)
            listed = pages.tolist()
            bad = sorted({p for p in listed if int(in_use[p]) < 1 or listed.count(p) > 1})
            raise PoolError(f"double free: slot(s) {[p * self.page_size for p in bad[:8]]} are not in use (or named twice)")
        self._owned.index_fill_(0, pages, False)
        self._queue_released(pages)

    def free_owned(self, indices: torch.Tensor) -> None:
        """Return slots known to be allocated and named once (the tree's own, or input already
        checked with :meth:`problem_with`): no validation, so it is cheap."""
        pages = indices if self.page_size == 1 else indices[:: self.page_size] // self.page_size
        if pages.numel() == 0:
            return
        self._in_use.index_fill_(0, pages, 0)
        self._owned.index_fill_(0, pages, False)
        self._queue_released(pages)

    def _queue_released(self, pages: torch.Tensor) -> None:
        """Put freed pages (already marked free) at the back of the free list."""
        self._released.append(pages.clone())  # never keep the caller's tensor: they may reuse it
        self._available_pages += pages.numel()

    def _pages_of(self, indices: torch.Tensor, check: bool) -> torch.Tensor:
        if type(indices) is not torch.Tensor and not isinstance(indices, torch.Tensor):
            raise PoolError(f"indices must be a tensor of slot ids, got {type(indices).__name__}")
        if indices.dtype is not torch.int64:
            if indices.dtype not in (torch.int32, torch.int16, torch.int8, torch.uint8):
                raise PoolError(f"indices must be an integer tensor, got dtype {indices.dtype}")
            indices = indices.long()
        flat = indices if indices.dim() == 1 else indices.reshape(-1)
        if flat.device != self.device:
            flat = flat.to(self.device)
        ps = self.page_size
        misaligned = None
        if ps == 1:
            pages = flat
        else:
            if flat.numel() % ps:
                raise PoolError(f"{flat.numel()} slots do not form whole pages of {ps}")
            rows = flat.view(-1, ps)
            pages = rows[:, 0] // ps
            if check:
                misaligned = (rows != pages.unsqueeze(1) * ps + self._offsets).any()
                if not self.fused_reads and bool(misaligned):
                    raise PoolError(f"slots do not form whole aligned pages of {ps}: {flat[:8].tolist()}…")
        if check and pages.numel():
            lo, hi = pages.aminmax()
            if self.fused_reads and misaligned is not None:  # alignment and range in one host read
                bad, lo, hi = torch.stack((misaligned.long(), lo, hi)).tolist()
                if bad:
                    raise PoolError(f"slots do not form whole aligned pages of {ps}: {flat[:8].tolist()}…")
            else:
                lo, hi = self._two_ints(lo, hi)
            if lo < 0 or hi >= self.num_pages:
                raise PoolError(
                    f"slot index out of range: pool has {self.capacity} slots, got {lo * ps}..{hi * ps + ps - 1}"
                )
        return pages

    def _two_ints(self, a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
        """Two 0-d tensors as ints: with ``fused_reads`` (on a GPU) in one host read (one sync, not two)."""
        if not self.fused_reads:
            return int(a), int(b)
        lo, hi = torch.stack((a, b)).tolist()
        return lo, hi

    def __repr__(self) -> str:
        return f"SlotAllocator({self.available_size()}/{self.capacity} free, page {self.page_size})"


_MINUS_ONE = torch.tensor(-1, dtype=torch.int32)
_PLUS_ONE = torch.tensor(1, dtype=torch.int32)


def check_pool_capacity(capacity: object, page_size: object) -> None:
    """A pool's geometry: a positive page size and a capacity of whole pages (at least one).
    Checked before any tensor is allocated."""
    check_int(page_size, "page_size")
    check_int(capacity, "capacity")
    if page_size < 1:
        raise InvalidInputError(f"page_size must be >= 1, got {page_size}")
    if capacity < page_size:
        raise InvalidInputError(f"capacity {capacity} is smaller than one page ({page_size} slots)")
    if capacity % page_size:
        raise InvalidInputError(f"capacity {capacity} is not a multiple of the page size {page_size}")
