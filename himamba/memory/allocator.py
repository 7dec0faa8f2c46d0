"""SlotAllocator: a free list of slot indices, page by page, that refuses double and foreign frees.

Slots are handed out in whole pages of ``page_size`` consecutive slots (page ``p`` holds slots
``p*page_size .. p*page_size + page_size - 1``), so a paged KV cache gets page-aligned rows. With
``page_size == 1`` a page is a slot. Freed pages go to the back of the list (first in, first out).

Every page carries a state: free, held (handed out, the caller's) or owned (a tree node adopted
it). Freeing a slot that is free already, freeing the same slot twice in one call, freeing an
index outside the pool, or freeing a slot a tree node owns raises :class:`PoolError` and changes
nothing (the tree returns its own slots with :meth:`~SlotAllocator.free_owned`); :meth:`handover_problem`
says whether slots can be handed to the tree, the first ones being the tree's own and the rest
the caller's.

The free list and the page states live on the host whatever the pool's device, and every check
runs there in numpy (:mod:`himamba.memory.page_checks`). The ids of a GPU tensor come from its
host copy (:mod:`himamba.memory.slot_ids`): allocations carry one, so a caller that passes back
what the cache gave it (sliced, or joined with :func:`slot_ids.cat`) is checked without a host
synchronisation; any other tensor is read once.

In-flight transfers (:meth:`hold`, :meth:`release`): a page named by a transfer whose bytes have
not landed is not handed out again before its ack. Freed meanwhile, it is parked (counted as
used, not free) and joins the free list when the last transfer naming it is released.

Size: over 300 lines because the page states, the checks that read them and the allocations,
frees and holds that change them are one structure.
"""

from __future__ import annotations

import numpy as np
import torch

from himamba.errors import InvalidInputError, PoolError
from himamba.memory import slot_ids
from himamba.memory.page_checks import PageChecks
from himamba.validate import check_int

FREE, HELD, OWNED = 0, 1, 2  # a page's state
_INTEGER = (torch.int32, torch.int16, torch.int8, torch.uint8)


