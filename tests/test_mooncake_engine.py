"""Mooncake traces through the engine: checkpoint policies, arrival times, plots over time, sweeps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import himamba as hm
from himamba.sim import Engine, mooncake, plot_hits, plot_transfers, sweep
from himamba.sim.request import pack

TRACE = mooncake.generate(240, seed=5, mean_gap_ms=40.0)


def big_cache(tiered: bool = False):
    sizes = {"device_kv_tokens": 8000, "device_mamba_slots": 300}
    if tiered:
        return hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", host_kv_tokens=8000, host_mamba_slots=300, **sizes))
    return hm.MambaRadixCache(hm.CacheConfig(device="cpu", **sizes))


@pytest.mark.parametrize("checkpoint", mooncake.CHECKPOINTS)
def test_engine_with_big_pools_reaches_the_ceiling_of_its_policy(checkpoint: str) -> None:
    cache = big_cache()
    with Engine(cache, checkpoint=checkpoint, max_running=1, keep_steps=False) as engine:
        totals = engine.run(mooncake.to_requests(TRACE), progress=False).totals()
    ceiling = mooncake.ceilings(TRACE)[f"ceiling_{checkpoint}"]
    assert totals["prompt_tokens"] == sum(len(r.hash_ids) for r in TRACE)
    assert round(totals["hit_rate"], 6) == ceiling > 0
    assert hm.check_invariants(cache, held_kv=0, held_states=0) == []


def test_sequence_end_keeps_one_state_per_request_and_no_chunk_states() -> None:
    cache = big_cache()
    reqs = [hm.sim.SimRequest(tuple(range(1, 41)), (), None, 0)]
    with Engine(cache, checkpoint="sequence_end", chunk_size=8) as engine:
        engine.run(reqs, progress=False)
    nodes = [n for n in cache.nodes() if n is not cache.root_node]
    assert [len(n.key) for n in nodes] == [40] and nodes[0].mamba_value is not None
    with Engine(big_cache(), chunk_size=8) as engine:  # SGLang's default: a state at every chunk end
        engine.run(reqs, progress=False)
        assert sum(n.mamba_value is not None for n in engine.cache.nodes()) == 5


def test_arrivals_gate_admission_and_the_clock_jumps_over_idle_gaps() -> None:
    R = hm.sim.SimRequest
    reqs = [R((1, 2, 3), (), None, 0, 0.0), R((4, 5, 6), (), None, 1, 10.0), R((7, 8, 9), (), None, 2, 5000.0)]
    with Engine(big_cache(), step_ms=4.0, checkpoint="sequence_end") as engine:
        metrics = engine.run(reqs, progress=False)
    steps, done = metrics.steps, metrics.requests.set_index("rid")
    admitted_at = dict(zip(steps.index, steps["time_ms"], strict=True))
    assert [admitted_at[done.loc[i, "admitted_step"]] for i in range(3)] == [0.0, 10.0, 5000.0]  # idle: jumps to 10
    assert steps["time_ms"].is_monotonic_increasing and len(steps) == 3
    with pytest.raises(hm.InvalidInputError, match="step_ms must be None or a positive number"):
        Engine(big_cache(), step_ms=0)
    with pytest.raises(hm.InvalidInputError, match="checkpoint must be one of"):
        Engine(big_cache(), checkpoint="sometimes")


def test_max_running_limits_concurrency_on_the_clock() -> None:
    R = hm.sim.SimRequest
    reqs = [R(tuple(range(100 * i + 1, 100 * i + 60)), (), None, i, 0.0) for i in range(6)]
    with Engine(big_cache(), step_ms=1.0, max_running=2, chunk_size=16, checkpoint="sequence_end") as engine:
        steps = engine.run(reqs, progress=False).steps
    assert steps["running"].max() == 2 and steps["admitted"].sum() == 6


def test_tier_hits_and_bytes_over_time_plot_from_step_rows() -> None:
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", device_kv_tokens=300, device_mamba_slots=12,
                                                host_kv_tokens=3000, host_mamba_slots=200))
    with Engine(cache, checkpoint="page_aligned", step_ms=25.0, max_running=4) as engine:
        metrics = engine.run(mooncake.to_requests(TRACE), progress=False)
    steps, totals = metrics.steps, metrics.totals()
    assert totals["host_hit_tokens"] > 0 and totals["kv_slots_device_to_host"] > 0
    assert totals["states_host_to_device"] > 0 and steps["time_ms"].iloc[-1] > 0
    assert hm.check_invariants(cache, held_kv=0, held_states=0) == []
    qwen = hm.ModelSpec.qwen3_next_80b_a3b()
    fig = plot_transfers(steps, over="time", prices=(512 * qwen.kv_bytes_per_token, qwen.state_bytes_per_slot))
    assert isinstance(fig, Figure) and fig.axes[0].get_ylabel() == "GB"
    assert fig.axes[0].get_xlabel().startswith("time (s")
    line = fig.axes[0].get_lines()[0].get_ydata()
    expected = (totals["kv_slots_device_to_host"] * 512 * qwen.kv_bytes_per_token
                + totals["states_device_to_host"] * qwen.state_bytes_per_slot) / 1e9
    assert line[-1] == pytest.approx(expected)
    assert len(plot_hits(steps, over="time").axes[0].get_lines()) == 2


def test_packed_block_requests_keep_arrivals_and_aligned_lengths() -> None:
    reqs = mooncake.to_requests(TRACE[:20])
    packed = pack(reqs)
    assert list(packed) == reqs and packed[3].aligned_len == TRACE[3].full_blocks
    assert packed[5].arrival_ms == float(TRACE[5].timestamp)


def test_sweep_takes_a_mooncake_trace_file(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    path = mooncake.save(TRACE[:120], tmp_path / "m.jsonl")
    grid = {"checkpoint": ["sequence_end", "page_aligned"]}
    base = {"cache": "device", "device_kv_tokens": 8000, "device_mamba_slots": 300, "max_running": 1}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="1GiB",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        frame = sweep(grid, path, client=client, base=base, trace_format="mooncake", probe=False)
    c = mooncake.ceilings(TRACE[:120])
    assert frame["error"].isna().all() and (frame["violations"] == 0).all()
    assert [round(v, 6) for v in frame["hit_rate"]] == [c["ceiling_sequence_end"], c["ceiling_page_aligned"]]
    with pytest.raises(hm.InvalidInputError, match="trace_format must be"):
        sweep(grid, path, trace_format="csv")
