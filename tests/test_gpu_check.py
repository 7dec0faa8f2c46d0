"""bench/gpu_check.py: the parts that need no GPU run on the CPU (deferred copy engine), and
the driver writes its JSON report; without a GPU and without --cpu it stops with a clear line."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_race_reproductions_pass_on_the_deferred_engine(gpu_check) -> None:
    out = gpu_check.step_races(cpu=True)
    assert out["P1"] == {"integrity_in_flight": [], "upper_host_rows_after_ack": True}
    assert out["P2"]["copy_matches"] and out["P3"]["host_rows_match"] and out["P4"]["refused"]
    assert "indexes a pool on 'cpu'" in out["P4"]["message"]


def test_environment_pools_and_syncs_steps_report_on_the_cpu(gpu_check) -> None:
    env = gpu_check.step_environment(cpu=True)
    assert env["mode"].startswith("cpu") and env["torch"] == torch.__version__
    pools = gpu_check.step_pools(cpu=True)
    assert pools["engine"] == "DeferredCopyEngine" and pools["device_kv"] == "cpu"
    assert gpu_check.step_cuda_tests(cpu=True) == {"skipped": "no GPU: tests/test_cuda.py skips itself"}


def test_the_driver_writes_a_report_with_one_entry_per_step(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--cpu", "--only", "environment,cuda_tests"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "cpu" and list(report["steps"]) == ["environment", "cuda_tests"]
    assert report["steps"]["environment"]["status"] == "ok"
    assert report["steps"]["cuda_tests"]["status"] == "skipped"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_without_a_gpu_it_says_to_use_the_cpu_mode(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA device is visible here; run with --cpu" in run.stderr
