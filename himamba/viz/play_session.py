"""Play session: a cache driven one action at a time by a person, with undo — the logic under
the :class:`~himamba.viz.playground.Playground` widget, usable without widgets.

    s = PlaySession("tiered, small")
    s.do("serve", "1 2 3 4")        # the steps it recorded
    s.do("evict", 4)
    s.undo()                        # back to the state after the serve
    s.script()                      # a script `himamba replay` runs (the fuzzer's format)

Each action is one or two of the fuzzer's JSON operations (:mod:`himamba.sim.ops`), so a session
replays the same way anywhere. On a tiered cache whose acks are not taken by hand, every action
ends with the scheduler's checks (``events``: acks processed, locks of finished writes and loads
released), as a server's loop would run them between batches. Undo rebuilds the cache from its config and replays every action
but the last (the cache is deterministic: its clock counts operations). An action whose
operation raises is kept (replaying it fails the same way): its recording ends with the failure
step, and ``error`` holds the exception. Bad input (text that is not token ids, an unknown
action) raises :class:`~himamba.errors.InvalidInputError` and changes nothing.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from himamba.cache.invariants import check_invariants
from himamba.errors import InvalidInputError
from himamba.observe.recorder import Recorder, Step
from himamba.sim.fuzz.run import make_cache
from himamba.sim.ops import DriverState, apply, check_op

_SMALL = {"device": "cpu", "device_kv_tokens": 24, "host_kv_tokens": 64, "device_mamba_slots": 4,
          "host_mamba_slots": 8}

#: Ready-made caches: name -> (cache kind, config fields, manual acks).
PRESETS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "tiered, small": ("tiered", dict(_SMALL), False),
    "tiered, small, acks by hand": ("tiered", dict(_SMALL), True),
    "tiered, write-back": ("tiered", {**_SMALL, "write_policy": "write_back"}, False),
    "tiered, B1 on (old cascade)": ("tiered", {**_SMALL, "legacy": ["B1"]}, True),
    "device only, small": ("device", {k: v for k, v in _SMALL.items() if "host" not in k}, False),
}

#: Actions: name -> (what the argument is, help text).
ACTIONS: dict[str, tuple[str, str]] = {
    "serve": ("tokens", "a whole request: match, lock, load back, allocate, insert, unlock"),
    "match": ("tokens", "match_prefix: split the edge the query ends in, refresh the LRU lists"),
    "insert": ("tokens", "a request computed from scratch: new KV for every token; insert frees duplicates"),
    "evict": ("count", "evict(n): free at least n device KV tokens, oldest leaves first"),
    "evict_host": ("count", "evict_host(n): free at least n host KV tokens"),
    "lock": ("tokens", "inc_lock_ref on the deepest device node the tokens match"),
    "unlock": ("none", "dec_lock_ref on the last node locked here"),
    "pin": ("tokens", "protect_host on the deepest host node the tokens match"),
    "unpin": ("none", "release_host on the last node pinned here"),
    "load back": ("tokens", "init_load_back of the host part of the match"),
    "ack": ("none", "complete every transfer in flight, then run the scheduler's checks"),
}
_TIERED_ONLY = {"evict_host", "pin", "unpin", "load back", "ack"}


def parse_tokens(text: Any) -> list[int]:
    """``"1 2 3"``, ``"1,2,3"`` or a list of ints as a list of token ids (non-negative)."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in re.split(r"[\s,;]+", str(text).strip().strip("[]")) if t]
    try:
        tokens = [int(t) for t in items]
    except (TypeError, ValueError):
        raise InvalidInputError(f"tokens must be whole numbers separated by spaces or commas, got {text!r}") from None
    if not tokens or any(t < 0 for t in tokens):
        raise InvalidInputError(f"give at least one token id, none negative; got {text!r}")
    return tokens


@dataclass
class Action:
    """One action of a session: its name, argument and the fuzzer operations it ran."""

    name: str
    arg: Any
    ops: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        return self.name if self.arg in (None, "") else f"{self.name} {self.arg}"


