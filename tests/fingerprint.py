"""A fingerprint of everything observable about a cache, to show that bad input changed nothing.

It records the tree text, every node's fields (key, extra key, times, hit count, every lock and
pin, device and host slots), every LRU order, both leaf sets, the size counters, the access clock
and the next node id; for each pool (device and host) its free/used sizes, which slots are handed
out, which a tree node owns, the order in which free slots would be handed out next and a digest
of its bytes; on the tiered cache also the transfer queues, the in-flight maps and the storage
tier; and the fields of the given requests.
"""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch

import himamba as hm


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _pool_fingerprint(pool) -> tuple:
    probe = copy.deepcopy(pool.allocator)  # where would the next slots come from?
    next_order = probe.alloc(probe.available_size())
    buffers = (pool.k_buffer, pool.v_buffer) if hasattr(pool, "k_buffer") else (pool.conv, pool.ssm)
    every = torch.arange(pool.capacity)
    return (
        pool.available_size(),
        pool.used_size(),
        pool.allocator.is_allocated(every).tolist(),
        pool.allocator.owned_flags(every).tolist() if hasattr(pool.allocator, "owned_flags") else None,
        next_order.tolist(),
        _digest(*buffers),
    )


def _tensor(x) -> list | None:
    return None if x is None else x.tolist()


def _request_fingerprint(req: hm.Request) -> tuple:
    return (
        repr(req.token_ids),
        _tensor(req.kv_indices) if isinstance(req.kv_indices, torch.Tensor) else repr(req.kv_indices),
        _tensor(req.mamba_pool_idx) if isinstance(req.mamba_pool_idx, torch.Tensor) else repr(req.mamba_pool_idx),
        _tensor(req.mamba_track_idx) if isinstance(req.mamba_track_idx, torch.Tensor) else repr(req.mamba_track_idx),
        repr(req.mamba_last_track_seqlen),
        repr(req.fill_len),
        repr(req.cache_protected_len),
        None if not isinstance(req.last_node, hm.TreeNode) else req.last_node.id,
        _tensor(req.prefix_indices),
        repr(req.extra_key),
    )


def _node(n) -> tuple:
    return (
        n.id,
        None if n.parent is None else n.parent.id,
        list(n.key.token_ids),
        n.key.extra_key,
        n.last_access_time,
        n.hit_count,
        n.full_lock_ref,
        n.mamba_lock_ref,
        n.evicted_lock_ref,
        n.tombstone_lock_ref,
        n.host_ref_counter,
        n.host_mamba_ref_counter,
        _tensor(n.value),
        _tensor(n.mamba_value),
        _tensor(n.host_value),
        _tensor(n.mamba_host_value),
        sorted(c.id for c in n.children.values()),
    )


def _tiered(cache) -> dict:
    cc = cache.cache_controller
    storage = cache.storage
    return {
        "host_kv_pool": _pool_fingerprint(cache.host_kv_pool),
        "host_mamba_pool": _pool_fingerprint(cache.host_mamba_pool),
        "host_lru": cache.mamba_host_lru_list.order(),
        "host_leaves": sorted(n.id for n in cache.evictable_full_host_leaves),
        "queues": (
            [(a.ack_id, a.kind, list(a.node_ids), a.manual_done) for a in cc.ack_write_queue],
            [(a.ack_id, a.kind, list(a.node_ids), a.manual_done) for a in cc.ack_load_queue],
            [(a.ack_id, a.kind, list(a.node_ids), a.manual_done) for a in cc.in_flight()],  # pending loads too
            cc.writes_issued,
            cc.loads_issued,
            cc.bytes_device_to_host,
            cc.bytes_host_to_device,
        ),
        "in_flight": (
            sorted(cache.ongoing_write_through),
            sorted(cache._locked_writes),
            sorted(cache.ongoing_load_back),
            sorted(map(repr, cache.ongoing_prefetch)),
            sorted(cache.ongoing_backup),
        ),
        "storage": None if storage is None else (
            sorted(storage.pages), sorted(storage.states), [(o.op_id, o.kind, o.manual_done) for o in storage.ops]
        ),
    }


def fingerprint(cache, *requests: hm.Request) -> dict:
    """Everything observable about ``cache`` (and the given requests)."""
    out = {
        "tree": cache.tree_text(),
        "nodes": [_node(n) for n in cache.nodes()],
        "full_lru": cache.full_lru_list.order(),
        "mamba_lru": cache.mamba_lru_list.order(),
        "leaves": sorted(n.id for n in cache.evictable_full_device_leaves),
        "counters": (
            cache.full_evictable_size(),
            cache.full_protected_size(),
            cache.mamba_evictable_size(),
            cache.mamba_protected_size(),
            cache.total_size(),
            cache.num_nodes(),
        ),
        "clock": (cache._clock, cache._next_id),
        "kv_pool": _pool_fingerprint(cache.kv_pool),
        "mamba_pool": _pool_fingerprint(cache.mamba_pool),
        "requests": [_request_fingerprint(r) for r in requests],
    }
    if getattr(cache, "tiered", False):
        out.update(_tiered(cache))
    return out


def assert_rejected(cache, error: type[Exception], call, *requests: hm.Request, match: str | None = None):
    """``call()`` raises ``error`` (a ValueError) with a readable message and changes nothing:
    the fingerprint is the same, and invariants and integrity are clean."""
    assert issubclass(error, ValueError)
    before = fingerprint(cache, *requests)
    with pytest.raises(error, match=match) as info:
        call()
    assert len(str(info.value)) >= 15, f"unhelpful message: {info.value!r}"
    after = fingerprint(cache, *requests)
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"{type(info.value).__name__}({info.value}) left {changed} changed"
    assert not hm.check_invariants(cache)
    assert not hm.check_integrity(cache)
    return info.value
