"""The simulation layer (himamba.sim): engine, workloads, trace I/O, metrics, sweep.

The engine must keep both caches healthy after every step (invariants with exact pool balance,
and the bytes of every KV row and state); its eviction counts are checked against an independent
oracle that watches every pool free; byte counts against the transfer controller. No timing
assertions.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import himamba as hm
from himamba.observe.events import EventKind
from himamba.sim import (
    STEP_COLUMNS,
    Engine,
    EngineStall,
    PackedWorkload,
    SimRequest,
    TraceFormatError,
    agentic_tool_loops,
    describe,
    expand_grid,
    load_jsonl,
    multi_turn_chat,
    pack,
    plot_evictions,
    plot_hits,
    plot_occupancy,
    plot_sweep,
    plot_transfers,
    random_requests,
    save_jsonl,
    shared_system_prompts,
    sweep,
)

EVICTING_OPS = {"evict", "evict_mamba", "evict_host", "evict_mamba_host"}


def small_chat(n: int = 70, seed: int = 3) -> list[SimRequest]:
    return multi_turn_chat(n, n_system=3, system_len=(8, 40), user_len=(4, 30), output_len=(4, 30),
                           max_len=400, active=8, seed=seed)


def make(tiered: bool, **config) -> hm.MambaRadixCache:
    manual = config.pop("manual_acks", False)
    base = dict(device="cpu", device_kv_tokens=480, host_kv_tokens=900, device_mamba_slots=12, host_mamba_slots=40)
    cfg = hm.CacheConfig(**{**base, **config})
    return hm.HiMambaRadixCache(cfg, manual_acks=manual) if tiered else hm.MambaRadixCache(cfg)


def healthy(cache, engine: Engine) -> list:
    return [*hm.check_invariants(cache, held_kv=engine.held_kv(), held_states=engine.held_states()),
            *hm.check_integrity(cache)]


CASES = {
    "device": (False, {}),
    "device-paged": (False, {"page_size": 2}),
    "tiered": (True, {}),
    "tiered-selective": (True, {"write_policy": "write_through_selective"}),
    "tiered-write-back": (True, {"write_policy": "write_back"}),
    "tiered-unified": (True, {"cascade_rule": "unified"}),
    "tiered-paged": (True, {"page_size": 2}),
    "tiered-manual-acks": (True, {"manual_acks": True}),
}


# -- engine -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_engine_keeps_the_cache_healthy_after_every_step(case):
    tiered, config = CASES[case]
    cache = make(tiered, **config)
    reqs = small_chat() + agentic_tool_loops(20, context_len=60, task_len=(4, 12), call_len=(4, 10),
                                             result_len=(4, 20), steps=(2, 4), active=3, seed=1)
    engine = Engine(cache, chunk_size=24, decode_tokens=6, max_running=3)
    engine.submit(reqs)
    while not engine.idle:
        engine.step()
        assert healthy(cache, engine) == [], f"step {engine.step_index}"
    engine.drain()
    engine.close()
    assert healthy(cache, engine) == []
    t = engine.metrics.totals()
    assert t["requests"] == len(reqs)
    assert t["device_hit_tokens"] > 0 and t["evicted_device_tokens"] > 0
    if tiered:
        assert t["host_hit_tokens"] > 0 and t["bytes_device_to_host"] > 0 and t["bytes_host_to_device"] > 0
        assert not cache.cache_controller.in_flight()
    # nothing held, nothing locked: every slot is free or owned (unlocked) by the tree
    assert cache.full_protected_size() == 0 and cache.mamba_protected_size() == 0
    assert cache.kv_pool.available_size() + cache.full_evictable_size() == cache.kv_pool.capacity


def oracle(cache) -> dict[str, int]:
    """Slots freed inside an eviction operation, per pool, counted by wrapping every pool's free."""
    stack: list[str] = []
    counts = dict.fromkeys(("device_kv", "device_states", "host_kv", "host_states"), 0)

    def track(event) -> None:
        if event.kind is EventKind.OP_BEGIN:
            stack.append(event.data["op"])
        elif event.kind is EventKind.OP_END:
            stack.pop()

    cache.events.subscribe(track)
    pools = {"device_kv": cache.kv_pool, "device_states": cache.mamba_pool}
    if cache.tiered:
        pools.update(host_kv=cache.host_kv_pool, host_states=cache.host_mamba_pool)
    for name, pool in pools.items():
        for method in ("free", "free_owned"):  # checked and unchecked frees alike
            original = getattr(pool, method)

            def free(idx, _free=original, _name=name):
                if EVICTING_OPS.intersection(stack):
                    counts[_name] += idx.numel()
                return _free(idx)
            setattr(pool, method, free)
    return counts


