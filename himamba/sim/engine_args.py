"""The engine's arguments: their checks, shared by :class:`~himamba.sim.engine.Engine` and sweeps."""

from __future__ import annotations

from typing import Any

from himamba.errors import InvalidInputError

CHECKPOINTS = (None, "sequence_end", "page_aligned")


def check_engine_args(**args: Any) -> None:
    """Raise InvalidInputError for an :class:`Engine` argument out of range (``chunk_size``,
    ``decode_tokens``, ``max_running``: positive ints; ``evict_headroom``: a non-negative int;
    ``load_back_quota``: ``None`` or a non-negative int; ``checkpoint``: one of
    :data:`CHECKPOINTS`; ``step_ms``: ``None`` or a positive number). Arguments not given are not checked."""
    for name, v in args.items():
        if name == "checkpoint":
            if v not in CHECKPOINTS:
                raise InvalidInputError(f"checkpoint must be one of {CHECKPOINTS}, got {v!r}")
            continue
        if name == "step_ms":
            if v is not None and (type(v) not in (int, float) or not 0 < v < float("inf")):
                raise InvalidInputError(f"step_ms must be None or a positive number of milliseconds, got {v!r}")
            continue
        if name == "load_back_quota" and v is None:
            continue
        low = 1 if name in ("chunk_size", "decode_tokens", "max_running") else 0
        if type(v) is not int or v < low:
            kind = "a positive int" if low else "a non-negative int" + (" or None" if name == "load_back_quota" else "")
            raise InvalidInputError(f"{name} must be {kind}, got {v!r}")
