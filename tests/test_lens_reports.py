"""The 2026 bug reports replayed on SGLang 0.5.23 (Python and Rust tree cores) through the
lens, and on himamba for the equivalent (``himamba/lens/reports_2026.py``).

The 0.5.23 tests skip where ``make sglang-0.5.23`` has not built its environment; all their
replays come from one start of it.
"""

from __future__ import annotations

import pytest

from himamba.lens import remote
from himamba.lens.replay import Replay, replay_on
from himamba.lens.reports_2026 import HOST_TIER, PRESENT_IN_0523, REPORTS
from himamba.observe.snapshot import Snapshot

needs_0523 = pytest.mark.skipif(not remote.env_python().exists(),
                                reason="SGLang 0.5.23's environment is missing (make sglang-0.5.23)")
CORES = ("python", "rust")


@pytest.fixture(scope="module")
def on_0523() -> dict[tuple[int | str, str], Replay]:
    """Every report's script on both cores (a host-tier report also under write_back, keyed
    ``"33713 write_back"``), one start of the 0.5.23 environment."""
    keys: list[tuple[int | str, str]] = [(n, core) for n in REPORTS for core in CORES]
    keys += [(f"{n} write_back", core) for n in sorted(HOST_TIER) for core in CORES]
    requests = [_request(n, core) for n, core in keys]
    answers = remote.call({"what": "batch", "requests": requests}, timeout=240)["answers"]
    assert all(a.get("ok") for a in answers), [a.get("message") for a in answers if not a.get("ok")]
    return {key: Replay.from_dict(a["replay"]) for key, a in zip(keys, answers, strict=True)}


def _request(n: int | str, core: str) -> dict:
    number, _, policy = str(n).partition(" ")
    script = REPORTS[int(number)][0]()
    if policy:
        script = {**script, "config": {**script["config"], "write_policy": policy}}
    return remote.replay_request(script, core, host=int(number) in HOST_TIER)


def _keys(snap: Snapshot) -> dict[tuple[int, ...], object]:
    return {v.key: v for v in snap.nodes if not v.is_root}


def _last(rep: Replay) -> Snapshot:
    return rep.recorder.steps[-1].snapshot


def test_every_report_has_a_script_and_an_answer() -> None:
    assert set(REPORTS) == set(PRESENT_IN_0523) == {33713, 36696, 22935, 35821}
    for fn, equivalent in REPORTS.values():
        script = fn()
        assert set(script) == {"cache", "config", "ops"} and script["ops"] and equivalent
        assert str(fn.__doc__).lstrip().startswith("#")


# -- #22935 / B12: present --------------------------------------------------------------------------
def _assert_b12(rep: Replay) -> None:
    assert rep.failure is None
    assert [str(r) for r in rep.results[1:]] == ["(0, 0, (), ())", "(4, 0, (1, 2, 3, 4), (1, 2, 3, 4))"]
    nodes = _keys(_last(rep))
    upper, lower = nodes[(1, 2, 3)], nodes[(4,)]
    assert set(nodes) == {(1, 2, 3), (4,)} and lower.parent == upper.id
    assert upper.kv_device and not upper.state_device  # the split's upper node: KV, no state
    assert lower.state_device


@needs_0523
@pytest.mark.parametrize("core", CORES)
def test_22935_lookup_inside_an_edge_hits_nothing_on_0523(core: str, on_0523: dict) -> None:
    rep = on_0523[(22935, core)]
    _assert_b12(rep)
    if core == "python":
        assert "split" in {s.kind for s in rep.recorder.steps}


def test_22935_is_b12_on_himamba() -> None:
    _assert_b12(replay_on(REPORTS[22935][0](), "himamba"))


