"""Shrinking a failing script to a small one that fails the same way (delta debugging)."""

from __future__ import annotations

from collections.abc import Callable

from himamba.errors import InvalidInputError
from himamba.sim.fuzz.run import FuzzFailure, run_script


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


def reduce_ops(ops: list[dict], fails: Callable[[list[dict]], bool], max_runs: int = 1000,
               page_size: int = 1) -> list[dict]:
    """Reduce an operation list while ``fails(candidate)`` stays true (the same delta debugging
    and per-operation simplification as :func:`shrink`, pools left alone); at most ``max_runs``
    calls of ``fails``."""
    runs = 0

    def counted(candidate: list[dict]) -> bool:
        nonlocal runs
        runs += 1
        return fails(candidate)

    def budget() -> bool:
        return runs < max_runs

    while budget():
        before = list(ops)
        ops = _simplify(_ddmin(ops, counted, budget), counted, budget, page_size)
        if ops == before:
            break
    return ops


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