@pytest.mark.parametrize("case", ["device", "tiered", "tiered-write-back", "tiered-unified", "tiered-paged"])
def test_metrics_agree_with_the_pools_and_the_controller(case):
    tiered, config = CASES[case]
    cache = make(tiered, **config)
    truth = oracle(cache)
    reqs = small_chat(90, seed=5)
    with Engine(cache, chunk_size=24, decode_tokens=6, max_running=3) as engine:
        metrics = engine.run(reqs, progress=False)
    t = metrics.totals()
    assert (t["evicted_device_tokens"], t["evicted_device_states"], t["evicted_host_tokens"], t["evicted_host_states"]) == \
        (truth["device_kv"], truth["device_states"], truth["host_kv"], truth["host_states"])
    steps, requests = metrics.steps, metrics.requests
    assert list(steps.columns) == [c for c in STEP_COLUMNS if c != "step"]
    for col in ("evicted_device_tokens", "device_hit_tokens", "host_hit_tokens", "bytes_device_to_host", "finished"):
        assert steps[col].sum() == t[col]
    if tiered:
        cc = cache.cache_controller
        assert (t["bytes_device_to_host"], t["bytes_host_to_device"]) == (cc.bytes_device_to_host, cc.bytes_host_to_device)
        assert t["final_host_kv_used"] == cache.host_kv_pool.used_size()
    assert t["final_device_kv_cached"] == cache.full_evictable_size()
    assert len(requests) == len(reqs) and sorted(requests["rid"]) == list(range(len(reqs)))
    # request rows describe each request's last admission; step totals count retried ones too
    exact = (lambda a, b: a == b) if t["retracted"] == 0 else (lambda a, b: a <= b)
    assert exact(requests["cached_tokens"].sum(), t["device_hit_tokens"] + t["host_hit_tokens"])
    assert exact(requests["host_loaded_tokens"].sum(), t["host_hit_tokens"])
    assert exact(int((requests["host_loaded_tokens"] > 0).sum()), t["load_backs"])
    assert (t["load_backs"] > 0) is (t["host_hit_tokens"] > 0)
    assert t["admitted"] == len(reqs) + t["retracted"] == len(reqs) + requests["retractions"].sum()
    assert t["prefill_tokens"] + t["decode_tokens"] + t["device_hit_tokens"] + t["host_hit_tokens"] >= \
        sum(r.prompt_len - r.prompt_len % cache.page_size for r in reqs)
    assert 0 < t["hit_rate"] <= 1


def test_a_repeated_prompt_hits_on_device_and_comes_back_from_host():
    prompt = tuple(range(1, 101))
    reqs = [SimRequest(prompt, (7, 8, 9), rid=0), SimRequest(prompt + (500,), (), rid=1)]
    cache = make(False, device_kv_tokens=400)
    m = Engine(cache, chunk_size=32, max_running=1).run(reqs, progress=False).requests
    assert m["cached_tokens"].tolist() == [0, 100]  # the state at the end of the prompt is reused
    # tiered: a flood in between pushes the prompt to host; the next request loads it back
    flood = [SimRequest(tuple(range(1000 + 200 * i, 1200 + 200 * i)), (), rid=10 + i) for i in range(4)]
    cache = make(True, device_kv_tokens=400, host_kv_tokens=2000)
    with Engine(cache, chunk_size=64, max_running=1) as engine:
        metrics = engine.run([reqs[0], *flood, reqs[1]], progress=False)
    last = metrics.requests.iloc[-1]
    assert last["host_loaded_tokens"] > 0 and last["cached_tokens"] == 100
    assert metrics.totals()["load_backs"] == 1
    assert metrics.totals()["state_hits_host"] + metrics.totals()["state_hits_device"] >= 1
    assert healthy(cache, engine) == []