# -- #36696: absent; the split-made node is deleted cleanly ----------------------------------------
@needs_0523
@pytest.mark.parametrize("core", CORES)
def test_36696_split_node_is_found_when_deleted_on_0523(core: str, on_0523: dict) -> None:
    rep = on_0523[(36696, core)]
    assert rep.failure is None
    assert [str(r) for r in rep.results[2:]] == ["2", "2"]  # the stateless parent outlives its child
    after_split = [s.snapshot for s in rep.recorder.steps if (1, 2) in _keys(s.snapshot)]
    assert after_split and (3, 4) in _keys(after_split[0])
    last = _last(rep)
    assert _keys(last) == {} and last.pools["device KV"][0] == 0 and last.pools["device states"][0] == 0


def test_36696_on_himamba_the_cascade_takes_the_stateless_parent() -> None:
    rep = replay_on(REPORTS[36696][0](), "himamba")
    assert rep.failure is None and rep.results[2:] == [4, 0]
    assert _keys(_last(rep)) == {} and _last(rep).pools["device KV"][0] == 0


# -- #35821: fixed; no ghost node -----------------------------------------------------------------
def _assert_no_ghost(rep: Replay) -> None:
    assert rep.failure is None and str(rep.results[0]) == "(0, True)"
    assert all(v.key for s in rep.recorder.steps for v in s.snapshot.nodes if not v.is_root)
    last = _last(rep)
    assert set(_keys(last)) == {(1, 2)}
    assert last.pools["device states"][0] == 1  # the empty request's slot was given back


@needs_0523
@pytest.mark.parametrize("core", CORES)
def test_35821_empty_insert_makes_no_node_on_0523(core: str, on_0523: dict) -> None:
    rep = on_0523[(35821, core)]
    _assert_no_ghost(rep)
    if core == "python":
        assert [s.kind for s in rep.recorder.steps].count("node_created") == 1


def test_35821_on_himamba() -> None:
    _assert_no_ghost(replay_on(REPORTS[35821][0](), "himamba"))


# -- #33713: absent; the node and its state are demoted, then loaded back --------------------------
def _assert_demoted_and_loaded_back(rep: Replay) -> None:
    """Serve, back up, evict, look up, load back, look up (``r33713_script``)."""
    assert rep.failure is None
    assert [str(r) for r in rep.results] == [
        "(0, False)", "None", "4", "(0, 4, (), (1, 2, 3, 4))", "(4, (1, 2, 3, 4))", "None",
        "(4, 0, (1, 2, 3, 4), (1, 2, 3, 4))"]
    steps = [s.snapshot for s in rep.recorder.steps]
    born = next(i for i, snap in enumerate(steps) if (1, 2, 3, 4) in _keys(snap))
    assert all(set(_keys(snap)) == {(1, 2, 3, 4)} for snap in steps[born:])  # never pruned
    views = [_keys(snap)[(1, 2, 3, 4)] for snap in steps[born:]]
    host_only = [v for v in views if not v.kv_device and not v.state_device]
    assert host_only and all(v.kv_host and v.state_host for v in host_only)  # the state went with it
    evicted = next(snap for snap in steps if snap.pools["device KV"][0] == 0 and _keys(snap))
    assert evicted.pools["host KV"][0] == 4 and evicted.pools["host states"][0] == 1
    last = _last(rep)
    node = _keys(last)[(1, 2, 3, 4)]
    assert node.kv_device and node.state_device and node.kv_host
    assert last.pools["device KV"][0] == 4 and last.pools["device states"][0] == 1


@needs_0523
@pytest.mark.parametrize("policy", ("write_through", "write_back"))
@pytest.mark.parametrize("core", CORES)
def test_33713_demoted_with_its_state_and_loaded_back_on_0523(core: str, policy: str, on_0523: dict) -> None:
    rep = on_0523[(33713, core) if policy == "write_through" else ("33713 write_back", core)]
    assert _last(rep).settings["tiered"]
    _assert_demoted_and_loaded_back(rep)
    if core == "python":
        assert "demoted" in {s.kind for s in rep.recorder.steps}


def test_33713_himamba_demotes_with_the_state_and_finds_a_host_hit() -> None:
    rep = replay_on(REPORTS[33713][0](), "himamba")
    assert "demoted" in {s.kind for s in rep.recorder.steps}
    _assert_demoted_and_loaded_back(rep)
