"""The differential runner: the same operation scripts on himamba and on SGLang 0.5.11.

:func:`run_differential` generates seeded scripts (the fuzzer's JSON operations, see
:mod:`himamba.sim.fuzz.generate`), applies each operation to both caches and compares, after
every operation, its result (or the exception it raised) and the whole state (see
:mod:`himamba.differential.sides`). A sequence stops at its first divergence, which is shrunk to
a minimal script and, when the run is not already the upstream profile, explained: the runner
names each switch of the ``sglang-0.5.11`` profile whose addition alone makes the shrunk script
agree.

Each operation runs on both sides as :mod:`himamba.sim.vocabulary` declares it (requests in the
scheduler's order, :mod:`himamba.sim.side_runs`). Acks complete at once on both sides (``ack``
operations do nothing); storage is off (``prefetch`` operations do nothing).

Size: over 300 lines because applying an operation to both sides, comparing their outcomes and
states, and shrinking a divergence are one loop read from top to bottom.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from himamba.cache.config import CacheConfig
from himamba.cache.legacy import LEGACY_PROFILES, normalize_legacy
from himamba.differential.sides import HimambaSide, Side, UpstreamSide
from himamba.errors import HiMambaError, InvalidInputError
from himamba.sim.fuzz.generate import episode_seed, make_script
from himamba.sim.fuzz.shrink import reduce_ops
from himamba.sim.side_runs import SideHeld
from himamba.sim.vocabulary import apply_on_side

PROFILE = "sglang-0.5.11"


@dataclass
class Divergence:
    """Where one script first differed: the op index, what differed, and both sides' views."""

    seq: int
    step: int
    op: dict
    what: str
    ours: object
    theirs: object
    script: dict
    shrunk: dict | None = None
    explained_by: list[str] = field(default_factory=list)

    def describe(self) -> str:
        why = f"; explained by {', '.join(self.explained_by)}" if self.explained_by else ""
        return (f"sequence {self.seq} ({self.script['cache']}), op {self.step} {self.op['op']}: {self.what} differs"
                f"\n  himamba:       {_short(self.ours)}\n  sglang-0.5.11: {_short(self.theirs)}{why}")


@dataclass
class DifferentialReport:
    """Totals of a run: operations compared and agreeing, per cache, and the divergences."""

    ops: dict[str, int] = field(default_factory=dict)
    agree: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    ended_by_failure: dict[str, int] = field(default_factory=dict)  # both raised the same: sequence over
    divergences: list[Divergence] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        for cache in sorted(self.ops):
            bad = sum(d.script["cache"] == cache for d in self.divergences)
            lines.append(f"{cache}: agree {self.agree[cache]}/{self.ops[cache]} ops, "
                         f"{self.sequences[cache] - bad}/{self.sequences[cache]} sequences without divergence, "
                         f"{self.ended_by_failure.get(cache, 0)} ended early by the same upstream failure on both")
        total_ops, total_agree = sum(self.ops.values()), sum(self.agree.values())
        lines.append(f"agree {total_agree}/{total_ops} ops, {len(self.divergences)} divergence(s)")
        return "\n".join(lines)