def test_turns_of_a_session_run_one_after_another():
    reqs = small_chat(60, seed=9)
    cache = make(True, device_kv_tokens=2000, host_kv_tokens=4000, device_mamba_slots=32)
    seen: list[set] = []

    def watch(engine: Engine, row: dict) -> None:
        sessions = [lv.item.session for lv in engine.running]
        assert len(sessions) == len(set(sessions))
        seen.append(set(sessions))

    with Engine(cache, chunk_size=16, decode_tokens=4, max_running=4) as engine:
        metrics = engine.run(reqs, progress=False, on_step=watch)
    frame = metrics.requests.set_index("rid")
    assert max(len(s) for s in seen) > 1  # requests did overlap
    last_turn: dict[int, int] = {}
    for r in reqs:  # each turn starts after the previous turn of its session finished
        if r.session in last_turn:
            assert frame.loc[r.rid, "admitted_step"] > frame.loc[last_turn[r.session], "finished_step"]
        last_turn[r.session] = r.rid
    # later turns reuse the earlier ones: most prompt tokens hit
    assert metrics.totals()["hit_rate"] > 0.5


def test_memory_pressure_retracts_and_a_request_too_large_stalls():
    cache = make(False, device_kv_tokens=160, device_mamba_slots=8)
    reqs = random_requests(12, prompt_len=(40, 60), output_len=(20, 30), seed=2)
    with Engine(cache, chunk_size=16, decode_tokens=8, max_running=4) as engine:
        engine.submit(reqs)
        while not engine.idle:
            engine.step()
            assert healthy(cache, engine) == []
    t = engine.metrics.totals()
    assert t["retracted"] > 0 and t["requests"] == 12
    assert engine.metrics.requests["retractions"].sum() == t["retracted"]
    big = [SimRequest(tuple(range(1, 201)), (), rid=0)]
    with pytest.raises(EngineStall, match="even alone"), Engine(make(False, device_kv_tokens=160)) as engine:
        engine.run(big, progress=False)


