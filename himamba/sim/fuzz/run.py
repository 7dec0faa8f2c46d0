"""Running a script: build the cache it names, apply its operations, check after every one."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from himamba.cache.config import CacheConfig
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.cache.integrity import check_integrity
from himamba.cache.invariants import check_invariants
from himamba.cache.mamba import MambaRadixCache
from himamba.errors import InvalidInputError
from himamba.sim.ops import DriverState, apply, check_op
from himamba.sim.trace_io import parse_json, read_json_file
from himamba.validate import check_bool


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
    """Outcome of a run: operations done, per-kind counts, time, and the failure if any.
    ``interrupted``: the run was stopped (Ctrl-C) before its end; the figures count what ran."""

    ops_run: int
    seconds: float
    counts: dict[str, int]
    failure: FuzzFailure | None = None
    script: dict | None = None
    shrunk: dict | None = None
    extras: dict = field(default_factory=dict)
    interrupted: bool = False

    @property
    def ops_per_s(self) -> float:
        return self.ops_run / self.seconds if self.seconds else float("inf")


def make_cache(script: dict):
    """Build the cache a script names."""
    known = {f.name for f in dataclasses.fields(CacheConfig)}
    unknown = sorted(set(script["config"]) - known)
    if unknown:
        raise InvalidInputError(f"script config has unknown field(s) {unknown}; known: {sorted(known)}")
    legacy = script["config"].get("legacy", ())
    if not isinstance(legacy, (list, tuple)) or any(type(name) is not str for name in legacy):
        raise InvalidInputError(f"script config 'legacy' must be a list of switch names, got {legacy!r:.80}")
    cfg = CacheConfig(**{**script["config"], "legacy": frozenset(legacy)})
    if script.get("cache", "tiered") == "device":
        return MambaRadixCache(cfg)
    return HiMambaRadixCache(cfg, manual_acks=script.get("manual_acks", False))



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
    faults = getattr(getattr(cache, "cache_controller", None), "faults", None)
    if faults is not None:
        report.extras["faults"] = dict(faults.injected)
    return report


def _step(cache, state: DriverState, op: dict, i: int, integrity_every: int) -> FuzzFailure | None:
    try:
        apply(cache, state, op)
    except InvalidInputError as exc:  # a script can only be invalid through a broken tree
        return FuzzFailure(i, type(exc).__name__, str(exc))
    except (AssertionError, RuntimeError, KeyError, IndexError) as exc:
        return FuzzFailure(i, type(exc).__name__, f"{exc}")
    violations = check_invariants(cache, held_kv=state.held_kv(), held_states=state.held_states())
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
        script = read_json_file(script, "script")
    elif isinstance(script, str):
        script = parse_json(script, "script")
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
    check_bool(script.get("manual_acks", False), "script 'manual_acks'")
    for i, op in enumerate(ops):
        if isinstance(op, dict) and type(op.get("op")) is not str:  # a list there cannot be looked up
            raise InvalidInputError(f"script op {i}: 'op' must name an operation (a string), got {op.get('op')!r:.80}")
        check_op(i, op)

