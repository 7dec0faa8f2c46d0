"""The random driver's operations, each declared once: its fields, how often and how it is drawn,
how it runs on a himamba cache, and how it runs on a side of the differential runner.

The fuzzer (:mod:`himamba.sim.fuzz`), the stress tests, ``himamba replay`` and the differential
runner all read :data:`VOCABULARY`; :func:`apply` runs an operation on himamba,
:func:`apply_on_side` on a differential side, :func:`check_op` checks one read from a file.

A script is ``{"cache": "tiered" | "device", "config": {...CacheConfig fields...},
"manual_acks": bool, "ops": [{"op": name, ...}, ...]}``. Operations name concrete tokens, so a
script replays the same way anywhere. Operations that refer to earlier state (``unlock`` the k-th
held lock, complete the k-th ack in flight) pick modulo what exists and do nothing when nothing
does, so any sub-list of a script is still a valid script (that is what shrinking needs). On the
device cache the ``tiered_only`` operations do nothing.

Size: over 300 lines because every operation's four facets sit together, one declaration each;
apart, the fuzzer's draw, the driver and the differential would drift.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError, OracleError
from himamba.sim import held_requests
from himamba.sim.held_requests import HeldRequest, check_match
from himamba.sim.serving import checked_evict, chunked_prefill, serve
from himamba.sim.side_runs import SideHeld, chunked_on_side, request_on_side
from himamba.validate import check_bool, check_count, check_token_ids

TOKENS, COUNT, FLAG, ID = "tokens", "count", "flag", "id"


@dataclass
class DriverState:
    """What the driver holds between operations on a himamba cache."""

    locks: list[TreeNode] = field(default_factory=list)
    pins: list[TreeNode] = field(default_factory=list)
    requests: list[HeldRequest] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def held_kv(self) -> int:
        """Device KV slots the held requests own."""
        return held_requests.held_kv(self.requests) if self.requests else 0

    def held_states(self) -> int:
        """Device state slots the held requests own."""
        return held_requests.held_states(self.requests) if self.requests else 0


@dataclass
class Drawing:
    """The state of one random draw: the rng, the page size, the shared prompts and the sequences
    drawn so far (requests build on them), and the shape knobs of :func:`generate_ops
    <himamba.sim.fuzz.generate.generate_ops>`."""

    rng: random.Random
    page_size: int
    vocab: int
    p_prompt: float
    p_bare: float
    p_fresh: float
    prompts: list[list[int]] = field(default_factory=list)
    seqs: list[list[int]] = field(default_factory=list)
    index: int = 0

    def block(self, k: int) -> list[int]:
        return [self.rng.randrange(1, self.vocab) for _ in range(k * self.page_size)]

    def new_sequence(self, kind: str) -> list[int]:
        """A request's tokens: a prompt or an earlier sequence, grown by a few pages (a bare
        repeat for a ``request`` with probability ``p_bare``)."""
        rng, ps = self.rng, self.page_size
        base = rng.choice(self.seqs) if self.seqs and rng.random() < 1 - self.p_prompt else rng.choice(self.prompts)
        if len(base) > 16 * ps:  # keep requests well inside the small pools
            base = rng.choice(self.prompts)
        extra = 0 if kind == "request" and rng.random() < self.p_bare else rng.randint(1 if kind == "request" else 2, 3)
        tokens = base + self.block(extra)
        if not tokens:
            tokens = self.block(1)
        self.seqs = (self.seqs + [tokens])[-24:]
        return tokens


@dataclass(frozen=True)
class Operation:
    """One operation of the vocabulary. ``required`` / ``optional``: field -> kind (tokens, count,
    flag, id); ``weight``: how often the fuzzer draws it by default (0: only when asked);
    ``draw``: a random instance (``None``: not drawable yet, e.g. before any sequence);
    ``run``: on a himamba cache; ``on_side``: on a differential side, returning a comparable
    result (``None``: not compared, as acks complete at once and storage is off there)."""

    name: str
    required: dict[str, str]
    optional: dict[str, str]
    weight: int
    draw: Callable[[Drawing], dict | None]
    run: Callable[[Any, DriverState, dict], object]
    on_side: Callable[[Any, SideHeld, dict], object] | None = None
    tiered_only: bool = False


VOCABULARY: dict[str, Operation] = {}


def _declare(name: str, required: dict[str, str], optional: dict[str, str], weight: int, draw, run,
             on_side=None, tiered_only: bool = False) -> None:
    VOCABULARY[name] = Operation(name, required, optional, weight, draw, run, on_side, tiered_only)


# -- draws ----------------------------------------------------------------------------------------
def _draw_request(kind: str):
    def draw(d: Drawing) -> dict:
        op = {"op": kind, "tokens": d.new_sequence(kind)}
        if kind == "chunked":
            op["chunk"] = d.page_size * d.rng.randint(1, 2)
        elif kind == "req_start":
            op["cow"] = d.rng.random() < 0.5
        elif d.p_fresh and d.rng.random() < d.p_fresh:
            op["fresh"] = True
        return op
    return draw


def _draw_on_sequence(kind: str):
    """match, lock, load, pin: a prefix of an earlier sequence (locks also take shared prompts,
    which end at split nodes that hold no state)."""
    def draw(d: Drawing) -> dict | None:
        if not d.seqs:
            return None
        rng = d.rng
        t = rng.choice(d.prompts) if kind == "lock" and rng.random() < 0.3 else rng.choice(d.seqs)
        cut = len(t) if kind != "match" else rng.randint(1, len(t))
        op = {"op": kind, "tokens": t[:cut]}
        if kind == "load":
            op["quota"] = rng.choice([None, 4, 64])
        if kind == "pin":
            op["mamba"] = rng.random() < 0.5
        if kind == "lock":
            op["exact"] = rng.random() < 0.5
        return op
    return draw


def _draw_k(kind: str):
    return lambda d: {"op": kind, "k": d.rng.randrange(1 << 16)}


def _draw_n(kind: str, most_pages: int | None, most: int = 3):
    def draw(d: Drawing) -> dict:
        top = most_pages * d.page_size if most_pages else most
        return {"op": kind, "n": d.rng.randint(1, top)}
    return draw


def _draw_bare(kind: str):
    return lambda d: {"op": kind}


def _draw_req_chunk(d: Drawing) -> dict:
    rng = d.rng
    return {"op": "req_chunk", "k": rng.randrange(1 << 16), "pages": rng.randint(1, 4), "track": rng.random() < 0.85}


def _draw_req_finish(d: Drawing) -> dict:
    rng = d.rng
    return {"op": "req_finish", "k": rng.randrange(1 << 16), "insert": rng.random() < 0.8, "cut": rng.randrange(1 << 16)}


def _draw_prefetch(d: Drawing) -> dict | None:
    if not d.seqs:
        return None
    t = d.rng.choice(d.seqs) + d.block(d.rng.randint(1, 2))
    return {"op": "prefetch", "tokens": t, "split": d.page_size * d.rng.randint(0, len(t) // d.page_size - 1),
            "req": f"p{d.index}"}


# -- runs on himamba ----------------------------------------------------------------------------------
def _lock(cache, state: DriverState, op: dict) -> None:
    exact = cache.node_at(op["tokens"]) if op.get("exact") else None
    node = exact if exact is not None and exact.value is not None else cache.match_prefix(op["tokens"]).last_device_node
    cache.inc_lock_ref(node)
    state.locks.append(node)


def _unlock(cache, state: DriverState, op: dict) -> None:
    if state.locks:
        cache.dec_lock_ref(state.locks.pop(op["k"] % len(state.locks)))


def _evict_mamba(cache, state: DriverState, op: dict) -> None:
    free = cache.mamba_pool.available_size()
    freed = cache.evict_mamba(op["n"])
    if not cache.tiered and (not 0 <= freed <= op["n"] or cache.mamba_pool.available_size() != free + freed):
        raise OracleError(f"evict_mamba({op['n']}) returned {freed}; the state pool gained "
                          f"{cache.mamba_pool.available_size() - free}")


def _held(kind: str):
    def run(cache, state: DriverState, op: dict) -> str | None:
        if kind == "req_start":
            return held_requests.start(cache, state.requests, op["tokens"], op.get("cow", False), f"req{state.counts[kind]}")
        if kind == "req_chunk":
            return held_requests.chunk(cache, state.requests, op["k"], op["pages"], op.get("track", True))
        return held_requests.finish(cache, state.requests, op["k"], op.get("insert", True), op.get("cut", 0))
    return run


def _ack(cache, state: DriverState, op: dict) -> None:
    cc = cache.cache_controller
    in_flight = cc.in_flight()
    if in_flight and cc.manual_acks:
        cc.complete(in_flight[op["k"] % len(in_flight)])
    if cache.storage is not None and cache.storage.ops and cache.storage.manual_acks:
        cache.storage.complete(cache.storage.ops[op["k"] % len(cache.storage.ops)])


def _ack_all(cache, state: DriverState, op: dict) -> None:
    for ack in cache.cache_controller.in_flight():
        cache.cache_controller.complete(ack)


def _events(cache, state: DriverState, op: dict) -> None:
    cache.ready_to_load_host_cache()
    cache.check_hicache_events()


def _load(cache, state: DriverState, op: dict) -> None:
    """Load back a match. Where the scheduler would load (``host_hit_length > 0``), the prefix the
    load ends at never lies above the matched device node that holds a device state (B23, #25088:
    a load started at an ancestor spends a slot on its state and hands the ancestor back)."""
    m = cache.match_prefix(op["tokens"])
    _, last = cache.init_load_back(m.best_match_node, mem_quota=op.get("quota"))
    kept = m.last_device_node
    if (m.host_hit_length > 0 and kept is not cache.root_node and kept.mamba_value is not None
            and last is not kept and _is_above(last, kept)):
        raise OracleError(f"init_load_back ended at #{last.id}, above the matched node #{kept.id} that holds a "
                          "device state: the load-back went back to an ancestor")


def _is_above(node: TreeNode, below: TreeNode) -> bool:
    x = below.parent
    while x is not None:
        if x is node:
            return True
        x = x.parent
    return False


def _pin(cache, state: DriverState, op: dict) -> None:
    node = cache.match_prefix(op["tokens"]).last_host_node
    if node is not cache.root_node:
        mamba = bool(op.get("mamba", False)) and node.mamba_host_value is not None
        cache.protect_host(node, mamba=mamba)
        state.pins.append((node, mamba))


def _unpin(cache, state: DriverState, op: dict) -> None:
    if state.pins:
        node, mamba = state.pins.pop(op["k"] % len(state.pins))
        cache.release_host(node, mamba=mamba)


def _prefetch(cache, state: DriverState, op: dict) -> None:
    if cache.storage is None:
        return
    tokens = op["tokens"]
    cache.storage.store_prefix(tokens)
    anchor = cache.match_prefix(tokens[: op["split"]]).last_host_node
    depth = len(cache.path_tokens(anchor))
    if op["req"] not in cache.ongoing_prefetch:
        cache.prefetch_from_storage(op["req"], anchor, tokens[depth:])


def _prefetch_done(cache, state: DriverState, op: dict) -> None:
    if cache.storage is not None:
        for req_id in list(cache.ongoing_prefetch):
            cache.check_prefetch_progress(req_id)


# -- runs on a differential side ---------------------------------------------------------------------
def _side_match(side, held: SideHeld, op: dict):
    m = side.match(op["tokens"])
    return len(m.indices), m.host_hit, side.path(m.device_node), side.path(m.host_node)


def _side_lock(side, held: SideHeld, op: dict):
    exact = side.node_at(op["tokens"]) if op.get("exact") else None
    node = exact if exact is not None and exact.value is not None else side.match(op["tokens"]).device_node
    side.lock(node)
    held.locks.append(node)
    return side.path(node)


def _side_unlock(side, held: SideHeld, op: dict) -> None:
    if held.locks:
        side.unlock(held.locks.pop(op["k"] % len(held.locks)))


def _side_evict_host(side, held: SideHeld, op: dict) -> None:
    side.evict_host(op["n"])  # its count is upstream's (B11); the states compared say what left


def _side_events(side, held: SideHeld, op: dict) -> None:
    side.events()


def _side_load(side, held: SideHeld, op: dict):
    m = side.match(op["tokens"])
    loaded, last = side.load_back(m.load_node, op.get("quota"))
    return len(loaded), side.path(last)


def _side_pin(side, held: SideHeld, op: dict):
    node = side.match(op["tokens"]).host_node
    if node is side.root():
        return None
    mamba = bool(op.get("mamba", False)) and node.mamba_host_value is not None
    side.pin(node, mamba)
    held.pins.append((node, mamba))
    return side.path(node), mamba


def _side_unpin(side, held: SideHeld, op: dict) -> None:
    if held.pins:
        node, mamba = held.pins.pop(op["k"] % len(held.pins))
        side.unpin(node, mamba)


# -- the vocabulary, in the order the fuzzer draws from -------------------------------------------------
_declare("request", {"tokens": TOKENS}, {"fresh": FLAG}, 10, _draw_request("request"),
         lambda c, s, op: serve(c, op["tokens"], reuse_prefix=not op.get("fresh", False)),
         lambda side, h, op: request_on_side(side, op["tokens"]))
_declare("chunked", {"tokens": TOKENS, "chunk": COUNT}, {}, 2, _draw_request("chunked"),
         lambda c, s, op: chunked_prefill(c, op["tokens"], op["chunk"]),
         lambda side, h, op: chunked_on_side(side, op["tokens"], op["chunk"]))
_declare("match", {"tokens": TOKENS}, {}, 4, _draw_on_sequence("match"),
         lambda c, s, op: check_match(c, op["tokens"], c.match_prefix(op["tokens"])), _side_match)
_declare("lock", {"tokens": TOKENS}, {"exact": FLAG}, 3, _draw_on_sequence("lock"), _lock, _side_lock)
_declare("unlock", {"k": COUNT}, {}, 3, _draw_k("unlock"), _unlock, _side_unlock)
_declare("evict", {"n": COUNT}, {}, 3, _draw_n("evict", 12), lambda c, s, op: checked_evict(c, op["n"]),
         lambda side, h, op: side.evict(op["n"]))
_declare("evict_mamba", {"n": COUNT}, {}, 2, _draw_n("evict_mamba", None), _evict_mamba,
         lambda side, h, op: side.evict_mamba(op["n"]))
_declare("evict_host", {"n": COUNT}, {}, 2, _draw_n("evict_host", 12), lambda c, s, op: c.evict_host(op["n"]),
         _side_evict_host, tiered_only=True)
_declare("evict_mamba_host", {"n": COUNT}, {}, 2, _draw_n("evict_mamba_host", None),
         lambda c, s, op: c.evict_mamba_host(op["n"]), lambda side, h, op: side.evict_mamba_host(op["n"]),
         tiered_only=True)
_declare("ack", {"k": COUNT}, {}, 4, _draw_k("ack"), _ack, tiered_only=True)
_declare("events", {}, {}, 4, _draw_bare("events"), _events, _side_events, tiered_only=True)
_declare("load", {"tokens": TOKENS}, {"quota": COUNT}, 3, _draw_on_sequence("load"), _load, _side_load,
         tiered_only=True)
_declare("pin", {"tokens": TOKENS}, {"mamba": FLAG}, 1, _draw_on_sequence("pin"), _pin, _side_pin, tiered_only=True)
_declare("unpin", {"k": COUNT}, {}, 1, _draw_k("unpin"), _unpin, _side_unpin, tiered_only=True)
_declare("prefetch", {"tokens": TOKENS, "split": COUNT, "req": ID}, {}, 1, _draw_prefetch, _prefetch,
         tiered_only=True)
_declare("prefetch_done", {}, {}, 1, _draw_bare("prefetch_done"), _prefetch_done, tiered_only=True)
_declare("req_start", {"tokens": TOKENS}, {"cow": FLAG}, 0, _draw_request("req_start"), _held("req_start"))
_declare("req_chunk", {"k": COUNT, "pages": COUNT}, {"track": FLAG}, 0, _draw_req_chunk, _held("req_chunk"))
_declare("req_finish", {"k": COUNT}, {"insert": FLAG, "cut": COUNT}, 0, _draw_req_finish, _held("req_finish"))
_declare("ack_all", {}, {}, 0, _draw_bare("ack_all"), _ack_all, tiered_only=True)

OPERATIONS = tuple(VOCABULARY)
OPERATION_FIELDS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    name: (op.required, op.optional) for name, op in VOCABULARY.items()
}
DEFAULT_WEIGHTS: dict[str, int] = {name: op.weight for name, op in VOCABULARY.items()}


# -- applying and checking ------------------------------------------------------------------------------
def apply(cache, state: DriverState, op: dict) -> None:
    """Apply one operation to a himamba cache (see the module docstring)."""
    kind = op["op"]
    entry = VOCABULARY.get(kind)
    if entry is None:
        raise InvalidInputError(f"unknown fuzz operation {kind!r}")
    state.counts[kind] = state.counts.get(kind, 0) + 1
    if entry.tiered_only and not cache.tiered:
        return
    done = entry.run(cache, state, op)
    if kind.startswith("req_") and done is not None:  # what it did, counted as "req_chunk:moved" etc.
        state.counts[f"{kind}:{done}"] = state.counts.get(f"{kind}:{done}", 0) + 1


def apply_on_side(side, held: SideHeld, op: dict):
    """Apply one operation to a differential side; returns a comparable result (``None`` for an
    operation the differential does not compare, or a tiered one on the device cache)."""
    entry = VOCABULARY.get(op["op"])
    if entry is None:
        raise InvalidInputError(f"unknown operation {op['op']!r}")
    if entry.on_side is None or (entry.tiered_only and not side.tiered):
        return None
    return entry.on_side(side, held, op)


def check_op(i: int, op: object) -> None:
    """Raise :class:`InvalidInputError` naming operation ``i`` unless ``op`` is a known operation
    with every field it needs, each of the right kind (token lists, counts, flags)."""
    if not isinstance(op, dict) or op.get("op") not in VOCABULARY:
        raise InvalidInputError(f"script op {i}: unknown operation {op!r} (known: {', '.join(OPERATIONS)})")
    entry = VOCABULARY[op["op"]]
    for key, kind in (*entry.required.items(), *entry.optional.items()):
        if key not in op:
            if key in entry.required:
                raise InvalidInputError(f"script op {i} ({op['op']}): the field {key!r} is missing")
            continue
        value, what = op[key], f"script op {i} ({op['op']}): {key!r}"
        if kind == TOKENS:
            if not isinstance(value, list):
                raise InvalidInputError(f"{what} must be a list of ints, got {type(value).__name__}")
            check_token_ids(value, what)
        elif kind == COUNT:
            if not (key == "quota" and value is None):
                check_count(value, what)
        elif kind == FLAG:
            check_bool(value, what)
        elif not isinstance(value, (int, str)) or isinstance(value, bool):
            raise InvalidInputError(f"{what} must be a request id (an int or a string), got {value!r}")
