"""The fuzzer's contract: episodes, workers, pool scale, and its targets on the legacy switches.

* A run is cut into episodes (a fresh cache each); the first episode uses the run's seed.
* ``jobs`` changes where episodes run, not what is reported.
* ``scale`` grows the trees.
* A script runs under ``torch.inference_mode()``, and the mode ends with the run.
* With each legacy switch on by itself, seed 0 finds a failure within 10,000 operations, and the
  shrunk script (at most 12 operations) fails the same way when replayed.
"""

from __future__ import annotations

import json

import pytest
import torch

from himamba.errors import InvalidInputError
from himamba.sim.fuzz import (
    DEFAULT_EPISODE,
    TARGET_PROFILES,
    episode_length,
    episode_seed,
    fuzz,
    make_script,
    replay,
    run_script,
)


def test_a_run_is_cut_into_episodes_of_fresh_caches() -> None:
    report = fuzz(seed=5, ops=1_250, episode=500, integrity_every=10)
    assert report.failure is None
    assert report.ops_run == 1_250
    assert report.extras["episodes"] == 3 and report.extras["episode"] == 2
    assert len(report.script["ops"]) == 250  # the last episode is the remainder
    assert report.script["episode"] == 2 and report.script["seed"] == episode_seed(5, 2)
    assert sum(report.counts.values()) == 1_250


def test_a_script_runs_in_inference_mode_and_leaves_it() -> None:
    modes: list[bool] = []
    report = run_script(make_script(3, 40), progress=lambda i: modes.append(torch.is_inference_mode_enabled()))
    assert report.failure is None and report.ops_run == 40
    assert modes == [True] * 40
    assert not torch.is_inference_mode_enabled()


def test_episode_seeds() -> None:
    assert episode_seed(7, 0) == 7
    seeds = {episode_seed(s, e) for s in range(20) for e in range(1, 50)}
    assert len(seeds) == 20 * 49  # no two episodes of these runs share a seed
    assert episode_seed(3, 4) == 1_071_754_861_863  # pinned: saved runs name these seeds


def test_episode_lengths() -> None:
    assert episode_length() == DEFAULT_EPISODE
    assert episode_length({"B8"}) == TARGET_PROFILES["B8"]["episode"]
    assert episode_length({"B8"}, 40) == 40
    assert episode_length({"B1", "B8"}) == DEFAULT_EPISODE


@pytest.mark.parametrize("kwargs", [{"ops": 0}, {"jobs": 0}, {"episode": 0}, {"scale": 0}])
def test_bad_run_parameters_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        fuzz(**{"ops": 10, **kwargs})


def test_the_first_failing_episode_wins_whatever_the_number_of_jobs() -> None:
    one = fuzz(seed=1, ops=3_000, legacy={"B8"}, do_shrink=False)
    two = fuzz(seed=1, ops=3_000, legacy={"B8"}, do_shrink=False, jobs=2)
    assert one.failure is not None and one.extras["episodes"] > 1
    assert (two.ops_run, two.failure, two.script, two.extras["episodes"]) == (
        one.ops_run, one.failure, one.script, one.extras["episodes"])


def test_a_clean_parallel_run_reports_what_one_process_reports() -> None:
    """Workers send back only failing scripts; the last episode's script is made again."""
    one = fuzz(seed=2, ops=1_000, episode=200, integrity_every=0)
    two = fuzz(seed=2, ops=1_000, episode=200, integrity_every=0, jobs=2)
    assert one.failure is None and two.failure is None
    assert (two.ops_run, two.counts, two.script, two.extras["episodes"], two.extras["episode"]) == (
        one.ops_run, one.counts, one.script, 5, 4)
    assert two.extras["nodes"] == pytest.approx(one.extras["nodes"])


def test_scale_grows_the_trees() -> None:
    small = fuzz(seed=0, ops=1_000, episode=1_000, integrity_every=0)
    big = fuzz(seed=0, ops=1_000, episode=1_000, integrity_every=0, scale=12)
    assert small.failure is None and big.failure is None
    assert small.extras["nodes"] < 20 < 3 * small.extras["nodes"] < big.extras["nodes"]
    config = make_script(0, 1, scale=12)["config"]
    assert config["device_kv_tokens"] == 12 * make_script(0, 1)["config"]["device_kv_tokens"]


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["B1", "B2", "B3", "B4", "B6", "B7", "B8", "B23"])
def test_each_legacy_switch_is_found_and_shrunk(bug: str) -> None:
    report = fuzz(seed=0, ops=10_000, legacy={bug})
    assert report.failure is not None and report.ops_run <= 10_000
    shrunk = report.shrunk
    assert 1 <= len(shrunk["ops"]) <= 12, json.dumps(shrunk["ops"])
    again = replay(json.dumps(shrunk))
    assert again.failure is not None and again.failure.kind == report.failure.kind
    # and the same script with the switch off runs clean
    fixed = replay({**shrunk, "config": {**shrunk["config"], "legacy": []}})
    assert fixed.failure is None, fixed.failure
