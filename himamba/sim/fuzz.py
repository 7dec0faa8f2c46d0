"""The fuzzer: random operation scripts, checked after every step, shrunk when they fail.

``fuzz(seed=..., ops=N, legacy=...)`` runs N random operations (see :mod:`himamba.sim.ops`) over
small caches, with ``check_invariants`` (and, every ``integrity_every`` steps,
``check_integrity``) after each operation. The N operations are cut into *episodes*: each episode
starts a fresh cache, with pool sizes and operations drawn from its own seed. Restarts are a
classic fuzzing device; here they matter because most legacy bugs need a young tree with little
state pinned (a long run settles into states where they no longer fire), while long episodes
reach deep states. On the first failure the failing episode's script is shrunk to a minimal one
that still fails the same way (delta debugging). Scripts are plain JSON that :func:`replay` runs
again.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from himamba.cache.config import CacheConfig
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.cache.integrity import check_integrity
from himamba.cache.invariants import check_invariants
from himamba.cache.mamba import MambaRadixCache
from himamba.errors import InvalidInputError
from himamba.sim.ops import OPERATIONS, DriverState, apply


@dataclass(frozen=True)
class FuzzFailure:
    """How a script failed: at which step, what kind (exception type or invariant id), why."""

    step: int
    kind: str
    message: str

    def signature(self) -> str:
        return self.kind


@dataclass
class FuzzReport:
    """Outcome of a run: operations done, per-kind counts, time, and the failure if any."""

    ops_run: int
    seconds: float
    counts: dict[str, int]
    failure: FuzzFailure | None = None
    script: dict | None = None
    shrunk: dict | None = None
    extras: dict = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        return self.ops_run / self.seconds if self.seconds else float("inf")


# -- scripts ----------------------------------------------------------------------------------------
def default_config(page_size: int = 1, write_policy: str = "write_through", legacy: Iterable[str] = (),
                   storage: bool = True, seed: int = 0, scale: int = 1) -> dict:
    """Small pools, so that every kind of eviction happens often. The host tier's size varies
    with the seed (from half the device's to twice it): a small host makes backups fail.
    ``scale`` multiplies every pool (the trees grow with it: about 12 nodes at 1, 90 at 12, 100
    at 14)."""
    if scale < 1:
        raise InvalidInputError(f"scale must be at least 1, got {scale}")
    rng = random.Random(f"pools-{seed}")
    return {
        "device": "cpu", "page_size": page_size, "device_kv_tokens": 32 * page_size * scale,
        "host_kv_tokens": rng.choice((16, 24, 40, 64)) * page_size * scale, "device_mamba_slots": 4 * scale,
        "host_mamba_slots": rng.choice((4, 6, 10)) * scale,
        "write_policy": write_policy, "legacy": sorted(legacy), "enable_storage": storage,
    }


def make_cache(script: dict):
    """Build the cache a script names."""
    known = {f.name for f in dataclasses.fields(CacheConfig)}
    unknown = sorted(set(script["config"]) - known)
    if unknown:
        raise InvalidInputError(f"script config has unknown field(s) {unknown}; known: {sorted(known)}")
    cfg = CacheConfig(**{**script["config"], "legacy": frozenset(script["config"].get("legacy", ()))})
    if script.get("cache", "tiered") == "device":
        return MambaRadixCache(cfg)
    return HiMambaRadixCache(cfg, manual_acks=script.get("manual_acks", False))


# Settings that make one legacy bug reachable quickly (the bug's trigger needs them): tiny pools
# (B1: pins, evictions and host pressure meet early), a host tier smaller than the device (B4:
# backups fail), the selective policy (B6: device nodes stay un-backed-up under prefetches),
# write-back (B7). B8 needs a shared prompt requested bare while its extensions hold the two state
# slots, its selective write still in flight (acks rare), then a state eviction that takes the
# extensions: two prompts only, many bare prompt requests and state evictions, and short episodes
# (the trigger needs a young tree).
TARGET_PROFILES: dict[str, dict] = {
    "B1": {"config": {"device_kv_tokens": 16, "host_kv_tokens": 16, "device_mamba_slots": 3}},
    "B4": {"config": {"host_kv_tokens": 16}},
    "B6": {"config": {"write_policy": "write_through_selective"}},
    "B7": {"config": {"write_policy": "write_back"}},
    "B8": {"config": {"device_mamba_slots": 2, "device_kv_tokens": 24, "write_policy": "write_through_selective"},
           "weights": {"lock": 4, "unlock": 6, "evict_mamba": 12, "evict": 3, "evict_host": 2, "ack": 1,
                       "events": 0, "load": 1},
           "shape": {"p_prompt": 0.8, "p_bare": 0.35, "n_prompts": 2},
           "episode": 100},
}
DEFAULT_EPISODE = 500  # operations per episode when neither the caller nor a profile says


def generate_ops(seed: int, n: int, page_size: int = 1, vocab: int = 40,
                 weights: dict[str, int] | None = None, p_prompt: float = 0.4, p_bare: float = 0.25,
                 n_prompts: int = 4) -> list[dict]:
    """``n`` random operations over sequences with shared prefixes (``n_prompts`` system
    prompts, multi-turn growth, short random branches). ``weights`` overrides how often each kind
    is drawn; a request builds on a system prompt with probability ``p_prompt`` (else on an
    earlier sequence) and repeats its base exactly with probability ``p_bare``."""
    rng = random.Random(seed)
    ps = page_size

    def block(k: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(k * ps)]

    prompts = [block(rng.randint(1, 3)) for _ in range(n_prompts)]
    seqs: list[list[int]] = []
    overrides = weights
    weights = {"request": 10, "chunked": 2, "match": 4, "lock": 3, "unlock": 3, "evict": 3,
               "evict_mamba": 2, "evict_host": 2, "evict_mamba_host": 2, "ack": 4, "events": 4,
               "load": 3, "pin": 1, "unpin": 1, "prefetch": 1, "prefetch_done": 1}
    weights.update(overrides or {})
    kinds, w = zip(*weights.items(), strict=True)
    ops: list[dict] = []
    while len(ops) < n:
        i = len(ops)
        kind = rng.choices(kinds, w)[0]
        if kind in ("request", "chunked"):
            base = rng.choice(seqs) if seqs and rng.random() < 1 - p_prompt else rng.choice(prompts)
            if len(base) > 16 * ps:  # keep requests well inside the small pools
                base = rng.choice(prompts)
            extra = 0 if kind == "request" and rng.random() < p_bare else rng.randint(1 if kind == "request" else 2, 3)
            tokens = base + block(extra)
            if not tokens:
                tokens = block(1)
            seqs = (seqs + [tokens])[-24:]
            op = {"op": kind, "tokens": tokens}
            if kind == "chunked":
                op["chunk"] = ps * rng.randint(1, 2)
        elif kind in ("match", "lock", "load", "pin"):
            if not seqs:
                continue
            # locks also go to shared prompts, which end at split nodes that hold no state
            t = rng.choice(prompts) if kind == "lock" and rng.random() < 0.3 else rng.choice(seqs)
            cut = len(t) if kind != "match" else rng.randint(1, len(t))
            op = {"op": kind, "tokens": t[:cut]}
            if kind == "load":
                op["quota"] = rng.choice([None, 4, 64])
            if kind == "pin":
                op["mamba"] = rng.random() < 0.5
            if kind == "lock":
                op["exact"] = rng.random() < 0.5
        elif kind in ("unlock", "unpin", "ack"):
            op = {"op": kind, "k": rng.randrange(1 << 16)}
        elif kind in ("evict", "evict_host"):
            op = {"op": kind, "n": rng.randint(1, 12 * ps)}
        elif kind in ("evict_mamba", "evict_mamba_host"):
            op = {"op": kind, "n": rng.randint(1, 3)}
        elif kind == "prefetch":
            if not seqs:
                continue
            t = rng.choice(seqs) + block(rng.randint(1, 2))
            op = {"op": kind, "tokens": t, "split": ps * rng.randint(0, len(t) // ps - 1), "req": f"p{i}"}
        else:
            op = {"op": kind}
        ops.append(op)
    return ops


def make_script(seed: int, n: int, *, page_size: int = 1, write_policy: str | None = None,
                legacy: Iterable[str] = (), manual_acks: bool = True, cache: str = "tiered",
                storage: bool = True, profile: bool = True, scale: int = 1) -> dict:
    """A random script. With ``profile``, a single legacy switch brings its
    :data:`TARGET_PROFILES` settings (an explicit ``write_policy`` still wins)."""
    legacy = sorted(legacy)
    prof = TARGET_PROFILES.get(legacy[0], {}) if profile and len(legacy) == 1 else {}
    config = default_config(page_size, write_policy or "write_through", legacy, storage and cache == "tiered", seed, scale)
    for key, value in prof.get("config", {}).items():
        if key == "write_policy" and write_policy is not None:
            continue
        config[key] = value * page_size if key.endswith("_tokens") else value
    return {
        "cache": cache, "manual_acks": manual_acks, "seed": seed, "config": config,
        "ops": generate_ops(seed, n, page_size, weights=prof.get("weights"), **prof.get("shape", {})),
    }


# -- running ------------------------------------------------------------------------------------------
def run_script(script: dict, integrity_every: int = 1, progress: Callable[[int], None] | None = None,
               stop_at_failure: bool = True, count_events: bool = False, sample_nodes: int = 0) -> FuzzReport:
    """Run a script, checking after every operation. Stops at the first failure.

    With ``count_events`` the report's ``extras["events"]`` counts the cache's events by kind
    (slower: every event is built). With ``sample_nodes`` = k, ``extras["nodes"]`` is the mean
    number of nodes (root excluded) over every k-th operation.

    The cache is built and driven under ``torch.inference_mode()``, as a server's scheduler loop
    runs: torch keeps no autograd records or version counts for its tensors, which makes a
    fuzzing run about 14% faster. The cache never leaves this function, so none of its
    (inference) tensors can meet code that runs outside that mode."""
    with torch.inference_mode():
        return _run_script(script, integrity_every, progress, stop_at_failure, count_events, sample_nodes)


def _run_script(script: dict, integrity_every: int, progress: Callable[[int], None] | None,
                stop_at_failure: bool, count_events: bool, sample_nodes: int) -> FuzzReport:
    cache = make_cache(script)
    state = DriverState()
    events: dict[str, int] = {}
    if count_events:
        def count(event) -> None:
            events[event.kind.value] = events.get(event.kind.value, 0) + 1
        cache.events.subscribe(count)
    sizes: list[int] = []
    start = time.perf_counter()
    failure = None
    i = -1
    for i, op in enumerate(script["ops"]):
        failure = _step(cache, state, op, i, integrity_every)
        if progress is not None:
            progress(i)
        if sample_nodes and i % sample_nodes == sample_nodes - 1:
            sizes.append(cache.num_nodes())
        if failure is not None and stop_at_failure:
            break
    report = FuzzReport(i + 1, time.perf_counter() - start, dict(state.counts), failure, script)
    if count_events:
        report.extras["events"] = events
    if sample_nodes:
        report.extras["nodes"] = sum(sizes) / len(sizes) if sizes else float(cache.num_nodes())
    return report


def _step(cache, state: DriverState, op: dict, i: int, integrity_every: int) -> FuzzFailure | None:
    try:
        apply(cache, state, op)
    except InvalidInputError as exc:  # a script can only be invalid through a broken tree
        return FuzzFailure(i, type(exc).__name__, str(exc))
    except (AssertionError, RuntimeError, KeyError, IndexError) as exc:
        return FuzzFailure(i, type(exc).__name__, f"{exc}")
    violations = check_invariants(cache, held_kv=0, held_states=0)
    if not violations and integrity_every and i % integrity_every == 0:
        violations = check_integrity(cache)
    if violations:
        first = violations[0]
        return FuzzFailure(i, first.invariant, "; ".join(map(str, violations[:3])))
    return None


def run_ops_recorded(cache, ops: list[dict], recorder) -> FuzzFailure | None:
    """Apply ``ops`` to ``cache`` under ``recorder``, checking invariants after each; the first
    failure (or ``None``)."""
    state = DriverState()
    with recorder:
        for i, op in enumerate(ops):
            failure = _step(cache, state, op, i, integrity_every=1)
            if failure is not None:
                return failure
    return None


def replay(script: dict | str | Path, integrity_every: int = 1) -> FuzzReport:
    """Run a saved script (a dict, a JSON string or a path to a JSON file)."""
    if isinstance(script, Path) or (isinstance(script, str) and not script.lstrip().startswith("{")):
        script = json.loads(Path(script).read_text(encoding="utf-8"))
    elif isinstance(script, str):
        script = json.loads(script)
    check_script(script)
    return run_script(script, integrity_every)


def check_script(script: object) -> None:
    """Raise InvalidInputError with one clear sentence unless ``script`` is a well-formed script."""
    if not isinstance(script, dict):
        raise InvalidInputError(f"a script is a JSON object, got {type(script).__name__}")
    if script.get("cache", "tiered") not in ("tiered", "device"):
        raise InvalidInputError(f"script 'cache' must be 'tiered' or 'device', got {script.get('cache')!r}")
    if not isinstance(script.get("config"), dict):
        raise InvalidInputError("script has no 'config' object")
    ops = script.get("ops")
    if not isinstance(ops, list):
        raise InvalidInputError("script has no 'ops' list")
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in OPERATIONS:
            raise InvalidInputError(f"script op {i}: unknown operation {op!r}")
        for key in ("tokens",):
            if key in op and not (isinstance(op[key], list) and all(type(t) is int for t in op[key])):
                raise InvalidInputError(f"script op {i}: '{key}' must be a list of ints")
        for key in ("n", "k", "chunk", "split"):
            if key in op and (type(op[key]) is not int or op[key] < 0):
                raise InvalidInputError(f"script op {i}: '{key}' must be a non-negative int")


# -- shrinking ----------------------------------------------------------------------------------------
def shrink(script: dict, failure: FuzzFailure, max_runs: int = 3000) -> dict:
    """Reduce ``script`` to a small one that still fails with the same signature.

    Alternates delta debugging over the operation list (remove chunks, then single operations)
    with simplifying single operations (shorter token lists, smaller numbers, "complete every
    ack" instead of one) and, once the operations stop shrinking, smaller pools (a full pool is
    reached in fewer operations); until nothing changes or ``max_runs`` replays were spent.
    """
    integrity = 1 if failure.kind == "INTEGRITY" else 0
    runs = 0
    config = dict(script["config"])
    page_size = config.get("page_size", 1)

    def fails_with(candidate_config: dict, candidate: list[dict]) -> bool:
        nonlocal runs
        runs += 1
        try:
            report = run_script({**script, "config": candidate_config, "ops": candidate}, integrity_every=integrity)
        except InvalidInputError:  # pools too small for this configuration
            return False
        return report.failure is not None and report.failure.signature() == failure.signature()

    def fails(candidate: list[dict]) -> bool:
        return fails_with(config, candidate)

    def budget() -> bool:
        return runs < max_runs

    ops = script["ops"][: failure.step + 1]
    while budget():
        before = (list(ops), dict(config))
        ops = _ddmin(ops, fails, budget)
        ops = _simplify(ops, fails, budget, page_size)
        if ops == before[0] and len(ops) <= 24:
            ops = _drop_pairs(ops, fails, budget)
        if ops == before[0]:
            config = _smaller_pools(config, ops, fails_with, budget, page_size)
        if (ops, config) == before:
            break
    return {**script, "config": config, "ops": ops}


_POOL_FIELDS = (("host_kv_tokens", True), ("device_kv_tokens", True), ("host_mamba_slots", False),
                ("device_mamba_slots", False))


def _smaller_pools(config: dict, ops: list[dict], fails_with: Callable[[dict, list[dict]], bool],
                   budget: Callable[[], bool], page_size: int) -> dict:
    """Halve (else shrink by one page or slot) each pool while the script still fails."""
    for name, tokens in _POOL_FIELDS:
        unit = page_size if tokens else 1
        value = config.get(name)
        while isinstance(value, int) and value > unit and budget():
            for smaller in (max(unit, value // 2 // unit * unit), value - unit):
                candidate = {**config, name: smaller}
                if smaller < value and fails_with(candidate, ops):
                    config, value = candidate, smaller
                    break
            else:
                break
    return config


def _ddmin(ops: list[dict], fails: Callable[[list[dict]], bool], budget: Callable[[], bool]) -> list[dict]:
    n = 2
    while len(ops) >= 2 and budget():
        size = max(1, len(ops) // n)
        for start in range(0, len(ops), size):
            candidate = ops[:start] + ops[start + size :]
            if candidate and fails(candidate):
                ops = candidate
                n = max(n - 1, 2)
                break
        else:
            if size == 1:
                break
            n = min(len(ops), n * 2)
    return ops


def _drop_pairs(ops: list[dict], fails: Callable[[list[dict]], bool], budget: Callable[[], bool]) -> list[dict]:
    """Try removing two operations at once (a pair can be needed only together: a lock and its
    unlock, a pin and its release)."""
    for i in range(len(ops)):
        for j in range(i + 1, len(ops)):
            if not budget():
                return ops
            candidate = ops[:i] + ops[i + 1 : j] + ops[j + 1 :]
            if candidate and fails(candidate):
                return candidate
    return ops


def _variants(op: dict, page_size: int) -> list[dict]:
    """Simpler versions of one operation, simplest first."""
    out = []
    if op["op"] == "ack":
        out.append({"op": "ack_all"})
    tokens = op.get("tokens")
    if tokens and len(tokens) > page_size:
        for keep in (page_size, len(tokens) // 2 - (len(tokens) // 2) % page_size, len(tokens) - page_size):
            if 0 < keep < len(tokens):
                variant = {**op, "tokens": tokens[:keep]}
                if "split" in op:
                    variant["split"] = min(op["split"], max(0, keep - page_size))
                out.append(variant)
    for key, low in (("n", 1), ("k", 0), ("chunk", page_size), ("split", 0), ("quota", None)):
        if key in op and op[key] != low:
            out.append({**op, key: low})
    return out


def _simplify(ops: list[dict], fails: Callable[[list[dict]], bool], budget: Callable[[], bool],
              page_size: int) -> list[dict]:
    i = 0
    while i < len(ops) and budget():
        for variant in _variants(ops[i], page_size):
            candidate = ops[:i] + [variant] + ops[i + 1 :]
            if fails(candidate):
                ops = candidate
                break
        else:
            i += 1
    return ops


def episode_seed(seed: int, episode: int) -> int:
    """The seed of one episode of a run: the run's own seed for the first, then derived ones
    (stable across Python versions and machines)."""
    return seed if episode == 0 else random.Random(f"{seed}/{episode}").getrandbits(40)


def episode_length(legacy: Iterable[str] = (), episode: int | None = None) -> int:
    """Operations per episode: ``episode`` when given, else the single legacy switch's profile
    value, else :data:`DEFAULT_EPISODE`."""
    if episode is not None:
        if episode < 1:
            raise InvalidInputError(f"an episode needs at least 1 operation, got {episode}")
        return episode
    legacy = sorted(legacy)
    if len(legacy) == 1:
        return TARGET_PROFILES.get(legacy[0], {}).get("episode", DEFAULT_EPISODE)
    return DEFAULT_EPISODE


def fuzz(seed: int = 0, ops: int = 10_000, *, page_size: int = 1, write_policy: str | None = None,
         legacy: Iterable[str] = (), manual_acks: bool = True, cache: str = "tiered",
         integrity_every: int = 1, do_shrink: bool = True, count_events: bool = False,
         episode: int | None = None, scale: int = 1, jobs: int = 1,
         progress: Callable[[int], None] | None = None) -> FuzzReport:
    """Run ``ops`` random operations in episodes (see the module docstring); stop at the first
    failure and, with ``do_shrink``, shrink it (``report.shrunk``).

    ``report.script`` is the last episode's script (the failing one, when one failed) and
    ``report.failure.step`` indexes into it; ``report.ops_run`` counts the operations of every
    episode up to the failure, so it is the number of operations until the first failure.
    ``report.seconds`` is wall time (script generation and, with jobs, process start-up
    included). ``report.extras`` gives ``episodes`` (how many ran), ``episode`` (the last one's
    number), ``episode_length``, ``nodes`` (mean tree size, sampled every 64 operations) and,
    with ``count_events``, ``events``. ``scale`` multiplies the pools (see
    :func:`default_config`); a legacy profile's pool sizes are not scaled.

    ``jobs > 1`` runs episodes in that many worker processes. The result does not depend on it:
    episodes are independent, and the first failing episode *in episode order* is reported.
    ``progress(i)`` is called with the number of operations done so far, minus one (per
    operation with one job, per episode with several)."""
    if ops < 1:
        raise InvalidInputError(f"ops must be at least 1, got {ops}")
    if jobs < 1:
        raise InvalidInputError(f"jobs must be at least 1, got {jobs}")
    length = episode_length(legacy, episode)
    task = _EpisodeTask(seed, page_size, write_policy, tuple(sorted(legacy)), manual_acks, cache, integrity_every,
                        count_events, scale)
    plan = [(number, min(length, ops - start)) for number, start in enumerate(range(0, ops, length))]
    start_time = time.perf_counter()
    total = FuzzReport(0, 0.0, {})
    events: dict[str, int] = {}
    node_samples: list[float] = []
    for report in _episode_reports(task, plan, jobs, progress):
        total.ops_run += report.ops_run
        for kind, n in report.counts.items():
            total.counts[kind] = total.counts.get(kind, 0) + n
        for kind, n in report.extras.get("events", {}).items():
            events[kind] = events.get(kind, 0) + n
        node_samples.append(report.extras["nodes"] * report.ops_run)
        total.script, total.failure = report.script, report.failure
        total.extras["episode"] = report.extras["episode"]
        if progress is not None and jobs > 1:
            progress(total.ops_run - 1)
        if report.failure is not None:
            break
    total.seconds = time.perf_counter() - start_time
    total.extras.update(episodes=total.extras["episode"] + 1, episode_length=length,
                        nodes=sum(node_samples) / max(1, total.ops_run))
    if count_events:
        total.extras["events"] = events
    if total.failure is not None and do_shrink:
        total.shrunk = shrink(total.script, total.failure)
    return total


@dataclass(frozen=True)
class _EpisodeTask:
    """Everything an episode needs besides its number and length (picklable, for workers)."""

    seed: int
    page_size: int
    write_policy: str | None
    legacy: tuple[str, ...]
    manual_acks: bool
    cache: str
    integrity_every: int
    count_events: bool
    scale: int

    def script(self, number: int, n: int) -> dict:
        script = make_script(episode_seed(self.seed, number), n, page_size=self.page_size,
                             write_policy=self.write_policy, legacy=self.legacy, manual_acks=self.manual_acks,
                             cache=self.cache, scale=self.scale)
        script["episode"] = number
        return script

    def __call__(self, item: tuple[int, int], progress: Callable[[int], None] | None = None) -> FuzzReport:
        number, n = item
        report = run_script(self.script(number, n), self.integrity_every, progress, count_events=self.count_events,
                            sample_nodes=64)
        report.extras["episode"] = number
        return report


def _episode_reports(task: _EpisodeTask, plan: list[tuple[int, int]], jobs: int,
                     progress: Callable[[int], None] | None):
    """The episodes' reports in episode order; the caller stops at the first failure.

    With several jobs, ``jobs - 1`` worker processes and this one share the episodes: each
    worker has one episode queued behind the one it runs (so it never waits for this process),
    and this process runs the next unstarted episode whenever the one due next is not finished.
    Any episode may run anywhere; only the order of the reports is fixed."""
    if jobs == 1 or len(plan) == 1:
        done = 0
        for item in plan:
            step = None if progress is None else (lambda i, done=done: progress(done + i))
            report = task(item, step)
            done += report.ops_run
            yield report
        return
    import multiprocessing

    # spawn, not fork: a forked copy of a process that already ran torch may hang in its thread pool
    with multiprocessing.get_context("spawn").Pool(jobs - 1, initializer=_init_worker) as pool:
        remote: dict[int, multiprocessing.pool.AsyncResult] = {}
        finished: dict[int, FuzzReport] = {}
        started = 0
        for due in range(len(plan)):
            while due not in finished:
                while started < len(plan) and sum(not r.ready() for r in remote.values()) < 2 * (jobs - 1):
                    remote[started] = pool.apply_async(_run_remote, (task, plan[started]))
                    started += 1
                if due in remote and (remote[due].ready() or started == len(plan)):
                    report = remote.pop(due).get()
                    if report.script is None and due == len(plan) - 1:  # made again, not sent
                        report.script = task.script(*plan[due])
                    finished[due] = report
                elif started < len(plan):
                    finished[started] = task(plan[started])
                    started += 1
            yield finished.pop(due)


def _run_remote(task: _EpisodeTask, item: tuple[int, int]) -> FuzzReport:
    """Run one episode in a worker. Only a failing episode's script is sent back: the caller can
    make a clean one again from its seed when it needs it (the last episode's)."""
    report = task(item)
    if report.failure is None:
        report.script = None
    return report


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
