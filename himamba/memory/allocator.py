"""SlotAllocator: a free list of slot indices, page by page, that refuses double and foreign frees.

Slots are handed out in whole pages of ``page_size`` consecutive slots (page ``p`` holds slots
``p*page_size .. p*page_size + page_size - 1``), so a paged KV cache gets page-aligned rows. With
``page_size == 1`` a page is a slot. Freed pages go to the back of the list (first in, first out).

Every page carries a state: free, held (handed out, the caller's) or owned (a tree node adopted
it). Freeing a slot that is free already, freeing the same slot twice in one call, or freeing an
index outside the pool raises :class:`PoolError` and changes nothing; :meth:`handover_problem`
says in one pass (one host read) whether slots can be handed to the tree, the first ones being
the tree's own and the rest the caller's. On the CPU the yes/no part of these checks and the
state updates run in numpy over the same memory (:mod:`himamba.memory.cpu_checks`).

Size: over 300 lines because the page states, the checks that read them and the allocations and
frees that change them are one structure; split, each half would reach into the other's tensors.
"""

from __future__ import annotations

import torch

from himamba.errors import InvalidInputError, PoolError
from himamba.memory.cpu_checks import CpuSlotCheck
from himamba.validate import check_int

FREE, HELD, OWNED = 0, 1, 2  # a page's state
MENTION = 1 << 32  # the torch checks read ``state + MENTION * mentions`` per page (states stay below it)


