"""The policy lab: admission x eviction x sizes in one call, here or on Dask, into a tidy table,
a plot and ``himamba bench policies``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import himamba as hm
from himamba.cli import main as cli
from himamba.sim import mooncake, policy_replay, policy_sweep
from himamba.sim.metrics import plot_policies

SIZES = [policy_sweep.pool_size("small", 120, 16), policy_sweep.pool_size("large", 400, 48),
         policy_sweep.pool_size("tiered", 120, 16, 360, 48)]


@pytest.fixture(scope="module")
def items():
    return policy_replay.block_items(mooncake.generate(400, seed=4))


def test_one_call_runs_every_pair_at_every_size_into_a_tidy_table(items) -> None:
    admissions = ["page_aligned", "branch_point", "every_n:2"]
    frame = policy_sweep.policy_sweep(items, admissions=admissions, evictions=["lru"], sizes=SIZES, progress=False)
    assert frame[["admission", "eviction", "size"]].values.tolist() == [
        [a, "lru", s["size"]] for a in admissions for s in SIZES]
    assert frame["error"].isna().all() and frame["accounting_ok"].all() and (frame["violations"] == 0).all()
    assert ((frame["hit_rate"] > 0) & (frame["flops_saved"] > 0) & (frame["kv_bytes_kept"] > 0)).all()
    tiered = frame[frame["size"] == "tiered"]
    assert (tiered["host_hit_elements"] > 0).any() and (frame.loc[frame["size"] != "tiered", "host_hit_elements"] == 0).all()
    # each row is the replay of that configuration on a fresh cache
    direct = policy_replay.replay(policy_replay.make_cache(400, 48), items, "branch_point")
    row = frame[(frame["admission"] == "branch_point") & (frame["size"] == "large")].iloc[0]
    assert (row["hit_rate"], row["flops_saved"], row["state_bytes_kept"]) == \
        (direct["hit_rate"], direct["flops_saved"], direct["state_bytes_kept"])


def test_a_configuration_that_fails_is_a_row_with_its_error(items) -> None:
    frame = policy_sweep.policy_sweep(items, admissions=["sequence_end"], progress=False,
                                      sizes=[policy_sweep.pool_size("tiny", 2, 1), SIZES[0]])
    assert "cannot allocate" in frame.loc[0, "error"] and pd.isna(frame.loc[1, "error"])


@pytest.mark.parametrize("kwargs, words", [
    ({"admissions": ["lru"]}, "admission must be one of"),
    ({"evictions": ["nonsense"]}, "eviction"),
    ({"sizes": [{"device_kv": 10}]}, "device_kv and device_states"),
    ({"sizes": [{"size": "x", "device_kv": 10, "device_states": 2, "host": 3}]}, "unknown size field"),
    ({"sizes": [{"size": "x", "device_kv": 0, "device_states": 2}]}, "device_kv"),
    ({"admissions": "branch_point"}, "lists of names"),
])
def test_bad_names_and_sizes_are_refused_before_anything_runs(items, kwargs: dict, words: str) -> None:
    with pytest.raises(hm.InvalidInputError, match=words):
        policy_sweep.policy_sweep(items, **{"sizes": SIZES, **kwargs})


def test_on_a_dask_cluster_by_address_the_table_is_the_same(items) -> None:
    import logging

    from distributed import LocalCluster

    args = {"admissions": ["branch_point"], "sizes": SIZES[:2], "progress": False}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        remote = policy_sweep.policy_sweep(items, address=cluster.scheduler_address, **args)
    here = policy_sweep.policy_sweep(items, **args)
    timing = ["seconds", "requests_per_cpu_s"]
    pd.testing.assert_frame_equal(remote.drop(columns=timing), here.drop(columns=timing))


def test_the_plot_has_a_panel_per_figure_and_a_line_per_pair(items) -> None:
    frame = policy_sweep.policy_sweep(items, admissions=["page_aligned", "branch_point"], sizes=SIZES[:2], progress=False)
    fig = plot_policies(frame)
    assert [ax.get_ylabel() for ax in fig.axes] == ["hit rate", "prefill FLOPs saved"]
    assert [line.get_label() for line in fig.axes[0].lines] == ["page_aligned + lru", "branch_point + lru"]
    assert list(fig.axes[0].lines[1].get_ydata()) == frame.loc[frame["admission"] == "branch_point", "hit_rate"].tolist()


def test_h200_sizes_are_notebook_08s() -> None:
    sizes = policy_sweep.h200_sizes((0, 256))
    assert [s["size"] for s in sizes] == ["H200", "H200 + 256 GB host"]
    assert (sizes[0]["device_kv"], sizes[0]["device_states"], sizes[0]["host_kv"]) == (2296, 336, 0)
    assert sizes[1]["device_kv"] == 2296 and sizes[1]["host_kv"] > 0


def test_bench_policies_prints_a_row_per_configuration(capsys, tmp_path: Path) -> None:
    path = mooncake.save(mooncake.generate(200, seed=2), tmp_path / "g.jsonl")
    code = cli(["bench", "policies", "--trace", str(path), "--admission", "branch_point", "--admission", "every_n:2",
                "--size", "a=120,16", "--size", "b b=120,16,360,48", "--out", str(tmp_path / "t.csv"), "--no-progress"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and [(r["admission"], r["size"]) for r in rows] == [
        ("branch_point", "a"), ("branch_point", "b b"), ("every_n:2", "a"), ("every_n:2", "b b")]
    assert all(r["error"] is None and r["accounting_ok"] and type(r["evicted_kv"]) is int for r in rows)
    assert len(pd.read_csv(tmp_path / "t.csv")) == 4


@pytest.mark.parametrize("args, words", [
    (["--size", "a=1"], "--size must be LABEL=KV,STATES"),
    (["--admission", "every_n:0"], "admission must be one of"),
    (["--limit", "0"], "--limit must be at least 1"),
])
def test_bench_policies_refuses_bad_arguments_in_one_line(capsys, tmp_path: Path, args: list[str], words: str) -> None:
    path = mooncake.save(mooncake.generate(5), tmp_path / "g.jsonl")
    assert cli(["bench", "policies", "--trace", str(path), *args]) == 2
    assert words in capsys.readouterr().err


def test_trace_stats_keeps_every_ceiling_and_adds_branch_point(capsys, tmp_path: Path) -> None:
    path = mooncake.save(mooncake.generate(300, seed=2), tmp_path / "g.jsonl")
    assert cli(["trace", "stats", "--format", "mooncake", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    for policy in ("attention", "sequence_end", "page_aligned", "branch_point"):
        assert f"ceiling_{policy}" in out and f"ceiling_{policy}_tokens" in out
    assert out["ceiling_page_aligned"] >= out["ceiling_branch_point"] > out["ceiling_sequence_end"]
