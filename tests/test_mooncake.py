"""Mooncake traces in block mode: reader errors, ceilings, checkpoint policies, the replay, sizing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import himamba as hm
from himamba.cli import main as cli
from himamba.memory.sizing import size_pools
from himamba.sim import mooncake, protocol
from himamba.sim.trace_io import TraceFormatError

SYNTHETIC = Path(__file__).resolve().parents[2] / "shared" / "traces" / "synthetic_trace.jsonl"


def line(ts=0, n_in=1024, n_out=10, ids=(1, 2)) -> str:
    return json.dumps({"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": list(ids)})


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


BAD_LINES = {
    "not json": ("{timestamp", "not valid JSON"),
    "a list": ("[1, 2]", "must be a JSON object"),
    "missing hash_ids": (json.dumps({"timestamp": 0, "input_length": 5, "output_length": 1}), "lacks ['hash_ids']"),
    "negative input": (line(n_in=-5), "input_length must be a non-negative int"),
    "float output": (line(n_out=1.5), "output_length must be a non-negative int"),
    "string timestamp": (line(ts="0"), "timestamp must be"),
    "nan timestamp": ('{"timestamp": NaN, "input_length": 10, "output_length": 1, "hash_ids": [1]}', "timestamp must be"),
    "negative hash": (line(ids=(1, -2)), "hash_ids[1] is -2"),
    "bool hash": (line(ids=(True, 2)), "hash_ids[0] is True"),
    "huge hash": (line(ids=(1, 2**64)), f"hash_ids[1] is {2**64}: hash ids must be ints in 0..2**63-1"),
    "too few ids": (line(n_in=1025, ids=(1, 2)), "needs 3 hash ids"),
    "too many ids": (line(n_in=512, ids=(1, 2)), "needs 1 hash ids"),
    "empty prompt": (line(n_in=0, ids=()), "at least one"),
}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_bad_line_names_file_line_and_problem(tmp_path: Path, name: str) -> None:
    text, words = BAD_LINES[name]
    path = write(tmp_path, [line(), "", text])
    with pytest.raises(TraceFormatError) as err:
        mooncake.load_mooncake(path)
    assert f"{path}:3:" in str(err.value) and words in str(err.value)


def test_lengths_only_count_so_a_huge_output_costs_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, [line(n_out=10**18), line(n_in=513, ids=(1, 3))])
    reqs = mooncake.load_mooncake(path)
    assert [r.output_length for r in reqs] == [10**18, 10]
    assert [r.full_blocks for r in reqs] == [2, 1] and reqs[1].tokens_in(2) == 513
    assert protocol.block_items(reqs, "page_aligned")[1] == ([1, 3], 2, 1, 513)
    assert mooncake.load_mooncake(path, limit=1)[0].hash_ids == (1, 2)


def test_ceilings_of_a_small_trace_by_hand() -> None:
    R = mooncake.MooncakeRequest
    trace = [
        R(0, 1500, 1, (1, 2, 3)),      # nothing earlier
        R(1, 1536, 1, (1, 2, 3)),      # same ids: attention 3, sequence_end 3, page_aligned 2 (first's full blocks)
        R(2, 2000, 1, (1, 2, 4, 5)),   # attention 2, sequence_end 0, page_aligned 2
        R(3, 100, 1, (1,)),            # attention 1, no full block anywhere ends at 1: 0, 0
    ]
    c = mooncake.ceilings(trace)
    assert c["requests"] == 4 and c["prompt_blocks"] == 11 and c["prompt_tokens"] == 5136
    assert c["ceiling_attention"] == round(6 / 11, 6)
    assert c["ceiling_sequence_end"] == round(3 / 11, 6)
    assert c["ceiling_page_aligned"] == round(4 / 11, 6)
    assert c["ceiling_sequence_end_tokens"] == round(1536 / 5136, 6)
    assert c["ceiling_attention_tokens"] == round((1536 + 1024 + 100) / 5136, 6)


@pytest.mark.parametrize("source", ["synthetic", "generated"])
@pytest.mark.parametrize("checkpoint", mooncake.CHECKPOINTS)
def test_with_pools_larger_than_the_trace_the_hit_rate_is_the_ceiling(checkpoint: str, source: str) -> None:
    if source == "synthetic" and not SYNTHETIC.exists():
        pytest.skip("the Mooncake synthetic trace is not beside the repository")
    trace = mooncake.load_mooncake(SYNTHETIC) if source == "synthetic" else mooncake.generate(1500, seed=3)
    items = protocol.block_items(trace, checkpoint)
    blocks = sum(len(r.hash_ids) for r in trace)
    # Twice the trace: the protocol's sweep keeps a quarter of each pool free, so pools merely one
    # slot larger than the trace would evict states near its end.
    cache = protocol.make_cache(2 * blocks + 1, 2 * len(trace) + 1)
    figures = protocol.replay(cache, items)
    c = mooncake.ceilings(trace)
    assert figures["hit_rate"] == c[f"ceiling_{checkpoint}"] > 0
    assert figures["hit_rate_tokens"] == c[f"ceiling_{checkpoint}_tokens"]
    assert figures["evicted_blocks"] == 0 and figures["evicted_states"] == 0
    assert figures["accounting_ok"] and figures["violations"] == 0


def test_page_aligned_inserts_full_blocks_only_and_nothing_without_one() -> None:
    R = mooncake.MooncakeRequest
    cache = protocol.make_cache(64, 8)
    protocol.replay(cache, protocol.block_items([R(0, 1100, 1, (7, 8, 9)), R(0, 300, 1, (5,))], "page_aligned"))
    assert cache.node_at([7, 8]) is not None and cache.node_at([7, 8, 9]) is None and cache.node_at([5]) is None
    assert cache.node_at([7, 8]).mamba_value is not None and cache.full_evictable_size() == 2
    assert hm.check_invariants(cache, held_kv=0, held_states=0) == []


@pytest.mark.parametrize("tiered", [False, True])
def test_bounded_pools_evict_and_still_balance(tiered: bool) -> None:
    trace = mooncake.generate(400, seed=1)
    cache = protocol.make_cache(150, 12, tiered=tiered, host_kv=450, host_states=40)
    f = protocol.replay(cache, protocol.block_items(trace, "page_aligned"))
    ceiling = mooncake.ceilings(trace)["ceiling_page_aligned"]
    assert f["evicted_blocks"] > 0 and f["evicted_states"] > 0 and 0 < f["hit_rate"] < ceiling
    assert f["accounting_ok"] and f["violations"] == 0
    if tiered:
        assert f["host_hit_blocks"] > 0 and f["hit_rate"] == round((f["device_hit_blocks"] + f["host_hit_blocks"]) / f["prompt_blocks"], 6)
        assert cache.cache_controller.kv_slots_device_to_host > 0


def test_trace_stats_prints_one_json_line(capsys, tmp_path: Path) -> None:
    path = mooncake.save(mooncake.generate(300, seed=2), tmp_path / "g.jsonl")
    assert cli(["trace", "stats", "--format", "mooncake", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {**mooncake.ceilings(mooncake.load_mooncake(path)), **{k: out[k] for k in ("output_tokens", "full_blocks", "duration_s")}}
    assert out["requests"] == 300 and out["ceiling_attention"] >= out["ceiling_page_aligned"] >= out["ceiling_sequence_end"]


def test_bench_replay_in_block_mode(capsys, tmp_path: Path) -> None:
    path = mooncake.save(mooncake.generate(300, seed=2), tmp_path / "g.jsonl")
    code = cli(["bench", "replay", "--trace", str(path), "--format", "mooncake", "--checkpoint", "page_aligned",
                "--device-blocks", "200", "--state-slots", "10", "--tiered", "--host-blocks", "600",
                "--host-state-slots", "30", "--repeat", "1"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["accounting_ok"] and out["checkpoint"] == "page_aligned" and out["runs"] == 1
    assert {"hit_rate", "requests_per_s", "evicted_blocks", "evicted_states", "device_hit_blocks", "host_hit_blocks",
            "ceiling", "model_bytes_device_to_host"} <= set(out)
    qwen = hm.ModelSpec.qwen3_next_80b_a3b()
    assert out["model_bytes_device_to_host"] % qwen.kv_bytes_per_token == 0


@pytest.mark.parametrize("args, words", [
    (["--format", "mooncake"], "needs --device-blocks"),
    (["--device-blocks", "10"], "use it with --format mooncake"),
    (["--format", "mooncake", "--device-blocks", "0"], "--device-blocks must be at least 1"),
    (["--host-state-slots", "4"], "need --tiered"),
])
def test_bench_replay_flags_are_checked(capsys, tmp_path: Path, args: list[str], words: str) -> None:
    path = mooncake.save(mooncake.generate(5), tmp_path / "g.jsonl")
    assert cli(["bench", "replay", "--trace", str(path), *args]) == 2
    assert words in capsys.readouterr().err


def test_presets_carry_the_reference_sizes() -> None:
    qwen = hm.ModelSpec.preset("qwen3-next-80b-a3b")
    assert qwen.kv_bytes_per_token == 24 * 1024
    assert qwen.state_bytes_per_slot == 36 * (2 * 2**20 + 48 * 1024)
    assert hm.ModelSpec.preset("nemotron-h-8b").state_bytes_per_slot == 24 * (4 * 2**20 + 60 * 1024)
    assert hm.ModelSpec.preset("jamba-v0.1").kv_bytes_per_token == 16 * 1024
    falcon = hm.ModelSpec.preset("falcon-h1")
    assert falcon.num_full_layers == falcon.num_mamba_layers == 32
    with pytest.raises(hm.InvalidInputError, match="unknown model preset 'gpt'"):
        hm.ModelSpec.preset("gpt")


def test_sizing_one_h200_for_qwen3_next() -> None:
    qwen = hm.ModelSpec.qwen3_next_80b_a3b()
    s = size_pools(qwen, gpu_gb=141, weight_bytes_per_param=1, cache_fraction=0.9, state_share=0.5, host_gb=100)
    cache = int((141e9 - 80e9) * 0.9)
    assert s.cache_bytes == cache and s.block_bytes == 512 * 24 * 1024
    assert s.device_blocks == (cache // 2) // s.block_bytes and s.device_state_slots == (cache // 2) // qwen.state_bytes_per_slot
    assert s.host_blocks == 50 * 10**9 // s.block_bytes and s.host_state_slots == 50 * 10**9 // qwen.state_bytes_per_slot
    assert s.cache_config()["device_kv_tokens"] == s.device_blocks
    with pytest.raises(hm.InvalidInputError, match="do not fit in 141 GB"):
        size_pools(qwen, gpu_gb=141)  # bf16 weights: 160 GB
    with pytest.raises(hm.InvalidInputError, match="state_share must be a number in"):
        size_pools(qwen, weight_bytes_per_param=1, state_share=1.5)


def _compare_upstream():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "compare_upstream.py"
    spec = importlib.util.spec_from_file_location("compare_upstream", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _token_trace(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.jsonl"
    lines = [json.dumps({"prompt_len": 8 * i + 4, "tokens": list(range(1, 8 * i + 9))}) for i in range(60)]  # turns
    path.write_text("\n".join(lines) + "\n")
    return path


def test_compare_upstream_skips_with_a_message_without_sglang(capsys, tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    bench = _compare_upstream()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sglang" else real(name, *a))
    assert bench.main(["--trace", str(_token_trace(tmp_path))]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "SGLang is not installed: nothing to compare against" in out.err


def test_compare_upstream_agrees_with_sglang_when_installed(capsys, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("sglang") is None:
        pytest.skip("SGLang 0.5.11 is not installed")
    assert _compare_upstream().main(["--trace", str(_token_trace(tmp_path)), "--repeat", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["himamba_hit_rate"] == out["sglang_hit_rate"] > 0 and out["himamba_evicted"] == out["sglang_evicted"]


def test_bench_replay_needs_no_checkout(capsys, tmp_path: Path, monkeypatch) -> None:
    import himamba.sim.bench_replay as bench

    assert Path(bench.__file__).resolve().parent == Path(hm.__file__).resolve().parent / "sim"
    monkeypatch.chdir(tmp_path)
    path = mooncake.save(mooncake.generate(50, seed=4), tmp_path / "g.jsonl")
    assert cli(["bench", "replay", "--trace", str(path), "--format", "mooncake", "--device-blocks", "500",
                "--repeat", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 50


def test_replay_checks_items_it_did_not_make() -> None:
    """Items from token_items / block_items are checked once, when made; any other sequence of
    items is checked by replay before the first request, naming the bad item."""
    items = protocol.token_items([(2, [1, 2, 3]), (1, [1, 5])])
    assert isinstance(items, protocol.CheckedItems) and protocol.check_items(items) is items
    with pytest.raises(hm.InvalidInputError, match=r"request 1 tokens\[1\]"):
        protocol.token_items([(1, [1]), (1, [1, -2])])
    cache = protocol.make_cache(64, 8)
    for bad, words in [([([1, 2**63], 1, 2, None)], r"replay item 0 key\[1\]"),
                       ([([1, 2], 1, 3, None)], "prompt_len and insert_len"), ([(1, 2)], "must be")]:
        with pytest.raises(hm.InvalidInputError, match=words):
            protocol.replay(cache, bad)
    assert cache.kv_pool.available_size() == 64 and cache.num_nodes() == 0
    figures = protocol.replay(cache, [([1, 2, 3], 2, 3, None), ([1, 2, 3, 4], 3, 4, None)])
    assert figures["accounting_ok"] and figures["violations"] == 0 and figures["hit_rate"] == 0.6
