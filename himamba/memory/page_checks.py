"""The allocator's page checks, in numpy over its host page states.

Every allocator keeps its page states on the host (one byte a page) and checks slot ids there:
numpy calls on these small arrays cost a fraction of torch's dispatch, and on a GPU the ids come
from host copies (:mod:`himamba.memory.slot_ids`), so no check waits for the device. These
functions answer only "these slots are fine" or not; the allocator words the reason. Nothing
here changes a page's state.
"""

from __future__ import annotations

import numpy as np
import torch


class PageChecks:
    """Yes/no checks over one allocator's page states (a numpy view of its state tensor)."""

    def __init__(self, state: torch.Tensor, page_size: int) -> None:
        self.state = state.numpy()  # shares the (host) tensor's memory: always current
        self.num_pages = len(self.state)
        self.page_size = page_size
        self.offsets = np.arange(page_size, dtype=np.int64)
        self._positions: np.ndarray | None = None  # 0, 1, 2, ...: made on first use
        self._scratch: np.ndarray | None = None  # one entry per page, for the duplicate test
        self._runs: dict[int, bytes] = {}  # per state, its byte repeated once per page

    def pages(self, slots: np.ndarray) -> np.ndarray | None:
        """The pages named by the slot ids ``slots`` (1-D int64), or ``None`` when they are not
        whole aligned pages inside the pool."""
        pages = self.aligned_pages(slots)
        if pages is None or not len(pages) or (pages.min() >= 0 and pages.max() < self.num_pages):
            return pages
        return None

    def named_once(self, pages: np.ndarray) -> bool:
        """Is every page of ``pages`` named once? Each page's entry of a scratch array takes the
        position naming it; a page named twice keeps only the later position."""
        n = len(pages)
        if self._scratch is None or len(self._positions) < n:
            self._scratch = np.empty(self.num_pages, dtype=np.int32)  # 4 bytes a page: stays in cache
            self._positions = np.arange(max(self.num_pages, n), dtype=np.int32)
        here = self._positions[:n]
        self._scratch[pages] = here
        return self._scratch[pages].tobytes() == here.tobytes()  # one memcmp, not a temporary array

    def split_ok(self, slots: np.ndarray, tree_pages: int, tree_state: int, rest_state: int) -> bool:
        """Are ``slots`` whole pages inside the pool, each named once, the first ``tree_pages``
        pages in ``tree_state`` and the rest in ``rest_state``? (One byte compare for the states.)"""
        states, pages = self._states_of(slots)
        if states is None:
            return False
        k = min(tree_pages, len(pages))
        return (states.tobytes() == self._run(tree_state, k) + self._run(rest_state, len(pages) - k)
                and self.named_once(pages))

    def all_in_use_once(self, slots: np.ndarray, free_state: int) -> bool:
        """Are ``slots`` whole pages inside the pool, each named once, none free?"""
        states, pages = self._states_of(slots)
        return states is not None and not (states == free_state).any() and self.named_once(pages)

    def aligned_pages(self, slots: np.ndarray) -> np.ndarray | None:
        """The page of each run of ``page_size`` slots, or ``None`` unless ``slots`` are whole
        aligned pages (not checked against the pool's size)."""
        ps = self.page_size
        if ps == 1 or not len(slots):
            return slots
        if len(slots) % ps:
            return None
        rows = slots.reshape(-1, ps)
        pages = rows[:, 0] // ps
        return None if (rows != (pages * ps)[:, None] + self.offsets).any() else pages

    # -- helpers ---------------------------------------------------------------------------------
    def _states_of(self, slots: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(states, pages)`` of ``slots``, or ``(None, None)`` when they are not whole aligned
        pages inside the pool. (Indexing refuses pages past the end; negative ones are tested.)"""
        pages = self.aligned_pages(slots)
        if pages is None:
            return None, None
        try:
            states = self.state[pages]
        except IndexError:
            return None, None
        if len(pages) and pages.min() < 0:
            return None, None
        return states, pages

    def _run(self, state: int, n: int) -> bytes:
        """``n`` pages' worth of ``state``, as the bytes of an int8 state array."""
        run = self._runs.get(state)
        if run is None:
            run = self._runs[state] = np.full(self.num_pages, state, dtype=np.int8).tobytes()
        return run[:n]