def _short(value: object, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


# -- one operation -------------------------------------------------------------------------------------
_Held = SideHeld


def apply_op(side: Side, held: SideHeld, op: dict):
    """Apply one script operation to ``side`` as :mod:`himamba.sim.vocabulary` declares it;
    returns a comparable result."""
    return apply_on_side(side, held, op)


def _outcome(side: Side, held: _Held, op: dict):
    try:
        return "ok", apply_op(side, held, op)
    except Exception as exc:  # noqa: BLE001 - an upstream failure is a result to compare
        return "raised", exc


def _view(kind: str, value: object) -> object:
    return f"{type(value).__name__}: {value}" if kind == "raised" else value


def _masked(text: str) -> str:
    """A message with its numbers masked: node ids are each implementation's own."""
    return re.sub(r"\d+", "#", text)


def _same_exception(ours: BaseException, theirs: BaseException) -> bool:
    """himamba reproduces an upstream failure when its message begins with upstream's exception
    class and message (for an assertion: when it is an assertion whose message begins with
    upstream's); numbers (node ids) are not compared."""
    if type(theirs) is AssertionError:
        return isinstance(ours, AssertionError) and _masked(str(ours)).startswith(_masked(str(theirs)))
    return isinstance(ours, HiMambaError) and _masked(str(ours)).startswith(_masked(f"{type(theirs).__name__}: {theirs}"))


# -- one script --------------------------------------------------------------------------------------
def compare_script(script: dict, on_op: Callable[[], None] | None = None) -> tuple[int, Divergence | None]:
    """Run ``script`` on both sides; (ops that agreed, the first divergence or ``None``)."""
    config = CacheConfig(**{**script["config"], "legacy": frozenset(script["config"].get("legacy", ()))})
    tiered = script["cache"] == "tiered"
    with torch.inference_mode():
        ours, theirs = HimambaSide(config, tiered), UpstreamSide(config, tiered)
        held_ours, held_theirs = _Held(), _Held()
        for i, op in enumerate(script["ops"]):
            if on_op is not None:
                on_op()
            kind_a, a = _outcome(ours, held_ours, op)
            kind_b, b = _outcome(theirs, held_theirs, op)
            if kind_a == "raised" or kind_b == "raised":
                if kind_a == kind_b and _same_exception(a, b):
                    return i + 1, None
                return i, Divergence(0, i, op, "exception", _view(kind_a, a), _view(kind_b, b), script)
            if a != b:
                return i, Divergence(0, i, op, "result", a, b, script)
            snap_a, snap_b = ours.snapshot(), theirs.snapshot()
            if snap_a != snap_b:
                what = next(k for k in snap_a if snap_a[k] != snap_b[k])
                return i, Divergence(0, i, op, what, snap_a[what], snap_b[what], script)
    return len(script["ops"]), None


def _diverges_the_same(script: dict, divergence: Divergence) -> Callable[[list[dict]], bool]:
    def fails(ops: list[dict]) -> bool:
        try:
            _, d = compare_script({**script, "ops": ops})
        except InvalidInputError:
            return False
        return d is not None and d.what == divergence.what and d.op["op"] == divergence.op["op"]
    return fails


def explain(script: dict) -> list[str]:
    """The switches of the ``sglang-0.5.11`` profile that explain ``script``'s divergence: each
    one whose addition alone makes the script agree; when none does, each pair (``"B10+B14"``)."""
    legacy = normalize_legacy(script["config"].get("legacy", ()))
    candidates = sorted(LEGACY_PROFILES[PROFILE] - legacy, key=lambda s: int(s[1:]))

    def agrees(extra: tuple[str, ...]) -> bool:
        config = {**script["config"], "legacy": sorted(legacy | set(extra))}
        try:
            return compare_script({**script, "config": config})[1] is None
        except InvalidInputError:
            return False

    names = [s for s in candidates if agrees((s,))]
    if not names:
        names = [f"{a}+{b}" for i, a in enumerate(candidates) for b in candidates[i + 1:] if agrees((a, b))]
    return names


# -- a run -------------------------------------------------------------------------------------------
def differential_scripts(seqs: int, ops: int, seed: int = 0, cache: str = "both",
                         legacy: Iterable[str] = (), write_policy: str | None = None) -> list[dict]:
    """The run's scripts: ``seqs`` seeded scripts of ``ops`` operations; with ``cache="both"``
    the even ones on the device cache, the odd ones tiered; write policies rotate over the
    three unless ``write_policy`` is given."""
    if cache not in ("both", "device", "tiered"):
        raise InvalidInputError(f"cache must be 'device', 'tiered' or 'both', got {cache!r}")
    for name, value in (("seqs", seqs), ("ops", ops)):
        if not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    legacy = sorted(normalize_legacy(legacy))
    policies = ("write_through", "write_through_selective", "write_back")
    scripts = []
    for i in range(seqs):
        kind = cache if cache != "both" else ("device", "tiered")[i % 2]
        policy = write_policy or policies[(i // 2) % 3]
        script = make_script(episode_seed(seed, i), ops, legacy=legacy, manual_acks=False, cache=kind,
                             storage=False, write_policy=policy, profile=False)
        script["config"]["device"] = "cpu"
        script["seq"] = i
        scripts.append(script)
    return scripts


def run_differential(seqs: int = 60, ops: int = 100, seed: int = 0, cache: str = "both",
                     legacy: Iterable[str] = (), do_shrink: bool = True, do_explain: bool = True,
                     progress: Callable[[], None] | None = None) -> DifferentialReport:
    """Compare himamba (with ``legacy``) and SGLang 0.5.11 on ``seqs`` seeded sequences of
    ``ops`` operations. Each divergence is shrunk (``do_shrink``) and, unless ``legacy`` holds
    the whole upstream profile, explained (``do_explain``). ``progress()`` is called per sequence."""
    report = DifferentialReport()
    profile = LEGACY_PROFILES[PROFILE]
    for script in differential_scripts(seqs, ops, seed, cache, legacy):
        kind = script["cache"]
        agreed, divergence = compare_script(script)
        report.ops[kind] = report.ops.get(kind, 0) + (agreed + (divergence is not None))
        report.agree[kind] = report.agree.get(kind, 0) + agreed
        report.sequences[kind] = report.sequences.get(kind, 0) + 1
        if divergence is None and agreed < len(script["ops"]):
            report.ended_by_failure[kind] = report.ended_by_failure.get(kind, 0) + 1
        if divergence is not None:
            divergence.seq = script["seq"]
            if do_shrink:
                ops_ = reduce_ops(script["ops"][: divergence.step + 1], _diverges_the_same(script, divergence),
                                  max_runs=400)
                divergence.shrunk = {**script, "ops": ops_}
            if do_explain and not profile <= normalize_legacy(script["config"]["legacy"]):
                divergence.explained_by = explain(divergence.shrunk or script)
            report.divergences.append(divergence)
        if progress is not None:
            progress()
    return report