def test_engine_rejects_bad_arguments_and_short_requests_are_skipped():
    cache = make(False, page_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        Engine(cache, chunk_size=0)
    with pytest.raises(ValueError, match="max_running"):
        Engine(cache, max_running=0)
    with pytest.raises(ValueError, match="evict_headroom must be a non-negative int"):
        Engine(cache, evict_headroom=-1)
    with pytest.raises(ValueError, match="load_back_quota must be a non-negative int or None"):
        Engine(cache, load_back_quota=-5)
    reqs = [SimRequest((1, 2), (3,), rid=0), SimRequest(tuple(range(1, 11)), (1, 2), rid=1)]
    with Engine(cache, chunk_size=3) as engine:  # chunks round to whole pages
        assert engine.chunk_size == 4 and engine.decode_tokens == 16
        metrics = engine.run(reqs, progress=True)
    assert metrics.requests["total_len"].tolist() == [0, 12]
    assert healthy(cache, engine) == []


def test_engine_without_probe_counts_no_evictions_but_still_runs():
    cache = make(True)
    with Engine(cache, chunk_size=24, decode_tokens=6, probe=False, keep_steps=False, keep_requests=False) as engine:
        metrics = engine.run(small_chat(40), progress=False)
    t = metrics.totals()
    assert t["requests"] == 40 and t["evicted_device_tokens"] == 0 and t["bytes_device_to_host"] > 0
    assert metrics.steps.empty and metrics.requests.empty and not cache.events.active


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("policy", ["write_through", "write_back"])
def test_engine_on_cuda_keeps_every_byte(policy):
    """Device pools on the GPU, pinned host pools, asynchronous copies: same checks every step."""
    cache = make(True, device="cuda", write_policy=policy)
    with Engine(cache, chunk_size=24, decode_tokens=6, max_running=3) as engine:
        engine.submit(small_chat(50))
        while not engine.idle:
            engine.step()
            assert healthy(cache, engine) == [], f"step {engine.step_index}"
        engine.drain()
    assert healthy(cache, engine) == [] and not cache.cache_controller.in_flight()
    assert engine.metrics.totals()["host_hit_tokens"] > 0


# -- workloads ----------------------------------------------------------------------------------------
GENERATORS = {
    "shared": lambda seed: shared_system_prompts(200, n_prompts=6, prompt_len=(20, 40), user_len=(2, 5),
                                                 output_len=(1, 4), seed=seed),
    "chat": lambda seed: multi_turn_chat(200, n_system=4, system_len=(10, 30), user_len=(2, 8),
                                         output_len=(2, 8), max_len=200, active=10, seed=seed),
    "agentic": lambda seed: agentic_tool_loops(200, context_len=300, n_contexts=2, task_len=(2, 5),
                                               call_len=(2, 5), result_len=(5, 10), steps=(2, 6), seed=seed),
    "random": lambda seed: random_requests(200, prompt_len=(5, 50), output_len=(0, 9), seed=seed),
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generators_are_seeded_and_numbered(name):
    a, b, c = GENERATORS[name](0), GENERATORS[name](0), GENERATORS[name](1)
    assert a == b and a != c
    assert [r.rid for r in a] == list(range(200))
    assert all(type(t) is int and 0 < t < 32000 for r in a for t in r.tokens)


def test_shared_system_prompts_have_zipf_popularity():
    reqs = shared_system_prompts(600, n_prompts=5, prompt_len=(30, 30), user_len=(3, 6), output_len=(2, 2), zipf=1.2)
    heads = [r.prompt[:30] for r in reqs]
    counts = sorted((heads.count(h) for h in set(heads)), reverse=True)
    assert len(counts) <= 5 and counts[0] > 2 * counts[-1]
    assert all(33 <= r.prompt_len <= 36 and len(r.output) == 2 and r.session is None for r in reqs)


def test_multi_turn_chat_grows_each_conversation():
    reqs = GENERATORS["chat"](0)
    last: dict[int, SimRequest] = {}
    for r in reqs:
        assert len(r) <= 200 and 2 <= len(r.output) <= 8
        prev = last.get(r.session)
        if prev is not None:
            assert r.prompt[: len(prev)] == (*prev.prompt, *prev.output)
            assert 2 <= r.prompt_len - len(prev) <= 8
        last[r.session] = r
    assert sum(1 for r in reqs if r.session in last) == 200 and len(last) > 10


def test_agentic_loops_share_one_long_context():
    reqs = agentic_tool_loops(120, context_len=300, n_contexts=1, task_len=(2, 5), call_len=(2, 5),
                              result_len=(5, 10), steps=(2, 6), active=4, seed=4)
    context = reqs[0].prompt[:300]
    assert all(r.prompt[:300] == context for r in reqs)
    per_loop: dict[int, list[SimRequest]] = {}
    for r in reqs:
        per_loop.setdefault(r.session, []).append(r)
    finished = [loop for loop in per_loop.values() if len(loop) >= 2]
    assert finished and all(len(loop) <= 6 for loop in per_loop.values())
    for loop in finished:
        for prev, cur in zip(loop, loop[1:], strict=False):
            assert cur.prompt[: len(prev)] == (*prev.prompt, *prev.output) and cur.prompt_len > len(prev)


def test_generator_arguments_are_checked():
    with pytest.raises(ValueError, match="prompt_len"):
        random_requests(3, prompt_len=(10, 5))
    with pytest.raises(ValueError, match="n_requests"):
        shared_system_prompts(-1)
    with pytest.raises(ValueError, match="max_len"):
        multi_turn_chat(3, max_len=10)


def test_packed_workload_is_compact_and_equal():
    reqs = GENERATORS["chat"](2)
    packed = pack(reqs)
    assert isinstance(packed, PackedWorkload) and len(packed) == len(reqs)
    assert list(packed) == reqs and packed[-1] == reqs[-1] and packed[3:5] == reqs[3:5]
    assert pack(packed) is packed
    assert packed.nbytes <= 4 * packed.total_tokens + 24 * (len(packed) + 1)  # vs ~36 bytes per Python int
    assert pickle.loads(pickle.dumps(packed))[7] == reqs[7]
    assert describe(packed) == describe(reqs)
    assert describe(reqs)["total_tokens"] == packed.total_tokens


def test_sim_request_output_by_length():
    r = SimRequest.make([1, 2, 3], 5, session=2, rid=7)
    assert len(r.output) == 5 and r == SimRequest.make([1, 2, 3], 5, session=2, rid=7)
    with pytest.raises(ValueError, match="token ids must be ints"):
        SimRequest.make([1, -2], 1)


# -- trace I/O ----------------------------------------------------------------------------------------
def test_trace_round_trips(tmp_path):
    reqs = GENERATORS["chat"](5)
    trace = save_jsonl(reqs, tmp_path / "t.jsonl", format="trace")
    first = json.loads(trace.read_text().splitlines()[0])
    assert set(first) == {"prompt_len", "tokens"}  # the shared format, as multiturn_trace.py writes it
    back = load_jsonl(trace)
    assert [(r.prompt, r.output) for r in back] == [(r.prompt, r.output) for r in reqs]
    assert [r.rid for r in back] == list(range(len(reqs)))
    native = load_jsonl(save_jsonl(reqs, tmp_path / "n.jsonl"))
    assert native == reqs  # sessions and ids kept
    mixed = tmp_path / "m.jsonl"
    mixed.write_text('{"prompt_len": 2, "tokens": [5, 6, 7]}\n\n{"prompt": [5, 6], "output_len": 3, "session": 1}\n')
    a, b = load_jsonl(mixed)
    assert (a.prompt, a.output) == ((5, 6), (7,)) and b.prompt == (5, 6) and len(b.output) == 3 and b.session == 1
    assert b.output == SimRequest.make((5, 6), 3, session=1, rid=1).output  # drawn as make() draws them


@pytest.mark.parametrize("line, message", [
    ('{"prompt_len": 2, "tokens": [1, 2.5, 3]}', r"tokens\[1\] is 2.5"),
    ('{"prompt_len": 2, "tokens": [1, "2", 3]}', r"tokens\[1\] is '2'"),
    ('{"prompt_len": 2, "tokens": [1, true, 3]}', r"tokens\[1\] is True"),
    ('{"prompt_len": 2, "tokens": [1, -4, 3]}', r"tokens\[1\] is -4"),
    ('{"prompt_len": 0, "tokens": [1, 2, 3]}', r"prompt_len 0 is out of range 1..3"),
    ('{"prompt_len": 4, "tokens": [1, 2, 3]}', r"prompt_len 4 is out of range 1..3"),
    ('{"prompt_len": 1.0, "tokens": [1, 2, 3]}', r"prompt_len must be an int"),
    ('{"prompt_len": 1, "tokens": 7}', r"'tokens' must be a list"),
    ('{"prompt_len": 1}', r"lacks 'tokens'"),
    ('{"prompt_len": 1, "tokens": [1, 2]', r"not valid JSON"),
    ('[1, 2, 3]', r"must be a JSON object"),
    ('{"input": [1]}', r"neither a trace record"),
    ('{"prompt": [1], "output_len": -1}', r"output_len must be a non-negative int"),
])
def test_malformed_trace_lines_are_rejected_by_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt_len": 1, "tokens": [1, 2]}\n' + line + "\n" + '{"prompt_len": 1, "tokens": [3]}\n')
    with pytest.raises(TraceFormatError, match=f"bad.jsonl:2: .*{message}") as info:
        load_jsonl(path)
    assert isinstance(info.value, ValueError)


def test_empty_trace_and_bad_format_are_errors(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(TraceFormatError, match="no requests"):
        load_jsonl(empty)
    with pytest.raises(ValueError, match="format"):
        save_jsonl([], tmp_path / "x.jsonl", format="csv")
    with pytest.raises(ValueError, match="empty prompt"):
        save_jsonl([SimRequest((), (1,))], tmp_path / "x.jsonl", format="trace")


# -- metrics and plots --------------------------------------------------------------------------------
def test_plot_helpers_return_figures():
    from matplotlib.figure import Figure

    cache = make(True)
    with Engine(cache, chunk_size=24, decode_tokens=6) as engine:
        steps = engine.run(small_chat(30), progress=False).steps
    for plot in (plot_occupancy, plot_hits, plot_evictions, plot_transfers):
        fig = plot(steps)
        assert isinstance(fig, Figure) and fig.axes
    frame = engine.metrics.totals_frame().assign(size=[1])
    assert isinstance(plot_sweep(frame, x="size", y="hit_rate"), Figure)


# -- sweep --------------------------------------------------------------------------------------------
def test_expand_grid_and_parameter_checks():
    configs = expand_grid({"device_kv_tokens": [100, 200], "write_policy": ["write_back"]}, base={"cache": "tiered"})
    assert configs == [{"cache": "tiered", "device_kv_tokens": 100, "write_policy": "write_back"},
                       {"cache": "tiered", "device_kv_tokens": 200, "write_policy": "write_back"}]
    assert expand_grid([{"page_size": 2}]) == [{"page_size": 2}]
    with pytest.raises(ValueError, match="unknown sweep parameter"):
        expand_grid({"device_kv": [1]})
    with pytest.raises(ValueError, match="write_policy"):
        sweep({"write_policy": ["sometimes"]}, small_chat(2))
    # engine arguments are checked on the client too, before any worker starts
    with pytest.raises(ValueError, match="evict_headroom"):
        sweep({"evict_headroom": [0, -3]}, small_chat(2))
    with pytest.raises(ValueError, match="max_running"):
        sweep([{"max_running": 0}], small_chat(2))
    with pytest.raises(ValueError, match="must be a list"):
        expand_grid({"write_policy": "write_back"})


@pytest.mark.slow
def test_sweep_on_a_local_cluster_returns_one_row_per_configuration():
    reqs = small_chat(100, seed=11)
    grid = {"cache": ["device", "tiered"], "device_kv_tokens": [480, 960]}
    frame = sweep(grid, reqs, base={"host_kv_tokens": 1200, "device_mamba_slots": 12, "host_mamba_slots": 40, "chunk_size": 24,
                                     "decode_tokens": 6, "max_running": 3}, memory_limit="1GiB")
    assert len(frame) == 4 and list(frame.index) == [0, 1, 2, 3]
    assert frame["error"].isna().all(), frame["error"].tolist()
    assert frame[["cache", "device_kv_tokens"]].values.tolist() == [["device", 480], ["device", 960],
                                                                     ["tiered", 480], ["tiered", 960]]
    assert (frame["requests"] == 100).all() and (frame["violations"] == 0).all()
    assert (frame["integrity_violations"] == 0).all()
    tiered = frame[frame["cache"] == "tiered"]
    assert (tiered["bytes_device_to_host"] > 0).all() and (frame.loc[frame["cache"] == "device", "host_hit_tokens"] == 0).all()
    # the same configuration in-process gives the same figures (the sweep changes nothing)
    cache = make(True, device_kv_tokens=960, host_kv_tokens=1200)
    with Engine(cache, chunk_size=24, decode_tokens=6, max_running=3) as engine:
        local = engine.run(reqs, progress=False).totals()
    for col in ("hit_rate", "evicted_device_tokens", "evicted_host_tokens", "bytes_host_to_device", "steps"):
        assert frame.loc[3, col] == local[col]


def test_the_local_cluster_takes_no_fixed_dashboard_port():
    """A second sweep (another notebook's kernel) while 8787 is taken: no 'already in use' warning."""
    import socket
    import warnings

    from himamba.sim.sweep import connect

    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 8787))
        taken.listen()
    except OSError:
        pass  # already taken by something else: the case under test anyway
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client, to_close = connect(None, None, 1, "512MiB")
            link = client.dashboard_link
            for thing in to_close:
                thing.close()
    finally:
        taken.close()
    assert not [w for w in caught if "already in use" in str(w.message)]
    assert "127.0.0.1" in link and ":8787" not in link


@pytest.mark.slow
def test_sweep_on_an_existing_cluster_by_address_and_reports_bad_configurations():
    import logging

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="1GiB",
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        frame = sweep([{"device_kv_tokens": 480}, {"device_kv_tokens": 64}], small_chat(30),
                      address=cluster.scheduler_address, base={"cache": "device", "chunk_size": 24})
        assert client.status == "running"  # the sweep closed only the client it opened
    assert frame["error"].isna().tolist() == [True, False] and frame.loc[0, "requests"] == 30
    assert "EngineStall" in frame.loc[1, "error"]


@pytest.mark.parametrize("case", ["device", "tiered", "tiered-write-back"])
def test_the_probe_counts_each_eviction_event_once_and_charges_its_tokens(case):
    """Per-event counts equal the events the cache announced; demotions and cascade deletions
    are charged a part of what was evicted (device tokens, and host tokens for a deletion)."""
    tiered, config = CASES[case]
    cache = make(tiered, **config)
    seen: dict[EventKind, int] = {}
    cache.events.subscribe(lambda e: seen.__setitem__(e.kind, seen.get(e.kind, 0) + 1))
    with Engine(cache, chunk_size=24, decode_tokens=6, max_running=3) as engine:
        engine.run(small_chat(90, seed=5), progress=False)
        c = engine.probe.counts
    for kind, field in ((EventKind.LEAF_EVICTED, "leaves_deleted"), (EventKind.DEMOTED, "demotions"),
                        (EventKind.NODE_DELETED, "cascade_deletions"), (EventKind.TOMBSTONE, "tombstones"),
                        (EventKind.HOST_LEAF_EVICTED, "host_leaves_deleted"),
                        (EventKind.HOST_STATE_DROPPED, "host_states_dropped")):
        assert c[field] == seen.get(kind, 0), field
    assert c["cascade_deletions"] > 0 and c["tombstones"] > 0
    assert 0 < c["cascade_device_tokens"] + c["demoted_tokens"] <= c["evicted_device_tokens"]
    assert c["cascade_host_tokens"] <= c["evicted_host_tokens"]
    if tiered:
        assert c["demotions"] > 0 and c["demoted_tokens"] >= c["demotions"]