class PlaySession:
    """A cache built from ``preset`` (a :data:`PRESETS` name) or from ``cache`` ("tiered" or
    "device"), ``config`` (CacheConfig fields as a dict) and ``manual_acks``; see the module
    docstring. ``steps`` holds the last action's recorded steps, ``actions`` every action done."""

    def __init__(self, preset: str | None = "tiered, small", *, cache: str | None = None,
                 config: dict[str, Any] | None = None, manual_acks: bool = False) -> None:
        if cache is None:
            if preset not in PRESETS:
                raise InvalidInputError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
            cache, config, manual_acks = PRESETS[preset]
        if cache not in ("tiered", "device"):
            raise InvalidInputError(f"cache must be 'tiered' or 'device', got {cache!r}")
        self.preset = preset
        self._script = {"cache": cache, "config": copy.deepcopy(dict(config or {})), "manual_acks": bool(manual_acks),
                        "ops": []}
        self.actions: list[Action] = []
        self.steps: list[Step] = []
        self.error: BaseException | None = None
        self._rebuild([])

    @property
    def tiered(self) -> bool:
        return self._script["cache"] == "tiered"

    def _rebuild(self, actions: list[Action]) -> None:
        self.cache = make_cache(self._script)
        self._state = DriverState()
        for action in actions:
            for op in action.ops:
                try:
                    apply(self.cache, self._state, op)
                except Exception:  # noqa: BLE001, S112 - it failed the same way when first done
                    break

    def _ops(self, name: str, arg: Any) -> list[dict]:
        if name not in ACTIONS:
            raise InvalidInputError(f"action must be one of {', '.join(ACTIONS)}, got {name!r}")
        if name in _TIERED_ONLY and not self.tiered:
            raise InvalidInputError(f"{name} needs the tiered cache; this one is device only")
        what = ACTIONS[name][0]
        if what == "tokens":
            tokens = parse_tokens(arg)
            op = {"serve": "request", "insert": "request", "match": "match", "lock": "lock", "pin": "pin",
                  "load back": "load"}[name]
            return [{"op": op, "tokens": tokens, **({"fresh": True} if name == "insert" else {})}]
        if what == "count":
            try:
                n = int(arg)
            except (TypeError, ValueError):
                raise InvalidInputError(f"{name} needs a whole number of tokens, got {arg!r}") from None
            if n < 1:
                raise InvalidInputError(f"{name} needs at least 1 token, got {n}")
            return [{"op": name, "n": n}]
        if name == "unlock":
            return [{"op": "unlock", "k": max(len(self._state.locks) - 1, 0)}]
        if name == "unpin":
            return [{"op": "unpin", "k": max(len(self._state.pins) - 1, 0)}]
        return [{"op": "ack_all"}, {"op": "events"}]

    def do(self, name: str, arg: Any = None) -> list[Step]:
        """Do one action; returns (and keeps in ``steps``) the steps it recorded."""
        ops = self._ops(name, arg)
        if self.tiered and not self._script["manual_acks"] and ops[-1]["op"] != "events":
            ops.append({"op": "events"})
        for i, op in enumerate(ops):
            check_op(i, op)
        action = Action(name, arg if not isinstance(arg, (list, tuple)) else " ".join(map(str, arg)), ops)
        rec = Recorder(self.cache, skip={"op_begin", "op_end"})
        self.error = None
        with rec:
            for op in ops:
                try:
                    apply(self.cache, self._state, op)
                except Exception as exc:  # noqa: BLE001 - shown to the reader as the failure step
                    self.error = exc
                    break
        self.actions.append(action)
        self._script["ops"].extend(ops)
        self.steps = list(rec.steps)
        return self.steps

    def undo(self) -> Action | None:
        """Take back the last action (rebuild and replay the others); returns it, or ``None``."""
        if not self.actions:
            return None
        last = self.actions.pop()
        del self._script["ops"][len(self._script["ops"]) - len(last.ops):]
        self._rebuild(self.actions)
        self.steps, self.error = [], None
        return last

    def reset(self) -> None:
        """Forget every action: a fresh cache of the same config."""
        self.actions.clear()
        self._script["ops"].clear()
        self._rebuild([])
        self.steps, self.error = [], None

    def violations(self) -> list[str]:
        """The invariants the cache breaks now (empty: all hold)."""
        found = check_invariants(self.cache, held_kv=self._state.held_kv(), held_states=self._state.held_states())
        return [str(v) for v in found]

    def script(self) -> dict[str, Any]:
        """The session as a fuzzer script (``himamba replay`` runs it)."""
        return copy.deepcopy(self._script)
