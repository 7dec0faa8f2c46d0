"""A load whose copy failed while landing, and the named state it leaves.

``ready_to_load_host_cache`` issues the queued loads and orders compute after each, so a load's
failure (an injected ``copy_land`` fault; on a GPU, a failed host -> device copy) is known there,
before any request reads the loaded bytes. Each failed load is **retracted**:

- its load-back lock is released and it leaves the loads in flight;
- the state it restored leaves the device (the host copy stays);
- every node it brought to device gives its device slots back: the chain is host-only again,
  its host copies untouched, so a later match finds the same host hit;
- its ack leaves the queue and its held slots are released.

Nothing loaded is claimed: the device slots, which hold poison, are free again. A caller that
took the slots ``init_load_back`` returned sees the load undone (its node is off device again).

A load is retracted only while nothing builds on it: if, before the batch launched, another lock
was taken on the chain, a device child was inserted below it or a state was added to it, the load
is copied again from its host sources (which the transfer still holds) and the failure is reported
as retried, with the reason.
"""

from __future__ import annotations

from himamba.cache.words import count
from himamba.core.node import TreeNode
from himamba.memory.transfer import Ack
from himamba.observe.events import EventKind


def settle_failed_loads(cache) -> int:
    """Retract (or, where it cannot be retracted, retry) every load ack of ``cache`` that failed
    while landing; each is reported in a step. Returns how many were retracted."""
    queue = cache.cache_controller.ack_load_queue
    failed = [ack for ack in queue if ack.failed]
    retracted = 0
    for ack in failed:
        dst = set(ack.dst.kv.tolist())  # the device KV slots the load wrote
        written = [_written(cache, ack, dst, i) for i in ack.node_ids]
        why = next((w for w in map(_why_not_retractable, written) if w is not None), None)
        if why is None:
            for node, chain, restored in written:
                _retract(cache, node, chain, restored)
            queue.remove(ack)
            ack.release_holds()
            retracted += 1
        else:
            ack.handle.retry(why)
    if failed:
        cache.backup.report_landing_failures()
    return retracted


def _written(cache, ack: Ack, dst: set[int], node_id: int) -> tuple[TreeNode | None, list[TreeNode], bool]:
    """What ``ack`` wrote for the load of ``node_id`` (``dst``: its device KV destinations): (the
    node, or ``None`` when no load of it is in flight; the chain, deepest first: the node and the
    ancestors above it whose device slots are all in ``dst``; whether it wrote the node's device
    state)."""
    node = cache.in_flight.load_back.get(node_id)
    if node is None:
        return None, [], False
    chain = []
    x, root = node, cache.root_node
    while x is not root and x.value is not None and dst and set(x.value.tolist()) <= dst:
        chain.append(x)
        x = x.parent
    restored = node.mamba_value is not None and any(
        int(node.mamba_value.reshape(-1)[0]) in s.reshape(-1).tolist() for s in ack.dst.states)
    return node, chain, restored


def _why_not_retractable(written: tuple[TreeNode | None, list[TreeNode], bool]) -> str | None:
    """``None`` when the load can be undone (only its own lock holds the chain, nothing was built
    on it); else the reason it cannot."""
    node, chain, restored = written
    if node is None:
        return "the node is no longer a load in flight"
    if not chain and not restored:
        return f"#{node.id} no longer holds what the load wrote"
    if node.mamba_lock_ref + node.tombstone_lock_ref != 1:
        return f"#{node.id} holds another lock"
    below = node
    for x in chain:
        if x.full_lock_ref != 1 or x.evicted_lock_ref:
            return f"#{x.id} holds another lock"
        if any(c.value is not None and c is not below for c in x.children.values()):
            return f"#{x.id} has a device child built on the load"
        if x.mamba_value is not None and not (x is node and restored):
            return f"#{x.id} gained a device state"
        below = x
    return None


def _retract(cache, node: TreeNode, chain: list[TreeNode], restored: bool) -> None:
    """Undo one load: unlock, drop the restored state, drop the chain's device KV (deepest first)."""
    device, eviction = cache.device_tier, cache.eviction
    cache.in_flight.load_back.pop(node.id, None)
    device.unlock(node)
    if restored:
        device.drop_state(node)
        eviction.refresh(node)
    tokens = 0
    for x in chain:
        tokens += device.drop_kv(x, clear=True, tolerant=device.tolerant_unlist)
        eviction.refresh(x)
        eviction.refresh(x.parent)
    if cache.events.active:
        what = [count(tokens, "token") + " over " + count(len(chain), "node")] if chain else []
        what += ["its state"] if restored else []
        cache.events.emit(EventKind.LOAD_ACKED, f"load of #{node.id} failed while landing: retracted ({' and '.join(what)} "
                          f"host-only again; nothing loaded is kept)", (node.id,), failed="TransferFailure")
