"""Listeners run in the middle of a change; a listener's exception (an interrupt too) must never
leave a change half done, a listener must not change the cache, and a second thread must not
enter an operation that runs."""

from __future__ import annotations

import contextlib
import threading

import pytest
from helpers import assert_healthy, make_cache, put, second_thread_during_evict

import himamba as hm
from himamba.observe.events import EventKind


def branchy(**config) -> hm.HiMambaRadixCache:
    cache = make_cache(cls=hm.HiMambaRadixCache, write_policy="write_through_selective", **config)
    for tokens in ([1, 2, 3, 4], [1, 2, 5, 6], [7, 8]):
        put(cache, tokens)
    return cache


@pytest.mark.parametrize("kind", [EventKind.CASCADE, EventKind.LEAF_EVICTED, EventKind.NODE_DELETED])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_listener_that_raises_mid_change_leaves_a_whole_change(kind, error):
    cache = branchy()
    expected = branchy()
    freed = expected.evict(6)

    def listener(event):
        if event.kind is kind:
            raise error("listener gives up")

    stop = cache.events.subscribe(listener)
    with pytest.raises(error):
        cache.evict(6)
    stop()
    assert_healthy(cache)  # the change completed before the exception left
    assert hm.take(cache).nodes == hm.take(expected).nodes and freed == 6


@pytest.mark.parametrize("kind", [EventKind.LOCK, EventKind.SPLIT, EventKind.NODE_CREATED, EventKind.UNLOCK,
                                  EventKind.PIN, EventKind.LOAD_ISSUED, EventKind.WRITE_ISSUED])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_a_request_interrupted_by_a_listener_leaves_no_lock_or_slot_behind(kind, error):
    """serve runs several operations; whichever one a listener interrupts, the request's locks
    are released and the slots the tree did not take are freed (exact pool accounting)."""
    cache = branchy()
    cache.writing_check()
    put(cache, [7, 8])  # a second hit: [7,8] is written through
    cache.writing_check()
    cache.evict(cache.total_size())  # [7,8] demoted (a request on it un-evicts it), the rest deleted
    fired = []

    def listener(event):
        if event.kind is kind and not fired:
            fired.append(event.text)
            raise error("listener gives up")

    stop = cache.events.subscribe(listener)
    for tokens in ([7, 8, 3], [1, 2, 3, 9], [1, 2, 3, 5], [1, 2, 3, 5]):
        with contextlib.suppress(error):
            hm.serve(cache, tokens)
    stop()
    assert fired
    cache.ready_to_load_host_cache()  # a load the interrupted request queued is still the scheduler's to start
    cache.writing_check()
    cache.loading_check()
    assert_healthy(cache)
    assert all(n.full_lock_ref == 0 for n in cache.nodes() if n is not cache.root_node)


def test_a_listener_that_changes_the_cache_is_refused():
    cache = branchy()
    calls = []

    def listener(event):
        if event.kind is EventKind.LEAF_EVICTED and not calls:
            calls.append(1)
            cache.reset()  # would drive the counters below zero mid-evict

    stop = cache.events.subscribe(listener)
    with pytest.raises(hm.ConcurrentUseError, match="inside an event listener"):
        cache.evict(6)
    stop()
    assert calls and cache.full_evictable_size_ >= 0
    assert_healthy(cache)


def test_a_second_thread_is_refused_while_an_operation_runs():
    cache = branchy()
    seen = second_thread_during_evict(cache, 6, lambda: cache.match_prefix([1, 2, 3, 4]))
    assert len(seen) == 1 and isinstance(seen[0], hm.ConcurrentUseError)
    assert "another thread" in str(seen[0])
    assert_healthy(cache)
    put(cache, [9, 9])  # and it serves again afterwards
    assert_healthy(cache)


def test_without_listeners_a_second_thread_is_refused_too_and_one_thread_may_nest():
    """The plain path (nobody listening, no bracket): the same re-entrant lock guards it."""
    from himamba.observe.events import operation

    class Slow:
        def __init__(self) -> None:
            self._operation_lock = threading.RLock()
            self.inside, self.go_on = threading.Event(), threading.Event()

        @operation("work")
        def work(self) -> str:
            self.inside.set()
            self.go_on.wait(5)
            return self.nested()

        @operation("nested")
        def nested(self) -> str:
            return "done"

    obj, results = Slow(), []
    first = threading.Thread(target=lambda: results.append(obj.work()))
    first.start()
    assert obj.inside.wait(5)
    with pytest.raises(hm.ConcurrentUseError, match="another thread"):
        obj.nested()
    obj.go_on.set()
    first.join(5)
    assert results == ["done"]  # the first thread nested an operation inside its own
    assert obj.nested() == "done"  # and the lock is free again