class SlotAllocator:
    """Free-list allocator over ``capacity`` slots grouped in pages of ``page_size``."""

    def __init__(self, capacity: int, page_size: int = 1, device: torch.device | str = "cpu") -> None:
        check_pool_capacity(capacity, page_size)
        self.capacity = capacity
        self.page_size = page_size
        self.device = torch.device(device)
        self.num_pages = capacity // page_size
        self._free = np.arange(self.num_pages, dtype=np.int64)  # host: pages in hand-out order
        self._released: list[np.ndarray] = []
        self._available_pages = self.num_pages
        # FREE, HELD or OWNED per page, on the host: one byte, so a big pool's states stay in cache
        self._state = torch.zeros(self.num_pages, dtype=torch.int8)
        self._pages = PageChecks(self._state, page_size)
        # may slot ids be read from a tensor's own memory? (host memory: yes; a GPU: from copies)
        self.reads_tensor_memory = self.device.type == "cpu"
        self._in_flight: np.ndarray | None = None  # per page: unlanded transfers naming it
        self._parked: list[np.ndarray] = []  # pages freed while in flight

    # -- queries -------------------------------------------------------------------------------
    def available_size(self) -> int:
        """Free slots (parked pages are not free)."""
        return self._available_pages * self.page_size

    def used_size(self) -> int:
        """Slots handed out and not yet freed, and parked slots."""
        return self.capacity - self.available_size()

    def parked_size(self) -> int:
        """Slots freed while a transfer named them, waiting for its ack."""
        return sum(len(p) for p in self._parked) * self.page_size

    def is_allocated(self, indices: torch.Tensor) -> torch.Tensor:
        """Boolean CPU tensor, one flag per slot: is it currently handed out? (In range.)"""
        return torch.from_numpy(self._pages.state[self._ids(indices) // self.page_size] != FREE)

    def all_allocated(self, indices: torch.Tensor) -> bool:
        """Are all these slots in range, in whole aligned pages, and handed out (held or owned)?"""
        try:
            pages = self._pages.pages(self._ids(indices))
        except PoolError:
            return False
        return pages is not None and not (self._pages.state[pages] == FREE).any()

    def problem_with(self, indices: torch.Tensor | np.ndarray) -> str | None:
        """Why these slots cannot be named as one owner's (out of range, not allocated, named
        twice, partial pages), or ``None`` when they can; held and owned slots both count as
        allocated. ``indices`` may also be slot ids already on the host. Changes nothing."""
        pages = self._checked_pages(indices)
        if isinstance(pages, str):
            return pages
        if not len(pages):
            return None
        if (self._pages.state[pages] == FREE).any():
            return _NOT_ALLOCATED
        return None if self._pages.named_once(pages) else _NAMED_TWICE

    # -- ownership: which allocated slots a tree node holds ----------------------------------------
    def mark_owned(self, indices: torch.Tensor | np.ndarray) -> None:
        """Record that a tree node adopted these (allocated) slots; freeing them clears the mark.
        ``indices``: a slot tensor, or its host ids (:meth:`host_ids`)."""
        ids = self._host(indices)
        if len(ids) == 1 and self.page_size == 1:  # a state slot: a plain store, not a scatter
            self._pages.state[int(ids[0])] = OWNED
        else:
            self._pages.state[self._page_ids(ids)] = OWNED

    def owned_flags(self, indices: torch.Tensor) -> torch.Tensor:
        """One flag per slot (in range), a CPU tensor: does a tree node hold its page?"""
        return torch.from_numpy(self._pages.state[self._ids(indices) // self.page_size] == OWNED)

    def handover_problem(self, indices: torch.Tensor | np.ndarray, tree_len: int, name: str,
                         len_name: str | None = None, pool: str | None = None,
                         state: tuple[SlotAllocator, torch.Tensor | np.ndarray, str, str] | None = None) -> str | None:
        """Why ``indices`` cannot be handed to the tree, as a sentence, or ``None`` when they can:
        every slot in range and in whole aligned pages, named once; the first ``tree_len`` slots
        owned by the tree (the caller got them from it: ``len_name`` counts them) and the rest
        held by the caller (allocated, not owned). Changes nothing. ``name`` and ``pool`` label
        the sentence (``"value ... (device KV)"``). ``indices``: a slot tensor, or its host ids
        (:meth:`host_ids`).

        ``state`` = ``(allocator, slot, name, pool)``: also check one state slot (tensor or host
        ids) handed over with these (the caller's, page size 1), after them."""
        problem = self._handover(indices, tree_len, name, len_name, pool)
        if problem is None and state is not None:
            return state[0].handover_problem(state[1], 0, state[2], pool=state[3])
        return problem

    def _handover(self, indices: torch.Tensor | np.ndarray, tree_len: int, name: str, len_name: str | None,
                  pool: str | None) -> str | None:
        try:
            ids = self._host(indices)
        except PoolError as exc:
            return f"{name} {exc}{f' ({pool})' if pool else ''}"
        ps, states = self.page_size, self._pages.state
        if ps == 1 and tree_len == 0 and len(ids) == 1:  # a state slot: the common case, in plain ints
            slot = int(ids[0])
            if 0 <= slot < self.num_pages:
                return _one_slot_sentence(int(states[slot]), name, pool)
        if tree_len % ps == 0 and self._pages.split_ok(ids, tree_len // ps, OWNED, HELD):
            return None
        where = f" ({pool})" if pool else ""
        pages = self._checked_pages(ids)
        if isinstance(pages, str):
            return f"{name} {pages}{where}"
        if not len(pages):
            return None
        if (states[pages] == FREE).any():
            return f"{name} {_NOT_ALLOCATED}{where}"
        if not self._pages.named_once(pages):
            return f"{name} {_NAMED_TWICE}{where}"
        owned = states[ids // ps] == OWNED
        n_tree, n_all = int(owned[:tree_len].sum()), int(owned.sum())
        if n_all != n_tree:
            return (f"{name} names {n_all - n_tree} slot(s) past the first {tree_len} that a tree node already owns: "
                    "pass slots the caller allocated (a slot has one owner)")
        return (f"{len_name}={tree_len} claims {tree_len} slots of {name} are the tree's, but only {n_tree} are: "
                f"{len_name} must count the slots the caller got from the tree (match_prefix)")

    # -- alloc / free --------------------------------------------------------------------------
    def alloc(self, n: int) -> torch.Tensor | None:
        """``n`` free slots as an int64 tensor on the pool's device, or ``None`` when fewer than
        ``n`` are free. ``n`` must be a non-negative multiple of the page size. On a GPU the
        tensor carries its host copy (no host read is needed to check it later)."""
        if type(n) is not int:
            n = check_int(n, "alloc(n)")
        if n < 0 or n % self.page_size:
            raise InvalidInputError(f"cannot allocate {n} slots: need a non-negative multiple of page size {self.page_size}")
        pages_needed = n // self.page_size
        if pages_needed > self._available_pages:
            return None
        if pages_needed > len(self._free):
            self._free = np.concatenate([self._free, *self._released])
            self._released.clear()
        pages = self._free[:pages_needed]
        self._free = self._free[pages_needed:]
        self._pages.state[pages] = HELD
        self._available_pages -= pages_needed
        ids = pages if self.page_size == 1 else ((pages * self.page_size)[:, None] + self._pages.offsets).reshape(-1)
        if self.reads_tensor_memory:
            return torch.from_numpy(ids)
        return slot_ids.upload(ids, self.device)

    def free(self, indices: torch.Tensor) -> None:
        """Return slots a caller holds to the free list. Raises :class:`PoolError` (changing
        nothing) for a slot outside the pool, a slot that is not in use, a slot named twice, a
        partial page, or a slot a tree node owns (the tree frees its own slots, through
        :meth:`free_owned`, when it evicts them)."""
        ids = self._ids(indices)
        if not self._pages.split_ok(ids, 0, OWNED, HELD):  # every page held, each named once
            problem = self.problem_with(ids)
            if problem in (_NOT_ALLOCATED, _NAMED_TWICE):
                listed = self._page_ids(ids).tolist()
                bad = sorted({p for p in listed if self._pages.state[p] == FREE or listed.count(p) > 1})
                raise PoolError(f"double free: slot(s) {[p * self.page_size for p in bad[:8]]} are not in use (or named twice)")
            if problem is not None:
                raise PoolError(problem)
            owned = np.flatnonzero(self._pages.state[self._page_ids(ids)] == OWNED)
            slots = (ids[owned * self.page_size] if self.page_size > 1 else ids[owned]).tolist()
            raise PoolError(f"slot(s) {slots[:8]} belong to a tree node: the tree frees its own slots when it evicts "
                            "them; free only slots you allocated")
        self._release_pages(self._page_ids(ids))

    def free_owned(self, indices: torch.Tensor | np.ndarray) -> None:
        """Return slots known to be allocated and named once (the tree's own, or input already
        checked with :meth:`handover_problem`): no validation, so it is cheap. ``indices``: a
        slot tensor, or its host ids (:meth:`host_ids`)."""
        self._release_pages(self._page_ids(self._host(indices)))

    # -- transfers in flight -------------------------------------------------------------------
    def hold(self, indices: torch.Tensor) -> np.ndarray:
        """A transfer whose bytes have not landed names these slots: until :meth:`release` of the
        pages returned, they are not handed out again (freed meanwhile, they are parked)."""
        pages = self._page_ids(self._ids(indices)).copy()
        if self._in_flight is None:
            self._in_flight = np.zeros(self.num_pages, dtype=np.int32)
        self._in_flight[pages] += 1  # one transfer names a slot once
        return pages

    def release(self, pages: np.ndarray) -> None:
        """The transfer that held ``pages`` (what :meth:`hold` returned) has landed: parked pages
        that no transfer names any more join the free list."""
        self._in_flight[pages] -= 1
        if self._parked:
            parked, self._parked = np.concatenate(self._parked), []
            self._release_pages(parked)

    def held_in_flight(self, indices: torch.Tensor) -> torch.Tensor:
        """One flag per slot (in range), a CPU tensor: does an unlanded transfer name its page?"""
        pages = self._ids(indices) // self.page_size
        if self._in_flight is None:
            return torch.zeros(len(pages), dtype=torch.bool)
        return torch.from_numpy(self._in_flight[pages] > 0)

    def _release_pages(self, pages: np.ndarray) -> None:
        """Mark ``pages`` free and put them at the back of the free list, or park the ones an
        unlanded transfer names."""
        if not len(pages):
            return
        self._pages.state[pages] = FREE
        if self._in_flight is not None:
            busy = self._in_flight[pages] > 0
            if busy.any():
                self._parked.append(pages[busy].copy())
                pages = pages[~busy]
        self._released.append(pages.copy())  # never keep the caller's memory: they may reuse it
        self._available_pages += len(pages)

    # -- slot ids on the host ----------------------------------------------------------------------
    def host_ids(self, indices: torch.Tensor) -> np.ndarray:
        """The slot ids of ``indices`` on the host, flattened (read-only): no host read when the
        tensor's memory is host memory or it carries a current copy. :class:`PoolError` for
        something that is not an integer tensor."""
        return self._ids(indices)

    def _host(self, indices: torch.Tensor | np.ndarray) -> np.ndarray:
        """Host ids as given (what :meth:`host_ids` returned), or those of a slot tensor."""
        return indices if type(indices) is np.ndarray else self._ids(indices)

    def _ids(self, indices: torch.Tensor) -> np.ndarray:
        """The slot ids of ``indices`` on the host, flattened int64: from the tensor's memory on
        the CPU, from its host copy on a GPU (read once when it has none). :class:`PoolError`
        for something that is not an integer tensor."""
        if type(indices) is torch.Tensor and indices.dtype is torch.int64 and self.reads_tensor_memory \
                and indices.is_cpu:  # the common case first: host memory, read in place
            return indices.numpy() if indices.dim() == 1 else indices.numpy().reshape(-1)
        if type(indices) is not torch.Tensor and not isinstance(indices, torch.Tensor):
            raise PoolError(f"indices must be a tensor of slot ids, got {type(indices).__name__}")
        if indices.dtype is not torch.int64:
            if indices.dtype not in _INTEGER:
                raise PoolError(f"indices must be an integer tensor, got dtype {indices.dtype}")
            if not (self.reads_tensor_memory and indices.device.type == "cpu"):
                return slot_ids.host_ids(indices)  # its copy holds int64 ids whatever the dtype
            indices = indices.long()
        if self.reads_tensor_memory and indices.device.type == "cpu":
            return (indices if indices.dim() == 1 else indices.reshape(-1)).numpy()
        return slot_ids.host_ids(indices)

    def _page_ids(self, ids: np.ndarray) -> np.ndarray:
        """The pages of slot ids already known to be whole aligned pages."""
        return ids if self.page_size == 1 else ids[:: self.page_size] // self.page_size

    def _checked_pages(self, indices: torch.Tensor | np.ndarray) -> np.ndarray | str:
        """The pages of ``indices``, or a sentence: not an integer tensor, not whole aligned
        pages, or out of range."""
        try:
            ids = self._host(indices)
        except PoolError as exc:
            return str(exc)
        ps = self.page_size
        pages = self._pages.aligned_pages(ids)
        if pages is None:
            if len(ids) % ps:
                return f"{len(ids)} slots do not form whole pages of {ps}"
            return f"slots do not form whole aligned pages of {ps}: {ids[:8].tolist()}…"
        if len(pages) and (pages.min() < 0 or pages.max() >= self.num_pages):
            return f"slot index out of range: pool has {self.capacity} slots, got {pages.min() * ps}..{pages.max() * ps + ps - 1}"
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
