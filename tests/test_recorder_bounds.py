"""Recordings: failures are steps, snapshots are stored compactly and read back equal, a
recording is bounded, step logs load with file:line errors and are written without following
links. No timing assertions; the memory figure is an allocation count (tracemalloc)."""

from __future__ import annotations

import gc
import json
import os
import random
import tracemalloc
import warnings

import pytest
from helpers import make_cache, put

import himamba as hm
from himamba.observe.history import KEYFRAME_EVERY
from himamba.sim.scenarios import b1_replay


def tiered_tree(n_nodes: int = 100, seed: int = 0) -> hm.HiMambaRadixCache:
    """A roomy write-back tiered cache with about ``n_nodes`` nodes."""
    rng = random.Random(seed)
    cache = make_cache(hm.HiMambaRadixCache, device_kv_tokens=8_192, host_kv_tokens=8_192,
                       device_mamba_slots=2 * n_nodes + 8, host_mamba_slots=2 * n_nodes + 8,
                       write_policy="write_back")
    while cache.num_nodes() < n_nodes:
        put(cache, [rng.randrange(4) for _ in range(rng.randint(4, 20))])
    return cache


def test_an_operation_that_raises_ends_with_a_failure_step():
    run = b1_replay(True)
    last = run.recorder.steps[-1]
    assert last.failed and last.kind == "op_failed" and last.op == "evict_host"
    assert "CacheAssertionError" in last.text and "parent does not have child key" in last.text
    assert last.event.data["error"] == "CacheAssertionError"
    # the state the exception left: the cascade had already deleted P before the raise
    assert last.snapshot == hm.take(run.cache)
    assert sum(s.failed for s in run.recorder.steps) == 1  # once, not once per enclosing operation
    clean = b1_replay(False)
    assert not any(s.failed for s in clean.recorder.steps)


def test_a_failure_inside_nested_operations_is_reported_once_and_re_raised_unchanged():
    cache = make_cache()
    put(cache, [1, 2, 3])
    seen = []
    stop = cache.events.subscribe(seen.append)
    with pytest.raises(hm.InvalidInputError) as raised:
        cache.evict(-1)
    stop()
    failed = [e for e in seen if e.kind is hm.EventKind.OP_FAILED]
    assert len(failed) == 1 and failed[0].data["message"] == str(raised.value)
    assert failed[0].text.startswith("evict raised InvalidInputError: ")


def test_compact_snapshots_read_back_equal_to_fresh_ones_in_any_order():
    cache = tiered_tree(60)
    fresh = []
    rec = hm.Recorder(cache)
    stop = cache.events.subscribe(lambda _e: fresh.append(hm.take(cache)))  # after the recorder's own
    rng = random.Random(3)
    with rec:
        for _ in range(2 * KEYFRAME_EVERY // 10 + 4):
            hm.serve(cache, [rng.randrange(4) for _ in range(rng.randint(4, 16))])
        cache.evict(30)
    stop()
    assert len(rec) == len(fresh) > KEYFRAME_EVERY  # past a full copy
    order = list(range(len(rec)))
    rng.shuffle(order)
    for i in order:
        assert rec[i].snapshot == fresh[i]
        assert rec[i].before == (fresh[i - 1] if i else rec.initial)
    assert rec[0].before == rec.initial


def test_a_step_costs_under_two_kib_on_a_hundred_node_tree():
    cache = tiered_tree(100)
    rng = random.Random(1)
    rec = hm.Recorder(cache)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with rec:
            for _ in range(20):
                hm.serve(cache, [rng.randrange(4) for _ in range(rng.randint(4, 20))])
        gc.collect()
        per_step = (tracemalloc.get_traced_memory()[0] - base) / len(rec)
    finally:
        tracemalloc.stop()
    assert len(rec) > 100 and per_step <= 2048, per_step


def test_max_steps_stops_the_recording_with_a_clear_message():
    cache = make_cache()
    rec = hm.Recorder(cache, max_steps=3)
    with rec, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        put(cache, [1, 2, 3])
        put(cache, [1, 2, 4])
    assert len(rec) == 3 and "max_steps=3" in rec.stopped
    assert [str(w.message) for w in caught] == [f"Recorder {rec.stopped}"]
    with pytest.raises(hm.InvalidInputError, match="max_steps"):
        hm.Recorder(cache, max_steps=0)
    with pytest.raises(hm.InvalidInputError, match="full"):
        rec.start()


def test_a_step_log_line_without_snapshot_names_its_file_and_line(tmp_path):
    rec = b1_replay(False).recorder
    path = rec.to_jsonl(tmp_path / "steps.jsonl")
    lines = path.read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["snapshot"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(broken)]) + "\n")
    with pytest.raises(hm.InvalidInputError, match=rf"{bad}:3: a step line needs 'snapshot'"):
        hm.Recorder.load_jsonl(bad)
    bad.write_text("\n".join([lines[0], "{not json"]) + "\n")
    with pytest.raises(hm.InvalidInputError, match=rf"{bad}:2: not a JSON line"):
        hm.Recorder.load_jsonl(bad)
    broken = json.loads(lines[1])
    broken["event"]["kind"] = "no such kind"
    bad.write_text("\n".join([lines[0], json.dumps(broken)]) + "\n")
    with pytest.raises(hm.InvalidInputError, match=rf"{bad}:2: not a himamba step"):
        hm.Recorder.load_jsonl(bad)
    loaded = hm.Recorder.load_jsonl(path)
    assert [s.to_dict() for s in loaded.steps] == [s.to_dict() for s in rec.steps]


@pytest.mark.parametrize("writer", ["to_jsonl", "to_html", "compare"])
def test_writers_follow_no_link_and_replace_no_special_file(tmp_path, writer):
    run = b1_replay(False)

    def write(path):
        if writer == "compare":
            return hm.compare(run.recorder, run.recorder).to_html(path)
        return getattr(run.recorder, writer)(path)

    target = tmp_path / "target.txt"
    target.write_text("keep me")
    link = tmp_path / "out"
    link.symlink_to(target)
    with pytest.raises(hm.InvalidInputError, match="symbolic link"):
        write(link)
    assert target.read_text() == "keep me" and link.is_symlink()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(hm.InvalidInputError, match="not a regular file"):
        write(fifo)
    plain = write(tmp_path / "plain.out")
    assert plain.stat().st_size > 0 and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
