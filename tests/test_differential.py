"""The differential runner against SGLang 0.5.11 itself (``make differential`` installs it; the
tests that need it skip where it is absent)."""

from __future__ import annotations

import inspect
import re

import pytest

from himamba import cli
from himamba.differential import standins, upstream
from himamba.differential.runner import (
    compare_script,
    differential_scripts,
    explain,
    run_differential,
)
from himamba.errors import InvalidInputError

needs_upstream = pytest.mark.skipif(not upstream.upstream_available(),
                                    reason="SGLang 0.5.11 is not installed (make differential)")
PROFILE = ["sglang-0.5.11"]


def script(ops: list[dict], cache: str = "tiered", legacy=(), **config) -> dict:
    base = {"device": "cpu", "page_size": 1, "device_kv_tokens": 32, "host_kv_tokens": 16, "device_mamba_slots": 4,
            "host_mamba_slots": 10, "write_policy": "write_through", "legacy": sorted(legacy), "enable_storage": False}
    return {"cache": cache, "ops": ops, "config": {**base, **config}}


def test_scripts_alternate_caches_and_rotate_policies():
    scripts = differential_scripts(6, 20, seed=3)
    assert [s["cache"] for s in scripts] == ["device", "tiered"] * 3
    assert [s["config"]["write_policy"] for s in scripts] == ["write_through"] * 2 + ["write_through_selective"] * 2 + ["write_back"] * 2
    assert all(len(s["ops"]) == 20 and not s["manual_acks"] and not s["config"]["enable_storage"] for s in scripts)
    assert differential_scripts(6, 20, seed=3) == scripts
    assert {s["cache"] for s in differential_scripts(4, 5, cache="tiered")} == {"tiered"}


@pytest.mark.parametrize("kwargs", [{"seqs": 0}, {"ops": -1}, {"cache": "both-ways"}, {"legacy": ["B99"]}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(InvalidInputError):
        differential_scripts(**{"seqs": 2, "ops": 5, **kwargs})


def test_missing_upstream_names_the_make_target(monkeypatch, capsys):
    monkeypatch.setattr(upstream, "upstream_available", lambda: False)
    with pytest.raises(upstream.UpstreamUnavailable, match="make differential"):
        upstream.require_upstream()
    assert cli.main(["differential", "--seqs", "1", "--ops", "5", "--no-progress"]) == 2
    assert "make differential" in capsys.readouterr().err


def test_every_stand_in_says_it_is_one():
    assert "stand-in" in standins.__doc__.lower()
    kv_cls, mamba_cls = (standins._host_pool_classes() if upstream.upstream_available() else (None, None))
    objects = [standins._StandInModule, standins._StandInAck, standins._register_image_processor_standin,
               standins.make_standin_controller, upstream._ServerArgs, standins.install_import_standins]
    objects += [c for c in (kv_cls, mamba_cls) if c is not None]
    for obj in objects:
        assert "stand-in" in (inspect.getdoc(obj) or "").lower(), obj


@needs_upstream
def test_smoke_profile_agrees_on_every_operation():
    """About 60 seeded sequences, half device, half tiered: with the profile, no divergence."""
    report = run_differential(seqs=60, ops=50, seed=11, legacy=PROFILE, do_shrink=False, do_explain=False)
    assert report.sequences == {"device": 30, "tiered": 30}
    assert report.divergences == [], "\n".join(d.describe() for d in report.divergences)
    assert report.agree == report.ops and sum(report.ops.values()) > 2000


STATE_SHORT = [{"op": "chunked", "tokens": [30, 19, 32, 28], "chunk": 1}, {"op": "request", "tokens": [30]}]
LOAD_PIN = [{"op": "request", "tokens": [18]}, {"op": "events"}, {"op": "evict_mamba", "n": 1},
            {"op": "request", "tokens": [31]}, {"op": "request", "tokens": [18]}]


LOAD_FROM_ANCESTOR = [{"op": "request", "tokens": [1, 2]}, {"op": "request", "tokens": [1, 2]},
                      {"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "events"}, {"op": "evict_mamba", "n": 1},
                      {"op": "request", "tokens": [1, 2, 3, 4, 5]}]


@needs_upstream
@pytest.mark.parametrize(("ops", "what", "switch", "config"),
                         [(STATE_SHORT, "exception", "B19", {"host_mamba_slots": 4}), (LOAD_PIN, "lru", "B14", {}),
                          (LOAD_FROM_ANCESTOR, "tree", "B23", {"write_policy": "write_through_selective"})],
                         ids=["failure_path", "load_back_pin", "load_back_from_ancestor_25088"])
def test_defaults_diverge_and_the_divergence_names_its_switch(ops, what, switch, config):
    s = script(ops, **config)
    agreed, divergence = compare_script(s)
    assert divergence is not None and divergence.what == what and divergence.step == len(ops) - 1
    assert agreed == len(ops) - 1
    assert explain(s) == [switch]
    assert compare_script(script(ops, legacy=PROFILE, **config))[1] is None
    assert compare_script(script(ops, legacy=[switch], **config))[1] is None


LOCK_ON_TOMBSTONE_THEN_LOAD = [
    {"op": "request", "tokens": [1, 2, 3]}, {"op": "request", "tokens": [1, 2, 3, 4, 5]}, {"op": "events"},
    {"op": "evict_mamba", "n": 1}, {"op": "lock", "tokens": [1, 2, 3], "exact": True},
    {"op": "load", "tokens": [1, 2, 3], "quota": None}, {"op": "events"}, {"op": "evict_mamba", "n": 4}]


@needs_upstream
def test_27147_the_real_0511_unlocks_a_state_revived_under_a_tombstone_lock():
    """#27147 on SGLang 0.5.11 itself: with B10 (and B14, which the load-back also meets) himamba
    agrees on every operation, the final evict_mamba taking the revived state included; with B14
    alone the two part where the load's release leaves the state unlocked (B10)."""
    agreed, divergence = compare_script(script(LOCK_ON_TOMBSTONE_THEN_LOAD, legacy=["B10", "B14"]))
    assert divergence is None and agreed == len(LOCK_ON_TOMBSTONE_THEN_LOAD)
    agreed, divergence = compare_script(script(LOCK_ON_TOMBSTONE_THEN_LOAD, legacy=["B14"]))
    assert divergence is not None and divergence.step == 6 and divergence.what == "tree"
    assert explain(script(LOCK_ON_TOMBSTONE_THEN_LOAD)) == ["B10+B14"]


@needs_upstream
def test_cli_prints_agreement_and_exit_status(capsys):
    assert cli.main(["differential", "--seqs", "2", "--ops", "30", "--legacy", "sglang-0.5.11", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^agree (\d+)/\1 ops, 0 divergence\(s\)$", out, re.M), out
    assert cli.main(["differential", "--seqs", "2", "--ops", "12", "--seed", "0", "--cache", "tiered",
                     "--no-progress"]) in (0, 1)
