"""The fuzzer's operations: each a JSON-able dict that one function applies to a cache.

A script is ``{"cache": "tiered" | "device", "config": {...CacheConfig fields...},
"manual_acks": bool, "ops": [{"op": name, ...}, ...]}``. Operations name concrete tokens, so a
script replays the same way anywhere. Operations that refer to earlier state (``unlock`` the k-th
held lock, complete the k-th ack in flight) pick modulo what exists and do nothing when nothing
does, so any sub-list of a script is still a valid script (that is what shrinking needs).

Every request-like operation completes within itself (allocate, insert, release), except the
held requests of :mod:`himamba.sim.held_requests` (``req_start``, ``req_chunk``, ``req_finish``),
whose slots :meth:`DriverState.held_kv` and :meth:`DriverState.held_states` count. On the
device-only cache, operations whose results the reference pins down check them (``match``,
``evict``, ``evict_mamba``; the held requests on both caches) and raise
:class:`~himamba.errors.OracleError` when they disagree. (On the tiered cache a match may end at
a node whose state is on the host only, and under write-back an ``evict`` returns fewer tokens
than the device frees, so those checks are not made there.)

Size: over 300 lines because one ``apply`` dispatches every operation of a script, and the field
table that :func:`check_op` enforces sits beside it so that the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from himamba.cache.facade import RadixCacheBase
from himamba.cache.results import InsertResult, Request
from himamba.core.key import RadixKey
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError, OracleError
from himamba.memory import slot_ids
from himamba.memory.content import write_kv, write_state
from himamba.sim import held_requests
from himamba.sim.held_requests import HeldRequest, check_match
from himamba.validate import check_bool, check_count, check_token_ids

__all__ = ["OPERATIONS", "DriverState", "OracleError", "apply", "check_op", "serve"]


@dataclass
class DriverState:
    """What the driver holds between operations."""

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


def serve(cache, tokens: list[int] | RadixKey, *, reuse_prefix: bool = True) -> InsertResult | None:
    """Serve one request the way a scheduler would, with real KV and state content.

    match_prefix -> lock -> (tiered: load back a host hit, moving the lock to it) -> allocate KV for the new tokens
    and one state slot (evicting on shortage) -> fill them -> insert -> free the state slot if
    the tree already had one -> unlock. Returns the insert's result, or ``None`` when memory
    could not be found (nothing changes then but evictions). Acks are left to the caller.
    Without ``reuse_prefix`` the request computes every token again (new KV slots for the
    matched prefix too), so insert frees the duplicates.
    """
    if not isinstance(cache, RadixCacheBase):
        raise InvalidInputError(f"serve needs a cache (MambaRadixCache or HiMambaRadixCache), got {type(cache).__name__}")
    key = tokens if isinstance(tokens, RadixKey) else RadixKey(tokens)  # checks the token ids
    tokens = key.token_ids
    m = cache.match_prefix(key)
    prefix, node = m.device_indices, m.last_device_node
    # Lock the matched device prefix first: the load-back below may evict to make room, and
    # best_match_node (upstream: last_host_node) can sit above the deepest matched device node.
    cache.inc_lock_ref(node)
    if getattr(cache, "tiered", False) and m.host_hit_length > 0:
        loaded, last = cache.init_load_back(m.best_match_node)
        if len(loaded):
            prefix = slot_ids.cat((prefix, loaded))
            cache.inc_lock_ref(last)
            cache.dec_lock_ref(node)
            node = last
        cache.ready_to_load_host_cache()
    n = len(prefix) if reuse_prefix else 0
    try:
        slots = _alloc_request(cache, tokens, n, states=1)
        if slots is None:
            return None
        new, slot = slots
        write_state(cache.mamba_pool, slot, tokens)
        result = cache.insert(key, slot_ids.cat((prefix, new)) if n else new, slot, prev_prefix_len=n)
        if result.mamba_exist:
            cache.mamba_pool.free(slot)
        return result
    finally:
        cache.dec_lock_ref(node)


def _alloc_request(cache, tokens: list[int], n: int, states: int):
    """KV slots for ``tokens[n:]`` (filled with their content) and one state slot, evicting on
    shortage (room for ``states`` states); ``None``, with nothing held, when memory is short."""
    need = len(tokens) - n
    if cache.kv_pool.available_size() < need:
        cache.evict(need - cache.kv_pool.available_size())
    if cache.mamba_pool.available_size() < states:
        cache.evict_mamba(states)
    new = cache.kv_pool.alloc(need)
    if new is None:
        return None
    slot = cache.mamba_pool.alloc(1)
    if slot is None:
        cache.kv_pool.free(new)
        return None
    write_kv(cache.kv_pool, new, tokens[n:], n)
    return new, slot


def _chunked(cache, tokens: list[int], chunk: int) -> None:
    """A chunked prefill: cache_unfinished_req per chunk, then cache_finished_req."""
    ps = cache.page_size
    chunk = max(ps, chunk - chunk % ps)
    m = cache.match_prefix(tokens)
    n = len(m.device_indices)
    cache.inc_lock_ref(m.last_device_node)
    slots = _alloc_request(cache, tokens, n, states=2)
    if slots is None:
        cache.dec_lock_ref(m.last_device_node)
        return
    new, slot = slots
    req = Request(list(tokens), slot_ids.cat((m.device_indices, new)), slot, last_node=m.last_device_node,
                  cache_protected_len=n)
    track = cache.config.extra_buffer
    if track:
        req.mamba_track_idx = cache.mamba_pool.alloc(1)
        if req.mamba_track_idx is None:
            cache.cache_finished_req(req, is_insert=False)
            return
    fill = n
    while fill < len(tokens) - chunk:
        fill += chunk
        req.fill_len = fill
        write_state(cache.mamba_pool, req.mamba_pool_idx, tokens[:fill])
        if track:
            write_state(cache.mamba_pool, req.mamba_track_idx, tokens[:fill])
            req.mamba_last_track_seqlen = fill
        writes = _writes(cache)
        try:
            cache.cache_unfinished_req(req, chunked=True)
        except InvalidInputError:  # no state slot could be freed: finish early
            break
        if _writes(cache) != writes and cache.config.write_policy != "write_back":
            raise OracleError("a chunk of a chunked prefill was written to host (chunked inserts must not count hits)")
    req.fill_len = None
    write_state(cache.mamba_pool, req.mamba_pool_idx, tokens)
    if track:
        write_state(cache.mamba_pool, req.mamba_track_idx, tokens)
        req.mamba_last_track_seqlen = len(tokens)
    cache.cache_finished_req(req)


def _evict(cache, n: int) -> None:
    """``evict(n)``, checking that what it returns is what left the tree and joined the pool.
    On the tiered cache the count may be lower than what left (a write-back's host room can
    cascade into device tombstones, uncounted as upstream), never higher."""
    total, free = cache.total_size(), cache.kv_pool.available_size()
    freed = cache.evict(n)
    lost, gained = total - cache.total_size(), cache.kv_pool.available_size() - free
    exact = not getattr(cache, "tiered", False)
    if freed < 0 or lost != gained or (freed != lost if exact else freed > lost):
        raise OracleError(f"evict({n}) returned {freed}; the tree lost {lost} device tokens, the pool gained {gained}")


def _writes(cache) -> int:
    controller = getattr(cache, "cache_controller", None)
    return controller.writes_issued if controller is not None else 0


def apply(cache, state: DriverState, op: dict) -> None:
    """Apply one operation (see the module docstring)."""
    kind = op["op"]
    state.counts[kind] = state.counts.get(kind, 0) + 1
    tiered = getattr(cache, "tiered", False)
    if kind == "request":
        serve(cache, op["tokens"], reuse_prefix=not op.get("fresh", False))
    elif kind == "chunked":
        _chunked(cache, op["tokens"], op["chunk"])
    elif kind == "match":
        check_match(cache, op["tokens"], cache.match_prefix(op["tokens"]))
    elif kind == "lock":
        exact = cache.node_at(op["tokens"]) if op.get("exact") else None
        node = exact if exact is not None and exact.value is not None else cache.match_prefix(op["tokens"]).last_device_node
        cache.inc_lock_ref(node)
        state.locks.append(node)
    elif kind == "unlock":
        if state.locks:
            cache.dec_lock_ref(state.locks.pop(op["k"] % len(state.locks)))
    elif kind == "evict":
        _evict(cache, op["n"])
    elif kind == "evict_mamba":
        free = cache.mamba_pool.available_size()
        freed = cache.evict_mamba(op["n"])
        if not tiered and (not 0 <= freed <= op["n"] or cache.mamba_pool.available_size() != free + freed):
            raise OracleError(f"evict_mamba({op['n']}) returned {freed}; the state pool gained "
                              f"{cache.mamba_pool.available_size() - free}")
    elif kind in ("req_start", "req_chunk", "req_finish"):
        if kind == "req_start":
            done = held_requests.start(cache, state.requests, op["tokens"], op.get("cow", False), f"req{state.counts[kind]}")
        elif kind == "req_chunk":
            done = held_requests.chunk(cache, state.requests, op["k"], op["pages"], op.get("track", True))
        else:
            done = held_requests.finish(cache, state.requests, op["k"], op.get("insert", True), op.get("cut", 0))
        if done is not None:  # what it did, counted as "req_chunk:moved" etc.
            state.counts[f"{kind}:{done}"] = state.counts.get(f"{kind}:{done}", 0) + 1
    elif not tiered:
        return
    elif kind == "evict_host":
        cache.evict_host(op["n"])
    elif kind == "evict_mamba_host":
        cache.evict_mamba_host(op["n"])
    elif kind == "ack":
        in_flight = cache.cache_controller.in_flight()
        if in_flight and cache.cache_controller.manual_acks:
            cache.cache_controller.complete(in_flight[op["k"] % len(in_flight)])
        if cache.storage is not None and cache.storage.ops and cache.storage.manual_acks:
            cache.storage.complete(cache.storage.ops[op["k"] % len(cache.storage.ops)])
    elif kind == "ack_all":
        for ack in cache.cache_controller.in_flight():
            cache.cache_controller.complete(ack)
    elif kind == "events":
        cache.ready_to_load_host_cache()
        cache.check_hicache_events()
    elif kind == "load":
        m = cache.match_prefix(op["tokens"])
        cache.init_load_back(m.best_match_node, mem_quota=op.get("quota"))
    elif kind == "pin":
        node = cache.match_prefix(op["tokens"]).last_host_node
        if node is not cache.root_node:
            mamba = bool(op.get("mamba", False)) and node.mamba_host_value is not None
            cache.protect_host(node, mamba=mamba)
            state.pins.append((node, mamba))
    elif kind == "unpin":
        if state.pins:
            node, mamba = state.pins.pop(op["k"] % len(state.pins))
            cache.release_host(node, mamba=mamba)
    elif kind == "prefetch":
        if cache.storage is not None:
            tokens = op["tokens"]
            cache.storage.store_prefix(tokens)
            m = cache.match_prefix(tokens[: op["split"]])
            anchor = m.last_host_node
            depth = len(cache.path_tokens(anchor))
            if op["req"] not in cache.ongoing_prefetch:
                cache.prefetch_from_storage(op["req"], anchor, tokens[depth:])
    elif kind == "prefetch_done":
        if cache.storage is not None:
            for req_id in list(cache.ongoing_prefetch):
                cache.check_prefetch_progress(req_id)
    else:
        raise InvalidInputError(f"unknown fuzz operation {kind!r}")


# Each operation's fields: required ones, then optional ones (with the check each value gets).
_TOKENS, _COUNT, _FLAG = "tokens", "count", "flag"
OPERATION_FIELDS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "request": ({"tokens": _TOKENS}, {"fresh": _FLAG}),
    "chunked": ({"tokens": _TOKENS, "chunk": _COUNT}, {}),
    "match": ({"tokens": _TOKENS}, {}),
    "lock": ({"tokens": _TOKENS}, {"exact": _FLAG}),
    "unlock": ({"k": _COUNT}, {}),
    "evict": ({"n": _COUNT}, {}),
    "evict_mamba": ({"n": _COUNT}, {}),
    "evict_host": ({"n": _COUNT}, {}),
    "evict_mamba_host": ({"n": _COUNT}, {}),
    "ack": ({"k": _COUNT}, {}),
    "ack_all": ({}, {}),
    "events": ({}, {}),
    "load": ({"tokens": _TOKENS}, {"quota": _COUNT}),
    "pin": ({"tokens": _TOKENS}, {"mamba": _FLAG}),
    "unpin": ({"k": _COUNT}, {}),
    "prefetch": ({"tokens": _TOKENS, "split": _COUNT, "req": "id"}, {}),
    "prefetch_done": ({}, {}),
    "req_start": ({"tokens": _TOKENS}, {"cow": _FLAG}),
    "req_chunk": ({"k": _COUNT, "pages": _COUNT}, {"track": _FLAG}),
    "req_finish": ({"k": _COUNT}, {"insert": _FLAG, "cut": _COUNT}),
}
OPERATIONS = tuple(OPERATION_FIELDS)


def check_op(i: int, op: object) -> None:
    """Raise :class:`InvalidInputError` naming operation ``i`` unless ``op`` is a known operation
    with every field it needs, each of the right kind (token lists, counts, flags)."""
    if not isinstance(op, dict) or op.get("op") not in OPERATION_FIELDS:
        raise InvalidInputError(f"script op {i}: unknown operation {op!r} (known: {', '.join(OPERATIONS)})")
    required, optional = OPERATION_FIELDS[op["op"]]
    for key, kind in (*required.items(), *optional.items()):
        if key not in op:
            if key in required:
                raise InvalidInputError(f"script op {i} ({op['op']}): the field {key!r} is missing")
            continue
        value, what = op[key], f"script op {i} ({op['op']}): {key!r}"
        if kind == _TOKENS:
            if not isinstance(value, list):
                raise InvalidInputError(f"{what} must be a list of ints, got {type(value).__name__}")
            check_token_ids(value, what)
        elif kind == _COUNT:
            if not (key == "quota" and value is None):
                check_count(value, what)
        elif kind == _FLAG:
            check_bool(value, what)
        elif not isinstance(value, (int, str)) or isinstance(value, bool):
            raise InvalidInputError(f"{what} must be a request id (an int or a string), got {value!r}")
