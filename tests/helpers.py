"""Test helpers: build caches on the CPU, insert sequences with real content, assert health."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

import himamba as hm
from himamba.memory.content import write_kv, write_state


def make_cache(cls=hm.MambaRadixCache, **config) -> hm.MambaRadixCache:
    """A cache on the CPU; keyword arguments override CacheConfig fields."""
    config.setdefault("device", "cpu")
    return cls(hm.CacheConfig(**config))


def alloc_kv(cache, tokens: Sequence[int], start_pos: int) -> torch.Tensor:
    """Allocate device KV slots for ``tokens`` (at ``start_pos``) and fill them with content."""
    idx = cache.kv_pool.alloc(len(tokens))
    assert idx is not None, f"device KV pool short of {len(tokens)} slots"
    write_kv(cache.kv_pool, idx, tokens, start_pos)
    return idx


def alloc_state(cache, prefix: Sequence[int]) -> torch.Tensor:
    """Allocate one device state slot holding the state that ends ``prefix``."""
    slot = cache.mamba_pool.alloc(1)
    assert slot is not None, "device state pool is full"
    write_state(cache.mamba_pool, slot, prefix)
    return slot


def put(cache, tokens: Sequence[int], *, reuse: bool = True, chunked: bool = False) -> hm.InsertResult:
    """Insert ``tokens`` the way a request would: reuse the matched prefix's slots (when
    ``reuse``), allocate and fill the rest, donate a state slot; free it if the tree had one."""
    tokens = list(tokens)
    matched = cache.match_prefix(tokens).device_indices if reuse else torch.empty(0, dtype=torch.int64)
    n = len(matched)
    new = alloc_kv(cache, tokens[n:], n)
    value = torch.cat((matched, new))
    slot = alloc_state(cache, tokens)
    result = cache.insert(tokens, value, slot, prev_prefix_len=n, chunked=chunked)
    if result.mamba_exist:
        cache.mamba_pool.free(slot)
    return result


def node_at(cache, tokens: Sequence[int]) -> hm.TreeNode:
    """The node whose edge ends exactly after ``tokens`` (``cache.node_at``: no split, no LRU
    refresh, no retiming); fails the test when there is none."""
    node = cache.node_at(list(tokens))
    assert node is not None, f"no node ends exactly after {list(tokens)[:8]}…"
    return node


def assert_healthy(cache, held_kv: int | None = 0, held_states: int | None = 0, integrity: bool = True) -> None:
    """No invariant violations (with exact pool accounting) and, optionally, full integrity."""
    violations = hm.check_invariants(cache, held_kv=held_kv, held_states=held_states)
    assert not violations, "\n".join(map(str, violations)) + "\n" + cache.tree_text()
    if integrity:
        bad = hm.check_integrity(cache)
        assert not bad, "\n".join(map(str, bad))


def second_thread_during_evict(cache, n: int, second: Callable[[], object]) -> list[BaseException]:
    """Run ``cache.evict(n)`` on this thread and, while it is inside (held at its first
    LEAF_EVICTED step by a listener), ``second()`` on another thread; returns what ``second``
    raised (``[]`` when it ran through)."""
    import threading

    from himamba.observe.events import EventKind

    inside, tried = threading.Event(), threading.Event()
    seen: list[BaseException] = []

    def listener(event) -> None:  # holds this thread inside evict until the other has tried
        if event.kind is EventKind.LEAF_EVICTED and not inside.is_set():
            inside.set()
            tried.wait(5)

    def other_thread() -> None:
        inside.wait(5)
        try:
            second()
        except BaseException as exc:  # noqa: BLE001 - what it raised is the answer
            seen.append(exc)
        tried.set()

    stop = cache.events.subscribe(listener)
    other = threading.Thread(target=other_thread)
    other.start()
    try:
        cache.evict(n)
    finally:
        other.join(5)
        stop()
    return seen
