"""The lens: SGLang's own caches as subjects of himamba's views (snapshots, recordings, invariants,
one script on three trees, the 0.5.23 subprocess and its errors).

Tests that need SGLang 0.5.11 skip where ``make differential`` has not installed it; those that
need 0.5.23 skip where ``make sglang-0.5.23`` has not built its environment.
"""

from __future__ import annotations

import json
import sys

import pytest

import himamba as hm
from himamba.differential import upstream
from himamba.lens import remote
from himamba.lens.replay import Replay, replay_on

needs_0511 = pytest.mark.skipif(not upstream.upstream_available(),
                                reason="SGLang 0.5.11 is not installed (make differential)")
needs_0523 = pytest.mark.skipif(not remote.env_python().exists(),
                                reason="SGLang 0.5.23's environment is missing (make sglang-0.5.23)")

CONFIG = {"device": "cpu", "device_kv_tokens": 32, "host_kv_tokens": 64, "device_mamba_slots": 4,
          "host_mamba_slots": 8, "write_policy": "write_through"}
SCRIPT = {"cache": "tiered", "config": CONFIG,
          "ops": [{"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "events"}, {"op": "match", "tokens": [1, 2]},
                  {"op": "request", "tokens": [1, 2, 5, 6]}, {"op": "evict", "n": 4}]}


def _fake_python(tmp_path, body: str):
    path = tmp_path / "python"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return path


# -- the subprocess and its errors (no SGLang needed) ---------------------------------------------------
def test_missing_environment_is_unavailable_naming_the_version(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HIMAMBA_SGLANG_0523_PYTHON", str(tmp_path / "absent" / "python"))
    with pytest.raises(hm.UpstreamUnavailable, match=r"0\.5\.23.*make sglang-0\.5\.23"):
        replay_on(SCRIPT, "sglang-0.5.23")


def test_a_hanging_worker_times_out_as_a_failure(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HIMAMBA_SGLANG_0523_PYTHON", str(_fake_python(tmp_path, "import time; time.sleep(30)")))
    with pytest.raises(hm.UpstreamFailure, match=r"0\.5\.23 did not answer within 1 s"):
        remote.call({"what": "probe"}, timeout=1)


def test_worker_errors_come_back_as_the_named_exceptions(monkeypatch, tmp_path) -> None:
    answer = json.dumps({"ok": False, "kind": "unavailable", "message": "import failed: boom"})
    monkeypatch.setenv("HIMAMBA_SGLANG_0523_PYTHON", str(_fake_python(tmp_path, f"print({answer!r})")))
    with pytest.raises(hm.UpstreamUnavailable, match=r"SGLang 0\.5\.23: import failed: boom"):
        remote.call({"what": "probe"}, timeout=30)
    answer = json.dumps({"ok": False, "kind": "failure", "message": "AssertionError: x"})
    monkeypatch.setenv("HIMAMBA_SGLANG_0523_PYTHON", str(_fake_python(tmp_path, f"print({answer!r})")))
    with pytest.raises(hm.UpstreamFailure, match=r"SGLang 0\.5\.23: AssertionError: x"):
        remote.call({"what": "probe"}, timeout=30)
    monkeypatch.setenv("HIMAMBA_SGLANG_0523_PYTHON", str(_fake_python(tmp_path, "raise SystemExit(3)")))
    with pytest.raises(hm.UpstreamFailure, match="status 3"):
        remote.call({"what": "probe"}, timeout=30)


def test_unknown_tree_is_refused() -> None:
    with pytest.raises(hm.InvalidInputError, match="unknown tree"):
        replay_on(SCRIPT, "sglang-9")


# -- SGLang 0.5.11, live ------------------------------------------------------------------------------
@needs_0511
@pytest.mark.parametrize("tiered", [False, True], ids=["MambaRadixCache", "HiMambaRadixCache"])
def test_0511_caches_are_subjects_of_every_view(tiered: bool) -> None:
    from himamba.differential.sides import UpstreamSide
    from himamba.lens.replay import drive

    side = UpstreamSide(hm.CacheConfig(**CONFIG), tiered)
    rep = drive(side, {**SCRIPT, "ops": SCRIPT["ops"][:4]}, "sglang-0.5.11")
    assert rep.failure is None
    snap = hm.take(side.cache)
    assert snap.settings["cache"] == ("HiMambaRadixCache" if tiered else "MambaRadixCache")
    keys = {v.key for v in snap.nodes}
    assert {(1, 2), (3, 4), (5, 6)} <= keys  # the split and the two branches, read from the live nodes
    assert set(snap.lru) == ({"full", "mamba", "host_mamba"} if tiered else {"full", "mamba"})
    assert 'class="node"' in hm.to_svg(side.cache)
    assert len(hm.node_table(side.cache)) == len(snap.nodes)
    assert set(hm.lru_table(side.cache)["list"]) <= set(snap.lru)
    assert "full_evictable_size" in set(hm.counters_table(side.cache)["name"])
    assert hm.check_invariants(side.cache) == []


@needs_0511
def test_0511_damage_names_the_broken_rule() -> None:
    from himamba.differential.sides import UpstreamSide
    from himamba.lens.replay import drive

    side = UpstreamSide(hm.CacheConfig(**CONFIG), True)
    drive(side, {**SCRIPT, "ops": SCRIPT["ops"][:4]}, "sglang-0.5.11")
    c = side.cache
    assert hm.check_invariants(c) == []
    leaf = next(iter(c.evictable_full_device_leaves))

    def rules() -> set[str]:
        return {v.invariant for v in hm.check_invariants(c)}

    held = leaf.full_lock_ref
    leaf.full_lock_ref = leaf.parent.full_lock_ref + 1  # more than the path above it holds
    assert "U-LOCK" in rules()
    leaf.full_lock_ref = held
    c.evictable_full_device_leaves.discard(leaf)
    assert rules() == {"U-LEAF"}
    c.evictable_full_device_leaves.add(leaf)
    from himamba.lens.legacy_trees import list_order

    order = list_order(c.mamba_lru_list)
    c.mamba_lru_list.reset_node_mru(order[-1])  # the oldest state moved to the MRU end, its time kept
    assert rules() == {"U-LRU-TIME"}
    for node in reversed(order):
        c.mamba_lru_list.reset_node_mru(node)
    parent = leaf.parent
    leaf.parent = c.root_node
    assert "U-PARENT" in rules()
    leaf.parent = parent
    assert hm.check_invariants(c) == []


@needs_0511
def test_recording_the_real_0511_code_wraps_one_instance_only() -> None:
    from himamba.differential.sides import UpstreamSide
    from himamba.lens.replay import drive

    side = UpstreamSide(hm.CacheConfig(**CONFIG), True)
    cls_evict = type(side.cache).evict
    rep = drive(side, SCRIPT, "sglang-0.5.11")
    kinds = [s.kind for s in rep.recorder.steps]
    assert "op_begin" in kinds and "split" in kinds and "demoted" in kinds
    assert {s.op for s in rep.recorder.steps} >= {"match_prefix", "insert", "evict"}
    assert "evict" not in vars(side.cache)  # unwrapped after the recorder left
    assert type(side.cache).evict is cls_evict  # the class was never touched


@needs_0511
def test_three_tree_recordings_step_and_compare(tmp_path) -> None:
    ours = replay_on(SCRIPT, "himamba")
    theirs = replay_on(SCRIPT, "sglang-0.5.11")
    assert theirs.failure is None and len(theirs.recorder.steps) > 0
    page = theirs.recorder.to_html(tmp_path / "upstream.html")
    assert "<svg" in page.read_text(encoding="utf-8")
    assert hm.compare(ours.recorder, theirs.recorder) is not None
    back = Replay.from_dict(json.loads(json.dumps(theirs.to_dict())))
    assert [s.text for s in back.recorder.steps] == [s.text for s in theirs.recorder.steps]


# -- SGLang 0.5.23, through its environment ---------------------------------------------------------
@pytest.fixture(scope="module")
def remote_answers() -> dict:
    """One start of the 0.5.23 environment for every 0.5.23 test: replays and damage on both cores."""
    requests = [{"what": "replay", "script": SCRIPT, "core": core, "skip": ["lock", "unlock"]} for core in CORES]
    requests += [{"what": "damage", "core": core} for core in CORES]
    answers = remote.call({"what": "batch", "requests": requests}, timeout=240)["answers"]
    return {"replay": dict(zip(CORES, answers[:2], strict=True)), "damage": dict(zip(CORES, answers[2:], strict=True))}


CORES = ("python", "rust")


@needs_0523
@pytest.mark.parametrize("core", CORES)
def test_0523_unified_tree_replays_remotely(core: str, remote_answers: dict) -> None:
    rep = Replay.from_dict(remote_answers["replay"][core]["replay"])
    assert rep.failure is None
    last = rep.recorder.steps[-1].snapshot
    assert last.settings["core"] == core and last.settings["cache"] == "UnifiedRadixCache"
    assert "full" not in last.lru  # absent, not empty
    assert any("full LRU" in a for a in last.settings["absent"])
    assert (1, 2) in {v.key for v in last.nodes}  # the split parent keeps its FULL KV: a device leaf
    assert any((5, 6) in {v.key for v in s.snapshot.nodes} for s in rep.recorder.steps)  # keys read back
    assert 'class="node"' in hm.to_svg(last)
    kinds = {s.kind for s in rep.recorder.steps}
    assert {"op_begin", "op_end", "leaf_evicted"} <= kinds
    if core == "python":
        assert "mamba" in last.lru and "device leaves" in last.lru
        assert {"split", "cascade"} <= kinds


@needs_0523
@pytest.mark.parametrize("core", CORES)
def test_0523_invariants_healthy_and_damaged(core: str, remote_answers: dict) -> None:
    found = remote_answers["damage"][core]["found"]
    assert found["healthy"] == []
    if core == "python":
        assert "U-LOCK" in found["lock"] and found["leaf"] == ["U-LEAF"]
        assert found["lru"] == ["U-LRU"] and found["parent"] == ["U-PARENT"] and found["healed"] == []



@needs_0511
def test_cli_replays_one_script_on_the_tree_named(tmp_path, capsys) -> None:
    from himamba import cli

    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    page = tmp_path / "steps.html"
    assert cli.main(["replay", str(script), "--on", "sglang-0.5.11", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "on sglang-0.5.11: clean" in out and "split #" in out
    assert "<svg" in page.read_text(encoding="utf-8")
    assert cli.main(["replay", str(script), "--on", "sglang-0.5.11", "--html", str(page)]) != 0  # no overwrite
