"""One replay script, three trees: himamba's model, SGLang 0.5.11's cache and SGLang 0.5.23's
unified tree, each recorded by :class:`~himamba.observe.recorder.Recorder` into the same steps.

:func:`replay_on` runs a script (the JSON of ``himamba replay``: ``cache``, ``config``, ``ops``) on
``"himamba"`` and ``"sglang-0.5.11"`` (the differential runner's driver, over himamba's cache and
over upstream's own class) or ``"sglang-0.5.23"`` (the same
driver over :class:`~himamba.lens.unified_side.UnifiedSide`; in an environment without SGLang
0.5.23 it goes through :func:`himamba.lens.remote.replay_remote`). The unified tree is built
without a host tier: host-only operations (``evict_host``, ``evict_mamba_host``, ``events``,
``ack``, ``load``, ``prefetch``) do nothing there, and ``pin`` / ``unpin`` take and release the
tree's own host lock on the node the tokens end at (what an in-flight host operation holds). A
``pin`` with ``"exact": true`` pins that node on the tiered caches too (``protect_host`` /
``_protect_host_node``), state or not: the seed's scenario pins a stateless parent.

An operation that raises ends the run: its error is the replay's ``failure`` (the recorder keeps
the steps up to it), as ``himamba replay`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from himamba.observe.recorder import Recorder

TREES = ("himamba", "sglang-0.5.11", "sglang-0.5.23")
QUIET = ("lock", "unlock")


@dataclass
class Replay:
    """A recorded run: which tree, its recorder, what each operation returned, how it ended."""

    tree: str
    recorder: Recorder
    results: list[Any] = field(default_factory=list)
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        rec = self.recorder
        return {"tree": self.tree, "results": [repr(r) for r in self.results], "failure": self.failure,
                "initial": rec.initial.to_dict() if rec.initial else None, "steps": [s.to_dict() for s in rec.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Replay:
        from himamba.observe.recorder import Step
        from himamba.observe.snapshot import Snapshot

        rec = Recorder(None)
        rec.initial = Snapshot.from_dict(data["initial"]) if data.get("initial") else None
        before = rec.initial
        for d in data["steps"]:
            step = Step.from_dict(d, before)
            rec.steps.append(step)
            before = step.snapshot
        return cls(data["tree"], rec, list(data.get("results", [])), data.get("failure"))


def script_config(script: dict) -> Any:
    """The :class:`~himamba.cache.config.CacheConfig` a replay script's ``config`` names."""
    from himamba.cache.config import CacheConfig

    return CacheConfig(**{**script["config"], "legacy": frozenset(script["config"].get("legacy", ()))})


def replay_on(script: dict, tree: str = "himamba", core: str = "python", skip: tuple[str, ...] = QUIET,
              timeout: float = 120.0) -> Replay:
    """Run ``script`` on ``tree`` (one of :data:`TREES`; ``core`` picks 0.5.23's tree core) and
    record it."""
    from himamba.errors import InvalidInputError
    from himamba.sim.fuzz import check_script

    check_script(script)
    if tree not in TREES:
        raise InvalidInputError(f"unknown tree {tree!r}; expected one of {TREES}")
    if tree == "himamba":
        from himamba.differential.sides import HimambaSide

        return drive(HimambaSide(script_config(script), script["cache"] == "tiered"), script, tree, skip)
    if tree == "sglang-0.5.23":
        from himamba.lens.remote import replay_remote, unified_here

        if not unified_here():
            return Replay.from_dict(replay_remote(script, core=core, skip=skip, timeout=timeout))
        from himamba.lens.unified_side import UnifiedSide

        return drive(UnifiedSide(script_config(script), core), script, tree, skip)
    from himamba.differential.sides import UpstreamSide

    return drive(UpstreamSide(script_config(script), script["cache"] == "tiered"), script, tree, skip)


def replay_all(scripts: dict[str, dict], tree: str, core: str = "python", skip: tuple[str, ...] = QUIET,
               timeout: float = 240.0) -> dict[str, Replay]:
    """:func:`replay_on` of each named script on ``tree``; on 0.5.23 reached through its
    environment, all of them with one start of it."""
    if tree == "sglang-0.5.23":
        from himamba.lens.remote import replay_remote_many, unified_here

        if not unified_here():
            from himamba.sim.fuzz import check_script

            for script in scripts.values():
                check_script(script)
            dicts = replay_remote_many(list(scripts.values()), core, skip, timeout)
            return {name: Replay.from_dict(d) for name, d in zip(scripts, dicts, strict=True)}
    return {name: replay_on(script, tree, core, skip, timeout) for name, script in scripts.items()}


def drive(side: Any, script: dict, tree: str, skip: tuple[str, ...] = QUIET) -> Replay:
    """Apply ``script``'s operations to a differential side while recording its cache."""
    from types import SimpleNamespace

    import torch

    from himamba.differential.runner import apply_op

    held, pins = SimpleNamespace(locks=[], pins=[]), []  # what apply_op keeps between operations
    rec = Recorder(side.cache, skip=skip)
    out = Replay(tree, rec)
    with torch.inference_mode(), rec:
        for i, op in enumerate(script["ops"]):
            try:
                out.results.append(_pin_op(side, op, pins) if _is_unified_pin(side, op) else apply_op(side, held, op))
            except Exception as exc:  # noqa: BLE001 - an upstream failure ends the run and is reported
                out.failure = f"operation {i + 1} ({op['op']}): {type(exc).__name__}: {exc}"
                break
    return out


def _is_unified_pin(side: Any, op: dict) -> bool:
    """Pins the lens drives itself: every pin on the unified tree, and ``exact`` pins (of the node
    the tokens end at, with or without a state) on the tiered caches."""
    if op["op"] not in ("pin", "unpin"):
        return False
    return not side.tiered or op.get("exact", False) or (op["op"] == "unpin" and side.__dict__.get("_exact_pins"))


def _pin_op(side: Any, op: dict, pins: list[Any]) -> Any:
    unified = not side.tiered
    if op["op"] == "pin":
        node = side.node_at(op["tokens"])
        if node is None or node == side.root():
            return None
        side.pin(node) if unified else side.pin(node, False)
        pins.append(node)
        side.__dict__["_exact_pins"] = True
        return side.path(node)
    if pins:
        node = pins.pop(op["k"] % len(pins))
        side.unpin(node) if unified else side.unpin(node, False)
    return None
