"""The catalogue's fault and hostile-output classes: what a GPU server meets (a copy or an
allocation that fails, a storage operation that fails), a listener that raises or changes the
cache, a second thread, crafted labels and step logs in HTML, a recording that would grow
without bound.

Each case returns ``(cache, call, requests, after, named)``: ``named(error)`` checks the error the
call ended with (:class:`WrongError` when it is not the one the case names) and asserts the state
the call must leave (as before the operation, or the named state the fault leaves);
``bench/bad_input.py`` counts a case ``ok`` when that holds and invariants and integrity are clean.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import make_cache, node_at, put, second_thread_during_evict

import himamba as hm
from himamba.observe.events import EventKind

FAULT_CLASSES = ("faults", "listeners", "threads", "html", "recordings")
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _tiered(faults: str = "", **config) -> hm.HiMambaRadixCache:
    config.setdefault("write_policy", "write_through_selective")
    if faults:
        config["faults"] = faults
    return make_cache(cls=hm.HiMambaRadixCache, **config)


def _quiet(cache):
    """Turn the cache's injected faults off until the returned function turns them on again."""
    plan = cache.cache_controller.faults
    rates, plan.rates = plan.rates, {}

    def on() -> None:
        plan.rates = rates
    return on


def _loadable(faults: str, engine: str = "sync") -> hm.HiMambaRadixCache:
    """[1,2,3] backed up and demoted to host; the faults start only then."""
    cache = _tiered(faults, write_policy="write_through", load_back_threshold=1, copy_engine=engine)
    on = _quiet(cache)
    put(cache, [1, 2, 3])
    cache.writing_check()
    cache.evict(3)
    on()
    return cache


def _branchy() -> hm.HiMambaRadixCache:
    cache = _tiered()
    for tokens in ([1, 2, 3, 4], [1, 2, 5, 6], [7, 8]):
        put(cache, tokens)
    return cache


class WrongError(AssertionError):
    """The call ended with another error (or none) than the case names: ``bench/bad_input.py``
    counts that as unclear; any other failed check of a case as corrupt."""


def _no_error(error: BaseException | None) -> None:
    if error is not None:
        raise WrongError(f"unexpected {error!r}")


def _raises(kind: type[BaseException], words: str = ""):
    def named(error) -> None:
        if not isinstance(error, kind) or words not in str(error):
            raise WrongError(f"expected {kind.__name__} naming {words!r}, got {error!r}")
    return named


def _as_before(cache, kind: type[BaseException] | None, words: str = ""):
    """The call raises ``kind`` (or nothing) and leaves the cache as it was: the same nodes (keys,
    slots, locks, pins, times), pool usage and counters (``hm.take``; a slot taken and given back
    may come out of the free list in another order next time)."""
    before = hm.take(cache)

    def named(error) -> None:
        if kind is None:
            _no_error(error)
        else:
            _raises(kind, words)(error)
        after = hm.take(cache)
        assert (after.nodes, after.pools, after.counters) == (before.nodes, before.pools, before.counters), \
            "the state changed"
    return named


