"""The ``himamba`` command line, and the bad files and arguments it must refuse in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from himamba.cli import main
from himamba.sim.fuzz import make_script


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("command", ["demo", "fuzz", "replay", "bench"])
def test_every_command_has_help(capsys, command: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: himamba " + command) and len(text.splitlines()) > 4


def test_demo_writes_one_offline_page_with_both_runs_side_by_side(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "demo", str(tmp_path / "b1"))
    assert code == 0
    assert [p.name for p in (tmp_path / "b1").iterdir()] == ["index.html"]
    page = (tmp_path / "b1" / "index.html").read_text()
    assert "<img" not in page and "http://" not in page.replace("http://www.w3.org", "")
    assert page.count('class="hm-legend"') == 1  # the legend once, not per step
    assert "B1 switch on (old code)" in page and "B1 fixed (default)" in page
    assert "parent does not have child key" in page and "host pin" in page
    assert "MatchResult(" not in page and "P #" in page
    assert page.count("<svg") >= 2 and 'class="hm-col hm-differs"' in page
    assert "B1 switch on (old code)" in out and "ended cleanly" in out


def test_fuzz_clean_run_exits_0(capsys) -> None:
    code, out, _ = run(capsys, "fuzz", "--ops", "300", "--seed", "3", "--no-progress")
    assert code == 0 and "clean" in out and "300 operations" in out


def test_fuzz_finds_b3_shrinks_it_and_replay_reproduces_it(capsys, tmp_path: Path) -> None:
    script = tmp_path / "b3.json"
    code, out, _ = run(capsys, "fuzz", "--legacy", "B3", "--ops", "3000", "--no-progress", "--out", str(script))
    assert code == 1 and "FAILED" in out and "I9" in out
    saved = json.loads(script.read_text())
    assert 1 <= len(saved["ops"]) <= 12 and saved["config"]["legacy"] == ["B3"]
    code, out, _ = run(capsys, "replay", str(script), "--svg", str(tmp_path / "svg"))
    assert code == 1 and "I9" in out
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert steps and len(list((tmp_path / "svg").glob("step_*.svg"))) == len(steps)


def test_replay_of_a_clean_script_exits_0(capsys, tmp_path: Path) -> None:
    path = tmp_path / "clean.json"
    path.write_text(json.dumps(make_script(1, 40)))
    code, out, _ = run(capsys, "replay", str(path))
    assert code == 0 and "replayed 40 operations: clean" in out


def test_bench_replay_runs_on_a_tiny_trace(capsys, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"prompt_len": 3, "tokens": [1, 2, 3, i, i + 1]}) for i in range(5, 25)))
    code, out, _ = run(capsys, "bench", "replay", "--trace", str(trace), "--repeat", "1")
    assert code == 0
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["requests"] == 20 and figures["accounting_ok"] is True


# -- bad input: one clear line, exit status 2 ------------------------------------------------------
def _script(**changes) -> dict:
    script = make_script(0, 5)
    script.update(changes)
    return script


BAD_SCRIPTS = {
    "not json": "{ops: [",
    "json list": "[1, 2, 3]",
    "unknown cache": json.dumps(_script(cache="gpu-cache")),
    "no config": json.dumps({k: v for k, v in _script().items() if k != "config"}),
    "ops not a list": json.dumps(_script(ops={"op": "match"})),
    "unknown operation": json.dumps(_script(ops=[{"op": "teleport"}])),
    "tokens not ints": json.dumps(_script(ops=[{"op": "request", "tokens": [1, "two", 3]}])),
    "float tokens": json.dumps(_script(ops=[{"op": "match", "tokens": [1.5]}])),
    "negative evict": json.dumps(_script(ops=[{"op": "evict", "n": -4}])),
    "unknown legacy": json.dumps(_script(config={**_script()["config"], "legacy": ["B42"]})),
    "capacity below a page": json.dumps(_script(config={**_script()["config"], "page_size": 4, "device_kv_tokens": 2})),
    "bad write policy": json.dumps(_script(config={**_script()["config"], "write_policy": "write_sideways"})),
    "unknown config field": json.dumps(_script(config={**_script()["config"], "gpu_count": 8})),
}


@pytest.mark.parametrize("name", list(BAD_SCRIPTS))
def test_bad_replay_scripts_give_one_clear_line(capsys, tmp_path: Path, name: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(BAD_SCRIPTS[name])
    code, out, err = run(capsys, "replay", str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("himamba: error: "), err


BAD_ARGS = {
    "missing script": ["replay", "/nonexistent/script.json"],
    "zero ops": ["fuzz", "--ops", "0"],
    "unknown legacy": ["fuzz", "--legacy", "B99", "--ops", "10"],
    "bad page size": ["fuzz", "--page-size", "0", "--ops", "10"],
    "bad policy": ["fuzz", "--policy", "write_sideways", "--ops", "10", "--no-progress"],
    "zero jobs": ["fuzz", "--jobs", "0", "--ops", "10"],
    "zero scale": ["fuzz", "--scale", "0", "--ops", "10"],
    "zero episode": ["fuzz", "--episode", "0", "--ops", "10"],
    "negative integrity period": ["fuzz", "--integrity-every", "-1", "--ops", "10"],
}


@pytest.mark.parametrize("name", list(BAD_ARGS))
def test_bad_arguments_give_one_clear_line(capsys, name: str) -> None:
    code, out, err = run(capsys, *BAD_ARGS[name])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("himamba: error: "), err


BAD_TRACES = {
    "non-integer tokens": '{"prompt_len": 2, "tokens": [1, "x", 3]}',
    "float tokens": '{"prompt_len": 2, "tokens": [1, 2.5, 3]}',
    "prompt longer than tokens": '{"prompt_len": 9, "tokens": [1, 2, 3]}',
    "missing field": '{"tokens": [1, 2, 3]}',
    "not json": "prompt_len=3 tokens=1,2,3",
    "empty file": "",
}


@pytest.mark.parametrize("name", list(BAD_TRACES))
def test_bad_trace_files_give_one_clear_line(capsys, tmp_path: Path, name: str) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(BAD_TRACES[name])
    code, out, err = run(capsys, "bench", "replay", "--trace", str(trace), "--repeat", "1")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "bad.jsonl" in lines[0], err


def test_a_reader_that_stops_reading_ends_the_command_quietly() -> None:
    """`himamba fuzz ... | head -1`: the pipe closes under the command; it ends with status 141
    (as after SIGPIPE) and writes no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-c", "from himamba.cli import main; raise SystemExit(main())",
                               "fuzz", "--ops", "50", "--no-progress"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_bench_replay_record_times_a_listener_and_keeps_the_figures(capsys, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text("\n".join(json.dumps({"prompt_len": 3, "tokens": [1, 2, 3, i, i + 1]}) for i in range(5, 25)))
    code, out, err = run(capsys, "bench", "replay", "--trace", str(trace), "--repeat", "1", "--record")
    assert code == 0, err
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["record_events"] > 20 and figures["record_same_figures"] is True


def test_differential_out_replaces_a_file_only_with_force_and_leaves_no_temporary(capsys, tmp_path: Path) -> None:
    from himamba.differential import upstream_available

    if not upstream_available():
        pytest.skip("SGLang 0.5.11 is not installed (make differential)")
    out = tmp_path / "div.json"
    out.write_text("mine")
    argv = ["differential", "--seqs", "2", "--ops", "12", "--cache", "tiered", "--no-progress", "--no-shrink",
            "--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "exists; pass --force" in err and out.read_text() == "mine"
    code, stdout, _ = run(capsys, *argv, "--force")
    assert code in (0, 1) and f"wrote {out}" in stdout
    assert isinstance(json.loads(out.read_text()), list)
    assert [p.name for p in tmp_path.iterdir()] == ["div.json"]


def test_fuzz_interrupted_reports_the_episodes_that_finished() -> None:
    """A KeyboardInterrupt inside a run (here raised by the progress callback in the third
    episode) ends it with ``interrupted`` set and the finished episodes counted, no exception."""
    from himamba.sim.fuzz import fuzz

    def progress(done: int) -> None:
        if done == 2 * 40 + 5:
            raise KeyboardInterrupt

    report = fuzz(seed=1, ops=400, episode=40, progress=progress)
    assert report.interrupted and report.failure is None
    assert report.ops_run == 80 and report.extras["episodes"] == 2
