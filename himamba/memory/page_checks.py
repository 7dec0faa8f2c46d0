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

    def pages(self, slots: np.ndarray) -> np.ndarray | None:
        """The pages named by the slot ids ``slots`` (1-D int64), or ``None`` when they are not
        whole aligned pages inside the pool."""
        if not len(slots):
            return slots
        ps = self.page_size
        if ps == 1:
            pages = slots
        else:
            if len(slots) % ps:
                return None
            rows = slots.reshape(-1, ps)
            pages = rows[:, 0] // ps
            if (rows != (pages * ps)[:, None] + self.offsets).any():
                return None
        if pages.min() < 0 or pages.max() >= self.num_pages:
            return None
        return pages

    def named_once(self, pages: np.ndarray) -> bool:
        """Is every page of ``pages`` named once? Each page's entry of a scratch array takes the
        position naming it; a page named twice keeps only the later position."""
        n = len(pages)
        if self._scratch is None or len(self._positions) < n:
            self._scratch = np.empty(self.num_pages, dtype=np.int32)  # 4 bytes a page: stays in cache
            self._positions = np.arange(max(self.num_pages, n), dtype=np.int32)
        here = self._positions[:n]
        self._scratch[pages] = here
        return bool((self._scratch[pages] == here).all())

    def split_ok(self, slots: np.ndarray, tree_pages: int, tree_state: int, rest_state: int) -> bool:
        """Are ``slots`` whole pages inside the pool, each named once, the first ``tree_pages``
        pages in ``tree_state`` and the rest in ``rest_state``?"""
        pages = self.pages(slots)
        if pages is None:
            return False
        states = self.state[pages]
        if tree_pages and not (states[:tree_pages] == tree_state).all():
            return False
        if not (states[tree_pages:] == rest_state).all():
            return False
        return self.named_once(pages)

    def all_in_use_once(self, slots: np.ndarray, free_state: int) -> bool:
        """Are ``slots`` whole pages inside the pool, each named once, none free?"""
        pages = self.pages(slots)
        return pages is not None and not (self.state[pages] == free_state).any() and self.named_once(pages)