def register(case) -> None:
    """Add the cases to the catalogue (``case`` is its decorator)."""

    # -- faults -------------------------------------------------------------------------------------------
    for fault, what, error in (("copy_issue=1", "the copy fails when issued", hm.TransferFailure),
                               ("alloc_raise=1", "the host allocation raises", hm.AllocationFailure),
                               ("alloc_short=1", "the host allocation comes back short", None)):
        @case("faults", f"write_backup: {what}")
        def _(tmp, fault=fault, error=error):
            c = _tiered(fault)
            on = _quiet(c)
            put(c, [1, 2, 3])
            on()
            named = _as_before(c, error, "injected fault" if error else "")
            return c, lambda: c.write_backup(node_at(c, [1, 2, 3])), (), None, named

    @case("faults", "serve: the write-through copy fails when issued")
    def _(tmp):
        c = _tiered("copy_issue=1", write_policy="write_through")

        def named(error) -> None:
            _no_error(error)
            assert node_at(c, [1, 2, 3]).host_value is None  # served, not backed up
        return c, lambda: hm.serve(c, [1, 2, 3]), (), None, named

    @case("faults", "evict under write_back: the write-back copy fails when issued")
    def _(tmp):
        c = _tiered("copy_issue=1", write_policy="write_back")
        on = _quiet(c)
        put(c, [1, 2, 3])
        on()

        def named(error) -> None:
            _no_error(error)
            assert c.node_at([1, 2, 3]) is None  # not backed up, so deleted: nothing claims a host copy
        return c, lambda: c.evict(3), (), None, named

    @case("faults", "load_back: the device allocation raises")
    def _(tmp):
        c = _loadable("alloc_raise=1")
        return c, lambda: c.load_back(node_at(c, [1, 2, 3])), (), None, _as_before(c, hm.AllocationFailure, "injected fault")

    @case("faults", "init_load_back + launch: the load's copy fails while landing")
    def _(tmp):
        c = _loadable("copy_land=1", engine="deferred")
        node = node_at(c, [1, 2, 3])
        as_before = _as_before(c, None)

        def call() -> None:
            c.init_load_back(node)
            c.ready_to_load_host_cache()

        def named(error) -> None:
            assert node.value is None and node.host_value is not None, "the node is not host-only again"
            assert not c.ongoing_load_back and not c.cache_controller.in_flight(), "a load stays in flight"
            as_before(error)
        return c, call, (), None, named

    @case("faults", "writing_check: a write's copy fails while landing")
    def _(tmp):
        c = _tiered("copy_land=1", write_policy="write_through", copy_engine="deferred")

        def call() -> None:
            put(c, [1, 2, 3])
            c.writing_check(write_back=True)

        def named(error) -> None:
            _no_error(error)
            assert node_at(c, [1, 2, 3]).host_value is not None  # copied again: integrity checks the bytes
        return c, call, (), None, named

    @case("faults", "check_storage_progress: a storage backup fails")
    def _(tmp):
        c = _tiered("storage=1", enable_storage=True, write_policy="write_through")
        put(c, [1, 2, 3, 4])
        c.writing_check()
        node = node_at(c, [1, 2, 3, 4])

        def named(error) -> None:
            _no_error(error)
            assert c.storage.pages == {} and node.host_ref_counter == 0, "stored something or kept its pin"
        return c, c.check_storage_progress, (), None, named

    @case("faults", "check_prefetch_progress: a storage prefetch fails")
    def _(tmp):
        c = _tiered("storage=1", enable_storage=True, write_policy="write_through")
        put(c, [1, 2])
        c.writing_check()
        c.check_storage_progress()
        c.storage.store_prefix([1, 2, 3, 4, 5, 6])
        c.prefetch_from_storage("req-1", node_at(c, [1, 2]), [3, 4, 5, 6])

        def named(error) -> None:
            _no_error(error)
            assert c.node_at([1, 2, 3, 4, 5, 6]) is None and not c.storage.ops and not c.ongoing_prefetch
            assert c.host_kv_pool.used_size() == 2, "host slots the prefetch fetched into are still held"
        return c, lambda: c.check_prefetch_progress("req-1"), (), None, named

    # -- listeners ------------------------------------------------------------------------------------------
    for kind in (EventKind.CASCADE, EventKind.LEAF_EVICTED):
        @case("listeners", f"a listener raises KeyboardInterrupt at {kind.name} inside evict")
        def _(tmp, kind=kind):
            c, expected = _branchy(), _branchy()
            expected.evict(6)

            def listener(event):
                if event.kind is kind:
                    raise KeyboardInterrupt

            c.events.subscribe(listener)

            def named(error) -> None:
                _raises(KeyboardInterrupt)(error)
                assert hm.take(c).nodes == hm.take(expected).nodes, "the eviction was left half done"
            return c, lambda: c.evict(6), (), None, named

    @case("listeners", "a listener raises KeyboardInterrupt at LOCK inside serve")
    def _(tmp):
        c = _branchy()

        def listener(event):
            if event.kind is EventKind.LOCK:
                raise KeyboardInterrupt

        c.events.subscribe(listener)

        def named(error) -> None:
            _raises(KeyboardInterrupt)(error)
            assert all(n.full_lock_ref == 0 for n in c.nodes() if n is not c.root_node), "a lock stays behind"
        return c, lambda: hm.serve(c, [1, 2, 3, 4, 9]), (), None, named

    @case("listeners", "a listener calls reset() in the middle of evict")
    def _(tmp):
        c = _branchy()

        def listener(event):
            if event.kind is EventKind.LEAF_EVICTED:
                c.reset()

        c.events.subscribe(listener)
        return c, lambda: c.evict(6), (), None, _raises(hm.ConcurrentUseError, "inside an event listener")

    # -- threads -------------------------------------------------------------------------------------------
    @case("threads", "a second thread calls match_prefix while evict runs")
    def _(tmp):
        c = _branchy()
        seen: list[BaseException] = []

        def named(error) -> None:
            _no_error(error)
            assert len(seen) == 1 and isinstance(seen[0], hm.ConcurrentUseError), f"the second thread got {seen}"
        return c, lambda: seen.extend(second_thread_during_evict(c, 6, lambda: c.match_prefix([1, 2, 3, 4]))), \
            (), None, named

    # -- HTML ------------------------------------------------------------------------------------------------
    def _escaped(path_of):
        def named(error) -> None:
            _no_error(error)
            page = Path(path_of()).read_text()
            assert "<script>alert" not in page and "<img src=x" not in page, "markup from a label runs"
            assert "&lt;script&gt;alert" in page, "the label is not shown as text"
        return named

    def _recording():
        from himamba.sim.scenarios import b1_replay

        rec = b1_replay(False).recorder
        return rec, {rec.steps[0].snapshot.nodes[1].id: HOSTILE}

    @case("html", "Recorder.to_html with a <script> label")
    def _(tmp):
        rec, names = _recording()
        out = tmp / "a.html"
        return None, lambda: rec.to_html(out, names=names), (), None, _escaped(lambda: out)

    @case("html", "compare().to_html with <script> labels and names")
    def _(tmp):
        rec, names = _recording()
        out = tmp / "b.html"
        return None, lambda: hm.compare(rec, rec, names=names, labels=(HOSTILE, "b")).to_html(out), (), None, \
            _escaped(lambda: out)

    @case("html", "a crafted step log loaded with load_jsonl, then to_html")
    def _(tmp):
        rec, _ = _recording()
        lines = rec.to_jsonl(tmp / "steps.jsonl").read_text().splitlines()
        step = json.loads(lines[1])
        step["event"]["text"] = HOSTILE
        step["op"] = HOSTILE
        (tmp / "crafted.jsonl").write_text("\n".join([lines[0], json.dumps(step), *lines[2:]]) + "\n")
        out = tmp / "crafted.html"
        return None, lambda: hm.Recorder.load_jsonl(tmp / "crafted.jsonl").to_html(out), (), None, _escaped(lambda: out)

    @case("html", "to_svg with a label holding a control character")
    def _(tmp):
        rec, _ = _recording()
        node = rec.steps[0].snapshot.nodes[1].id
        return None, lambda: hm.to_svg(rec.steps[0], names={node: "P\x07"}), (), None, \
            _raises(hm.InvalidInputError, "control character")

    # -- recordings ------------------------------------------------------------------------------------------
    @case("recordings", "Recorder(max_steps=3) over two requests")
    def _(tmp):
        c = make_cache()
        rec = hm.Recorder(c, max_steps=3)

        def call() -> None:
            import warnings

            with rec, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                put(c, [1, 2, 3])
                put(c, [1, 2, 4])

        def named(error) -> None:
            _no_error(error)
            assert len(rec) == 3 and "max_steps=3" in (rec.stopped or ""), "the recording did not stop with a message"
        return c, call, (), None, named
