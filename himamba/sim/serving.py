"""Serving one request on a himamba cache, the way a scheduler would, and the fuzzer's other
self-contained request shapes (a chunked prefill, a checked eviction).

Every slot is filled with its deterministic content (:mod:`himamba.memory.content`), so
``check_integrity`` can verify the bytes afterwards.
"""

from __future__ import annotations

import torch

from himamba.cache.facade import RadixCacheBase
from himamba.cache.results import InsertResult, Request
from himamba.core.key import RadixKey
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError, OracleError
from himamba.memory import slot_ids
from himamba.memory.content import write_kv, write_state


def load_host_hit(cache, start: TreeNode, prefix: torch.Tensor, node: TreeNode) -> tuple[torch.Tensor, TreeNode, int]:
    """A request's load-back of a host hit on a tiered cache (:func:`serve` and the replays):
    ``init_load_back(start)`` and launch it at once (``ready_to_load_host_cache``), after the
    matched ``prefix`` ending at ``node``. Returns the device prefix, the node it ends at and the
    elements loaded; a load that failed while landing was retracted there (its node is off the
    device again) and adds nothing, so ``(prefix, node, 0)`` come back."""
    loaded, last = cache.init_load_back(start)
    cache.ready_to_load_host_cache()
    if len(loaded) and last.value is not None:
        return slot_ids.cat((prefix, loaded)), last, len(loaded)
    return prefix, node, 0


def serve(cache, tokens: list[int] | RadixKey, *, reuse_prefix: bool = True) -> InsertResult | None:
    """Serve one request the way a scheduler would, with real KV and state content.

    match_prefix -> lock -> (tiered: load back a host hit and launch it, moving the lock to it unless
    the load failed while landing and was retracted) -> allocate KV for the new tokens
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
    if len(tokens) % cache.page_size:  # refused before anything is matched or evicted
        raise InvalidInputError(f"a request of {len(tokens)} tokens is not a multiple of the page size {cache.page_size}")
    m = cache.match_prefix(key)
    prefix, node = m.device_indices, m.last_device_node
    # Locks are listed before they are taken, and everything is given back in ``finally``: an
    # exception a listener raises leaves with the operation that completed (the lock taken, the
    # insert done), and nothing this request held may stay behind.
    held: list = []
    new = slot = result = None
    try:
        # Lock the matched device prefix first: the load-back below may evict to make room, and
        # best_match_node (upstream: last_host_node) can sit above the deepest matched device node.
        held.append(node)
        cache.inc_lock_ref(node)
        if getattr(cache, "tiered", False) and m.host_hit_length > 0:
            prefix, last, loaded = load_host_hit(cache, m.best_match_node, prefix, node)
            if loaded:  # else nothing came back, or a load that failed landing was retracted
                held.append(last)
                cache.inc_lock_ref(last)
                held.remove(node)
                cache.dec_lock_ref(node)
        n = len(prefix) if reuse_prefix else 0
        slots = alloc_request(cache, tokens, n, states=1)
        if slots is None:
            return None
        new, slot = slots
        write_state(cache.mamba_pool, slot, tokens)
        result = cache.insert(key, slot_ids.cat((prefix, new)) if n else new, slot, prev_prefix_len=n)
        return result
    finally:
        _give_back(cache, new, slot, result)
        for x in reversed(held):
            cache.dec_lock_ref(x)


def _give_back(cache, new, slot, result) -> None:
    """Free the request's slots the tree did not take: the state slot when the tree had one
    (``mamba_exist``) or when the insert never finished, and KV slots still the request's."""
    if slot is not None:
        states = cache.mamba_pool.allocator
        if (result is not None and result.mamba_exist) or (
                result is None and states.all_allocated(slot) and not bool(states.owned_flags(slot).all())):
            cache.mamba_pool.free(slot)
    if new is not None and result is None:
        kv = cache.kv_pool.allocator
        mine = kv.is_allocated(new) & ~kv.owned_flags(new)
        if bool(mine.any()):
            cache.kv_pool.free(new[mine])


def alloc_request(cache, tokens: list[int], n: int, states: int):
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


def chunked_prefill(cache, tokens: list[int], chunk: int) -> None:
    """A chunked prefill: cache_unfinished_req per chunk, then cache_finished_req."""
    ps = cache.page_size
    chunk = max(ps, chunk - chunk % ps)
    m = cache.match_prefix(tokens)
    n = len(m.device_indices)
    cache.inc_lock_ref(m.last_device_node)
    slots = alloc_request(cache, tokens, n, states=2)
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
        writes = writes_issued(cache)
        try:
            cache.cache_unfinished_req(req, chunked=True)
        except InvalidInputError:  # no state slot could be freed: finish early
            break
        if writes_issued(cache) != writes and cache.config.write_policy != "write_back":
            raise OracleError("a chunk of a chunked prefill was written to host (chunked inserts must not count hits)")
    req.fill_len = None
    write_state(cache.mamba_pool, req.mamba_pool_idx, tokens)
    if track:
        write_state(cache.mamba_pool, req.mamba_track_idx, tokens)
        req.mamba_last_track_seqlen = len(tokens)
    cache.cache_finished_req(req)


def checked_evict(cache, n: int) -> None:
    """``evict(n)``, checking that what it returns is what left the tree and joined the pool.
    On the tiered cache the count may be lower than what left (a write-back's host room can
    cascade into device tombstones, uncounted as upstream), never higher."""
    total, free = cache.total_size(), cache.kv_pool.available_size()
    freed = cache.evict(n)
    lost, gained = total - cache.total_size(), cache.kv_pool.available_size() - free
    exact = not getattr(cache, "tiered", False)
    if freed < 0 or lost != gained or (freed != lost if exact else freed > lost):
        raise OracleError(f"evict({n}) returned {freed}; the tree lost {lost} device tokens, the pool gained {gained}")


def writes_issued(cache) -> int:
    controller = getattr(cache, "cache_controller", None)
    return controller.writes_issued if controller is not None else 0