class SlotAllocator:
    """Free-list allocator over ``capacity`` slots grouped in pages of ``page_size``."""

    def __init__(self, capacity: int, page_size: int = 1, device: torch.device | str = "cpu") -> None:
        check_pool_capacity(capacity, page_size)
        self.capacity = capacity
        self.page_size = page_size
        self.device = torch.device(device)
        self.num_pages = capacity // page_size
        self._free = torch.arange(self.num_pages, dtype=torch.int64, device=self.device)
        self._released: list[torch.Tensor] = []
        self._available_pages = self.num_pages
        # FREE, HELD or OWNED per page: one byte, so that a big pool's states stay in the CPU's caches
        self._state = torch.zeros(self.num_pages, dtype=torch.int8, device=self.device)
        self._mentions: torch.Tensor | None = None  # per-page counts for the torch checks (made on first use)
        # 0-d stand-ins stacked with the pool's own tensors (so on its device): no misalignment,
        # an empty tree part, an empty caller part
        self._zero, self._owned_once, self._held_once = torch.tensor(
            [0, OWNED + MENTION, HELD + MENTION], dtype=torch.int64, device=self.device).unbind()
        self._offsets = torch.arange(page_size, dtype=torch.int64, device=self.device)
        # on the CPU, yes/no checks run in numpy over the same memory first
        self._cpu_check = CpuSlotCheck(self._state, page_size) if self.device.type == "cpu" else None

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
        return self._state[flat // self.page_size] != FREE

    def all_allocated(self, indices: torch.Tensor) -> bool:
        """Are all these slots in range and currently handed out (held or owned)?"""
        if self.page_size == 1 and isinstance(indices, torch.Tensor) and indices.numel() == 1 \
                and indices.dtype is torch.int64:
            return self._one_slot_state(indices) in (HELD, OWNED)
        try:
            pages = self._pages_of(indices, check=True)
        except PoolError:
            return False
        return pages.numel() == 0 or bool((self._state.index_select(0, pages) != FREE).all())

    def problem_with(self, indices: torch.Tensor) -> str | None:
        """Why these slots cannot be named as one owner's (out of range, not allocated, named
        twice, partial pages), or ``None`` when they can; held and owned slots both count as
        allocated. Changes nothing."""
        counts = self._count_mentions(indices, 0)
        if counts is None:
            return None
        if isinstance(counts, str):
            return counts
        _, _, lo, hi, _ = counts
        if lo < HELD + MENTION:
            return _NOT_ALLOCATED
        if hi > OWNED + MENTION:
            return _NAMED_TWICE
        return None

    # -- ownership: which allocated slots a tree node holds ----------------------------------------
    def mark_owned(self, indices: torch.Tensor) -> None:
        """Record that a tree node adopted these (allocated) slots; freeing them clears the mark."""
        self._set_state(self._pages_of(indices, check=False), OWNED)

    def owned_flags(self, indices: torch.Tensor) -> torch.Tensor:
        """One flag per slot (indices must be in range): does a tree node hold its page?"""
        flat = indices.reshape(-1)
        return self._state.index_select(0, flat if self.page_size == 1 else flat // self.page_size) == OWNED

    def handover_problem(self, indices: torch.Tensor, tree_len: int, name: str,
                         len_name: str | None = None, pool: str | None = None,
                         state: tuple[SlotAllocator, torch.Tensor, str, str] | None = None) -> str | None:
        """Why ``indices`` cannot be handed to the tree, as a sentence, or ``None`` when they can:
        every slot in range and in whole aligned pages, named once; the first ``tree_len`` slots
        owned by the tree (the caller got them from it: ``len_name`` counts them) and the rest
        held by the caller (allocated, not owned). One host read when it holds; changes nothing.
        ``name`` and ``pool`` label the sentence (``"value ... (device KV)"``).

        ``state`` = ``(allocator, slot, name, pool)``: also check one state slot handed over with
        these (the caller's, page size 1), after them; on a GPU the two checks share their read."""
        ps = self.page_size
        if ps == 1 and indices.numel() == 1 and tree_len == 0 and indices.dtype is torch.int64 and state is None:
            one = self._one_slot_state(indices)  # the common single read
            if one >= 0:  # out of range (-1): the general path words the range
                return _one_slot_sentence(one, name, pool)
        if self._cpu_check is not None and tree_len % ps == 0 and isinstance(indices, torch.Tensor) and \
                indices.dtype is torch.int64 and self._cpu_check.split_ok(self._flat(indices), tree_len // ps, OWNED, HELD):
            return None if state is None else state[0].handover_problem(state[1], 0, state[2], pool=state[3])
        fused = state if state is not None and self._shares_reads_with(*state[:2]) else None
        counts = self._count_mentions(indices, tree_len // ps if tree_len % ps == 0 else None, fused)
        where = f" ({pool})" if pool else ""
        if isinstance(counts, str):
            return f"{name} {counts}{where}"
        problem = None
        if counts is not None:
            tree_lo, tree_hi, lo, hi, state_value = counts
            if min(tree_lo, lo) < HELD + MENTION:
                problem = f"{name} {_NOT_ALLOCATED}{where}"
            elif max(tree_hi, hi) > OWNED + MENTION:
                problem = f"{name} {_NAMED_TWICE}{where}"
            elif not (tree_lo == OWNED + MENTION and lo == hi == HELD + MENTION):
                problem = self._ownership_sentence(indices, tree_len, name, len_name)
            if problem is None and fused is not None and state_value >= 0:
                return _one_slot_sentence(state_value, fused[2], fused[3])
        if problem is not None or state is None:
            return problem
        return state[0].handover_problem(state[1], 0, state[2], pool=state[3])

    def _shares_reads_with(self, other: SlotAllocator, slot: torch.Tensor) -> bool:
        """Can one host read serve this pool's check and ``other``'s single-slot check? (Both on
        the GPU path, on one device, ``slot`` one int64 slot of a page-size-1 pool.)"""
        return self._cpu_check is None and other._cpu_check is None and other.device == self.device and \
            other.page_size == 1 and isinstance(slot, torch.Tensor) and slot.numel() == 1 and slot.dtype is torch.int64

    def _ownership_sentence(self, indices: torch.Tensor, tree_len: int, name: str, len_name: str | None) -> str:
        """Why the split of ``indices`` at ``tree_len`` into tree and caller slots is wrong."""
        owned = self.owned_flags(indices)
        n_tree = int(owned[:tree_len].sum()) if tree_len else 0
        n_all = int(owned.sum())
        if n_all != n_tree:
            return (f"{name} names {n_all - n_tree} slot(s) past the first {tree_len} that a tree node already owns: "
                    "pass slots the caller allocated (a slot has one owner)")
        return (f"{len_name}={tree_len} claims {tree_len} slots of {name} are the tree's, but only {n_tree} are: "
                f"{len_name} must count the slots the caller got from the tree (match_prefix)")

    def _one_slot_state(self, index: torch.Tensor) -> int:
        """The state of one slot (page size 1), ``-1`` when out of range: one host read (on a
        GPU its range and state in one)."""
        if self._cpu_check is not None:  # host reads cost nothing on the CPU
            i = index.item()
            return int(self._cpu_check.state[i]) if 0 <= i < self.num_pages else -1
        return int(self._one_slot_tensor(index))

    def _one_slot_tensor(self, index: torch.Tensor) -> torch.Tensor:
        """The state of one slot (page size 1) as a 0-d int64 tensor on the pool's device, ``-1``
        when out of range: nothing is read yet."""
        index = index.reshape(()).to(self.device)
        inside = (index >= 0) & (index < self.num_pages)
        return torch.where(inside, self._state[index.clamp(0, self.num_pages - 1)].long(), -1)

    def _count_mentions(self, indices: torch.Tensor, tree_pages: int | None, state=None):
        """Count how often each page is named, in one host read: ``None`` for no slots, a
        sentence for slots out of range or not in whole aligned pages, else
        ``(tree_lo, tree_hi, lo, hi, state_value)``: the least and greatest ``state + MENTION *
        mentions`` over the first ``tree_pages`` pages and over the rest (``tree_pages=None``: a
        page straddles the split, reported as the tree part holding a held slot), and, with
        ``state`` (``(allocator, slot, ...)``), that slot's state read in the same read (else
        ``None``). Not an integer tensor is a sentence too. Changes nothing."""
        try:
            pages, misaligned = self._pages_unchecked(indices)
        except PoolError as exc:
            return str(exc)
        n = pages.numel()
        if n == 0:
            return None
        if self._mentions is None:
            self._mentions = torch.zeros(self.num_pages, dtype=torch.int32, device=self.device)
            self._one = torch.ones((), dtype=torch.int32, device=self.device)
        mentions = self._mentions  # all zero between calls
        safe = pages.clamp(0, self.num_pages - 1)
        mentions.index_put_((safe,), self._one, accumulate=True)
        seen = mentions.index_select(0, safe).long() * MENTION + self._state.index_select(0, safe)
        mentions.index_fill_(0, safe, 0)
        k = 0 if tree_pages is None else tree_pages
        parts = [*pages.aminmax(), misaligned if misaligned is not None else self._zero]
        parts += [*seen[:k].aminmax()] if k else [self._owned_once, self._owned_once]
        parts += [*seen[k:].aminmax()] if k < n else [self._held_once, self._held_once]
        if state is not None:
            parts.append(state[0]._one_slot_tensor(state[1]))
        lo_page, hi_page, bad, tree_lo, tree_hi, lo, hi, *state_value = torch.stack(parts).tolist()
        ps = self.page_size
        if bad:
            return f"slots do not form whole aligned pages of {ps}: {indices.reshape(-1)[:8].tolist()}…"
        if lo_page < 0 or hi_page >= self.num_pages:
            return f"slot index out of range: pool has {self.capacity} slots, got {lo_page * ps}..{hi_page * ps + ps - 1}"
        if tree_pages is None:  # a page holds tree slots and caller slots: never both owned and held
            tree_lo = HELD + MENTION
        return tree_lo, tree_hi, lo, hi, state_value[0] if state_value else None

    def _pages_unchecked(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pages named by ``indices`` (one per ``page_size`` slots) and, for pages of more
        than one slot, a 0-d flag tensor: are they misaligned? No host read; a wrong type, dtype
        or a count that is not whole pages raises :class:`PoolError`."""
        flat = self._flat(indices)
        ps = self.page_size
        if ps == 1:
            return flat, None
        if flat.numel() % ps:
            raise PoolError(f"{flat.numel()} slots do not form whole pages of {ps}")
        rows = flat.view(-1, ps)
        pages = rows[:, 0] // ps
        return pages, (rows != pages.unsqueeze(1) * ps + self._offsets).any().long()

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
        self._set_state(pages, HELD)
        self._available_pages -= pages_needed
        if self.page_size == 1:
            return pages
        return (pages.unsqueeze(1) * self.page_size + self._offsets).reshape(-1)

    def free(self, indices: torch.Tensor) -> None:
        """Return slots (held or owned) to the free list. Raises :class:`PoolError` (changing
        nothing) for a slot outside the pool, a slot that is not in use, a slot named twice, or
        a partial page. One host read."""
        fast = self._cpu_check is not None and isinstance(indices, torch.Tensor) and indices.dtype is torch.int64 \
            and self._cpu_check.all_in_use_once(self._flat(indices), FREE)
        if not fast:
            problem = self.problem_with(indices)
            if problem in (_NOT_ALLOCATED, _NAMED_TWICE):
                listed = self._pages_of(indices, check=False).tolist()
                bad = sorted({p for p in listed if int(self._state[p]) == FREE or listed.count(p) > 1})
                raise PoolError(f"double free: slot(s) {[p * self.page_size for p in bad[:8]]} are not in use (or named twice)")
            if problem is not None:
                raise PoolError(problem)
        pages = self._pages_of(indices, check=False)
        if pages.numel():
            self._set_state(pages, FREE)
            self._queue_released(pages)

    def free_owned(self, indices: torch.Tensor) -> None:
        """Return slots known to be allocated and named once (the tree's own, or input already
        checked with :meth:`handover_problem`): no validation, so it is cheap."""
        pages = indices if self.page_size == 1 else indices[:: self.page_size] // self.page_size
        if pages.numel() == 0:
            return
        self._set_state(pages, FREE)
        self._queue_released(pages)

    def _set_state(self, pages: torch.Tensor, state: int) -> None:
        """Put ``pages`` (a 1-D int64 tensor on the pool's device) in ``state``; on the CPU through
        the numpy view of the same memory, a fraction of a torch call's cost."""
        if self._cpu_check is not None:
            self._cpu_check.state[pages.item() if pages.shape[0] == 1 else pages.numpy()] = state
        else:
            self._state.index_fill_(0, pages, state)

    def _queue_released(self, pages: torch.Tensor) -> None:
        """Put freed pages (already marked free) at the back of the free list."""
        self._released.append(pages.clone())  # never keep the caller's tensor: they may reuse it
        self._available_pages += pages.numel()

    def _flat(self, indices: torch.Tensor) -> torch.Tensor:
        """``indices`` as a 1-D int64 tensor on the pool's device; :class:`PoolError` for
        something that is not an integer tensor."""
        if type(indices) is not torch.Tensor and not isinstance(indices, torch.Tensor):
            raise PoolError(f"indices must be a tensor of slot ids, got {type(indices).__name__}")
        if indices.dtype is not torch.int64:
            if indices.dtype not in (torch.int32, torch.int16, torch.int8, torch.uint8):
                raise PoolError(f"indices must be an integer tensor, got dtype {indices.dtype}")
            indices = indices.long()
        flat = indices if indices.dim() == 1 else indices.reshape(-1)
        return flat if flat.device == self.device else flat.to(self.device)

    def _pages_of(self, indices: torch.Tensor, check: bool) -> torch.Tensor:
        """The pages of ``indices``; with ``check``, :class:`PoolError` unless they are whole
        aligned pages inside the pool (one host read)."""
        if not check:
            flat = self._flat(indices)
            return flat if self.page_size == 1 else flat.view(-1, self.page_size)[:, 0] // self.page_size
        pages, misaligned = self._pages_unchecked(indices)
        if pages.numel():
            ps = self.page_size
            lo, hi, bad = torch.stack((*pages.aminmax(), self._zero if misaligned is None else misaligned)).tolist()
            if bad:
                raise PoolError(f"slots do not form whole aligned pages of {ps}: {indices.reshape(-1)[:8].tolist()}…")
            if lo < 0 or hi >= self.num_pages:
                raise PoolError(f"slot index out of range: pool has {self.capacity} slots, got {lo * ps}..{hi * ps + ps - 1}")
        return pages

    def __repr__(self) -> str:
        return f"SlotAllocator({self.available_size()}/{self.capacity} free, page {self.page_size})"



_NOT_ALLOCATED = "names slots that are not allocated"
_NAMED_TWICE = "names the same slot more than once"


def _one_slot_sentence(state: int, name: str, pool: str | None) -> str | None:
    """What a single-slot handover check says of a slot (inside the pool) in ``state``:
    ``None`` when the caller holds it."""
    if state == HELD:
        return None
    if state == OWNED:
        return f"{name} names 1 slot(s) past the first 0 that a tree node already owns: " \
            "pass slots the caller allocated (a slot has one owner)"
    return f"{name} names a{' ' + pool if pool else ''} slot that is not allocated"


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
