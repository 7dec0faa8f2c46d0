#!/usr/bin/env python3
"""One-shot GPU check: everything the CUDA path must show on a real GPU, in one JSON report.

    python bench/gpu_check.py OUT_DIR            # on a machine with a GPU (at most ~5 minutes)
    python bench/gpu_check.py OUT_DIR --cpu      # the steps that can run without one (CI)

Each step runs in its own process under its own timeout, so a hang or a crash costs that step
only. Steps (``OUT_DIR/gpu_check.json`` gets one entry each, with ``status`` ok / failed /
timeout / skipped and ``seconds``):

* ``environment`` — torch, CUDA, the device's name and memory;
* ``pools`` — device pools on the GPU, host pools pinned;
* ``cuda_tests`` — ``tests/test_cuda.py`` under pytest;
* ``races`` — the P1-P4 reproductions, with a GPU sleep (``torch.cuda._sleep``) enqueued on the
  copy streams before every copy to widen the races;
* ``fuzz`` — 500 random operations with manual acks (write-through; page size 4), invariants after
  every operation, integrity at the end;
* ``syncs`` — host synchronisations per call site over a random script;
* ``transfer`` — ``measure_bandwidth`` for 1 and 16 pages next to a plain pinned ``copy_`` of the
  same bytes (goal: at least 80% of it).

With ``--cpu`` the cache runs on the CPU with the deferred copy engine (CUDA's timing), the GPU
sleep and the CUDA tests are skipped, and ``environment`` says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = {  # name -> timeout in seconds (the sum stays under five minutes)
    "environment": 30, "pools": 30, "cuda_tests": 80, "races": 40, "fuzz": 50, "syncs": 25, "transfer": 40,
}
SLEEP_CYCLES = 2_000_000  # ~1 ms of GPU time before each copy


def _device(cpu: bool):
    import torch

    return torch.device("cpu" if cpu else "cuda")


def _config(cpu: bool, **kw):
    import himamba as hm

    return hm.CacheConfig(device="cpu" if cpu else "cuda", copy_engine="deferred" if cpu else "auto", **kw)


# -- steps (each returns a JSON-able dict; an exception fails the step) ----------------------------
def step_environment(cpu: bool) -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "python": sys.version.split()[0],
           "mode": "cpu (deferred copy engine; no GPU run)" if cpu else "cuda"}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(device=p.name, memory_GiB=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   cuda=torch.version.cuda, device_count=torch.cuda.device_count())
    return out


def step_pools(cpu: bool) -> dict:
    import himamba as hm

    cache = hm.HiMambaRadixCache(_config(cpu))
    out = {"device_kv": str(cache.kv_pool.k_buffer.device), "device_states": str(cache.mamba_pool.ssm.device),
           "host_kv_pinned": cache.host_kv_pool.k_buffer.is_pinned(),
           "host_states_pinned": cache.host_mamba_pool.ssm.is_pinned(),
           "engine": type(cache.cache_controller.engine).__name__}
    if not cpu:
        assert cache.kv_pool.k_buffer.is_cuda and cache.mamba_pool.ssm.is_cuda, out
        assert out["host_kv_pinned"] and out["host_states_pinned"], out
    return out


def step_cuda_tests(cpu: bool) -> dict:
    if cpu:
        return {"skipped": "no GPU: tests/test_cuda.py skips itself"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=STEPS["cuda_tests"] - 5)
    tail = run.stdout.strip().splitlines()[-1:] or [""]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return {"summary": tail[0]}


def _inject_sleep(cpu: bool) -> None:
    """Enqueue a GPU sleep on the copy stream before every copy (widens every race)."""
    if cpu:
        return
    import torch

    from himamba.memory.cuda_engine import CudaCopyEngine

    issue = CudaCopyEngine.issue

    def slow_issue(self, plan):
        stream = self.write_stream if plan.to_host else self.load_stream
        with torch.cuda.stream(stream):
            torch.cuda._sleep(SLEEP_CYCLES)
        return issue(self, plan)

    CudaCopyEngine.issue = slow_issue


def step_races(cpu: bool) -> dict:
    import torch

    import himamba as hm
    from himamba.errors import InvalidInputError
    from himamba.memory.content import kv_matches, state_matches

    _inject_sleep(cpu)
    out = {}
    # P1: a split of a node whose write-through backup is in flight
    cache = hm.HiMambaRadixCache(_config(cpu), manual_acks=True)
    hm.serve(cache, [1, 2, 3, 4])
    cache.match_prefix([1, 2])
    before = hm.check_integrity(cache)
    cache.cache_controller.complete()
    cache.writing_check(write_back=True)  # wait for it (the copy stream may still be asleep)
    upper = cache.node_at([1, 2])
    out["P1"] = {"integrity_in_flight": [str(v) for v in before],
                 "upper_host_rows_after_ack": kv_matches(cache.host_kv_pool, upper.host_value, [1, 2], 0)}
    assert not before and out["P1"]["upper_host_rows_after_ack"], out["P1"]
    # P2: a restored state read by copy-on-write right after its load starts, before the ack
    cache = hm.HiMambaRadixCache(_config(cpu, write_policy="write_back"), manual_acks=True)
    hm.serve(cache, [1, 2, 3])
    hm.serve(cache, [1, 2, 3, 4, 5])
    a = cache.node_at([1, 2, 3])
    cache.write_backup(a, write_back=True)
    cache.writing_check(write_back=True)
    cache.evict_mamba(1)
    cache.init_load_back(a)
    cache.ready_to_load_host_cache()
    copy = cache.mamba_pool.alloc(1)
    cache.mamba_pool.copy_slot(copy, a.mamba_value)
    out["P2"] = {"copy_matches": state_matches(cache.mamba_pool, copy, [1, 2, 3])}
    assert out["P2"]["copy_matches"], out["P2"]
    # P3: the caller drops the index tensor of a write right after issuing it, and the compute
    # stream reuses its memory at once (record_stream is what keeps the side stream's read safe)
    cache = hm.HiMambaRadixCache(_config(cpu, write_policy="write_back"), manual_acks=True)
    hm.serve(cache, [5, 6, 7, 8])
    node = cache.node_at([5, 6, 7, 8])
    cc = cache.cache_controller
    idx = node.value.clone()
    host = cc.write(idx, node.id)
    del idx
    scratch = [torch.full((4,), 3, dtype=torch.int64, device=_device(cpu)) for _ in range(64)]
    cc.ack_write_queue.pop().wait()
    out["P3"] = {"host_rows_match": kv_matches(cache.host_kv_pool, host, [5, 6, 7, 8], 0),
                 "scratch_tensors": len(scratch)}
    cache.host_kv_pool.free(host)
    assert out["P3"]["host_rows_match"], out["P3"]
    # P4: an index tensor on the wrong device is refused at the boundary
    cache = hm.HiMambaRadixCache(_config(cpu))
    wrong = torch.empty(2, dtype=torch.int64, device="meta" if cpu else "cpu")
    try:
        cache.insert([1, 2], wrong, cache.mamba_pool.alloc(1))
        out["P4"] = {"refused": False}
    except InvalidInputError as exc:
        out["P4"] = {"refused": True, "message": str(exc)}
    assert out["P4"]["refused"], out["P4"]
    return out


def _fuzz_once(cpu: bool, seed: int, page_size: int, policy: str, n: int = 500) -> dict:
    import himamba as hm
    from himamba.sim.fuzz import make_cache, make_script
    from himamba.sim.ops import DriverState, apply

    script = make_script(seed, n, page_size=page_size, write_policy=policy, manual_acks=True)
    script["config"].update(device="cpu" if cpu else "cuda", copy_engine="deferred" if cpu else "auto")
    cache, state = make_cache(script), DriverState()
    start = time.perf_counter()
    for i, op in enumerate(script["ops"]):
        apply(cache, state, op)
        bad = hm.check_invariants(cache)
        assert not bad, (i, op, [str(v) for v in bad])
    bad = hm.check_integrity(cache)
    return {"ops": n, "page_size": page_size, "policy": policy, "seconds": round(time.perf_counter() - start, 2),
            "integrity_at_end": [str(v) for v in bad], "ok": not bad}


def step_fuzz(cpu: bool) -> dict:
    _inject_sleep(cpu)
    runs = [_fuzz_once(cpu, 21, 1, "write_through"), _fuzz_once(cpu, 22, 4, "write_through_selective")]
    assert all(r["ok"] for r in runs), runs
    return {"runs": runs}


def step_syncs(cpu: bool) -> dict:
    from himamba.memory.syncs import count_host_syncs, take_slot_ids_as_on_a_gpu
    from himamba.sim.fuzz import make_cache, make_script
    from himamba.sim.ops import DriverState, apply

    script = make_script(31, 300, write_policy="write_through", manual_acks=True)
    script["config"].update(device="cpu" if cpu else "cuda", copy_engine="deferred" if cpu else "auto")
    cache, state = make_cache(script), DriverState()
    if cpu:  # count what a GPU would do: device pools take slot ids from host copies
        take_slot_ids_as_on_a_gpu(cache)
    with count_host_syncs(_device(cpu)) as count:
        for op in script["ops"]:
            apply(cache, state, op)
    n = len(script["ops"])
    engine = sum(v for k, v in count.by_site.items() if k.startswith("memory/copy_engines.py"))  # CPU engines only
    return {"ops": n, "syncs": count.total, "per_op": round(count.total / n, 3),
            "per_op_without_cpu_copy_engine": round((count.total - engine) / n, 3), "all_seen": count.raw,
            "slot_ids": "host copies (as on a GPU)", "by_site": dict(count.by_site.most_common(20))}


def step_transfer(cpu: bool) -> dict:
    import himamba as hm
    from himamba.memory.bandwidth import measure_bandwidth

    spec = hm.ModelSpec.presets()["qwen3-next-80b-a3b"].scaled(1, 1)
    rows = [measure_bandwidth(spec, _device(cpu), pages * 64, 64, repeat=5) for pages in (1, 16)]
    for r in rows:
        r["write_vs_plain"] = round(r["write_GBps"] / r["plain_d2h_GBps"], 3)
        r["load_vs_plain"] = round(r["load_GBps"] / r["plain_h2d_GBps"], 3)
        r["goal_met"] = r["write_vs_plain"] >= 0.8 and r["load_vs_plain"] >= 0.8
    return {"rows": rows, "goal": "controller at least 80% of a plain pinned copy_ of the same bytes"}


# -- driver ------------------------------------------------------------------------------------------
def _run_step(name: str, cpu: bool) -> dict:
    cmd = [sys.executable, __file__, "--step", name] + (["--cpu"] if cpu else [])
    start = time.perf_counter()
    try:
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=STEPS[name])
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": STEPS[name]}
    seconds = round(time.perf_counter() - start, 2)
    lines = run.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if run.returncode != 0 or "status" not in result:
        return {"status": "failed", "seconds": seconds, "error": (run.stderr or run.stdout)[-4000:]}
    return {**result, "seconds": seconds}


def _step_main(name: str, cpu: bool) -> int:
    result = globals()[f"step_{name}"](cpu)
    status = "skipped" if "skipped" in result else "ok"
    print(json.dumps({"status": status, **result}, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, help="folder for gpu_check.json")
    ap.add_argument("--cpu", action="store_true", help="run the steps that need no GPU (deferred copy engine)")
    ap.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--only", default=None, help="comma-separated steps to run (default: all)")
    args = ap.parse_args(argv)
    if args.step:
        return _step_main(args.step, args.cpu)
    if args.out is None:
        ap.error("give the folder the report goes into")
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible here; run with --cpu for the steps that need none", file=sys.stderr)
        return 2
    names = list(STEPS) if args.only is None else [s.strip() for s in args.only.split(",")]
    unknown = sorted(set(names) - set(STEPS))
    if unknown:
        ap.error(f"unknown step(s) {unknown}; known: {list(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"mode": "cpu" if args.cpu else "cuda", "steps": {}}
    for name in names:
        report["steps"][name] = _run_step(name, args.cpu)
        print(f"{name}: {report['steps'][name]['status']} ({report['steps'][name]['seconds']} s)", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    bad = [n for n, r in report["steps"].items() if r["status"] in ("failed", "timeout")]
    print(f"report: {args.out / 'gpu_check.json'}" + (f"; failed: {bad}" if bad else "; every step passed or skipped"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
