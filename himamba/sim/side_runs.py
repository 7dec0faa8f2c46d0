"""Request shapes on a differential *side* (himamba's cache or SGLang's, behind the
:class:`~himamba.differential.sides.Side` interface): the scheduler's order for one request and a
chunked prefill, written once against that interface so that both caches get the same calls.

Requests run in the scheduler's order: match with copy-on-write of the matched state into the
request's slot, lock, load back a host hit (moving the lock to the loaded node), allocate KV and a
state slot if copy-on-write gave none, insert, unlock. Chunked prefills go through
``cache_unfinished_req(chunked=True)`` per chunk and end with ``cache_finished_req``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SideHeld:
    """What a differential run holds between operations on one side: locks and host pins."""

    locks: list = field(default_factory=list)
    pins: list = field(default_factory=list)


def request_on_side(side, tokens: list[int]):
    req = side.new_request(tokens)
    m = side.match(tokens, req)
    node, prefix = m.device_node, m.indices
    side.lock(node)
    try:
        if side.tiered and m.host_hit > 0:
            loaded, last = side.load_back(m.load_node, None, req)
            if len(loaded):
                prefix = torch.cat((prefix, loaded))
                side.lock(last)
                side.unlock(node)
                node = last
        new = side.alloc_kv(len(tokens) - len(prefix))
        slot = side.request_state(req)
        if new is None:
            if slot is not None:
                side.free_state(slot)
            return "no KV memory"
        if slot is None:
            slot = side.alloc_state()
        if slot is None:
            side.free_kv(new)
            return "no state slot"
        prefix_len, exist = side.insert(tokens, torch.cat((prefix, new)), slot, len(prefix))
        if exist:
            side.free_state(slot)
        return prefix_len, exist
    finally:
        side.unlock(node)


def chunked_on_side(side, tokens: list[int], chunk: int):
    m = side.match(tokens)
    node, prefix = m.device_node, m.indices
    side.lock(node)
    new = side.alloc_kv(len(tokens) - len(prefix))
    if new is None:
        side.unlock(node)
        return "no KV memory"
    slot = side.alloc_state()
    if slot is None:
        side.free_kv(new)
        side.unlock(node)
        return "no state slot"
    side.chunked(tokens, max(1, chunk), node, prefix, new, slot)
    return "done"
