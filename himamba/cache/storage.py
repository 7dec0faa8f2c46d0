"""A small in-memory storage tier (L3) so that host pins really happen (reference §3.14).

Storage holds KV pages keyed by a page hash (the fingerprint of the whole prefix up to the end of
the page) and states keyed by the hash of the page they end. Two operations pin tree nodes:

* ``write_backup_storage(node)`` — after a node's device -> host write is acknowledged, its host
  KV (and host state) is copied to storage; the node is host-pinned until the storage ack.
* ``prefetch_from_storage(req_id, anchor, tokens)`` — pages that continue ``anchor`` are fetched
  into fresh host slots; the anchor is pinned until ``check_prefetch_progress`` hangs the fetched
  part under it as host-only nodes (:meth:`StorageOps.insert_host`).

Operations complete at once unless the cache runs with manual acks; then
:meth:`StorageTier.complete` releases them one by one.

Size: over 300 lines because the storage tier and the tree operations that pin nodes for it (backup
to storage, prefetch, the host insert a prefetch ends with) share its page hashes and are read
together (§3.14).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from himamba.cache.alloc import allocate_or_make_room
from himamba.cache.words import count
from himamba.core.key import RadixKey, preview
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError
from himamba.memory.content import kv_content, prefix_fingerprint, state_content
from himamba.memory.faults import FaultPlan
from himamba.memory.model import ModelSpec
from himamba.observe.events import EventKind
from himamba.validate import check_bool, check_token_ids


def page_hashes(tokens: Sequence[int], page_size: int, start: int = 0) -> list[int]:
    """Chained page hashes: hash i is the fingerprint of every token up to the end of page i."""
    out, h = [], start
    for i in range(0, len(tokens) - len(tokens) % page_size, page_size):
        h = prefix_fingerprint(tokens[i : i + page_size], h)
        out.append(h)
    return out


@dataclass(eq=False)
class StorageOp:
    """A storage transfer in flight."""

    op_id: int
    kind: str  # "backup" or "prefetch"
    manual: bool
    manual_done: bool = False
    payload: dict = field(default_factory=dict)

    def done(self) -> bool:
        return not self.manual or self.manual_done


class StorageTier:
    """KV pages and states by hash, plus the queue of operations in flight."""

    def __init__(self, spec: ModelSpec, page_size: int, manual_acks: bool = False) -> None:
        self.spec = spec
        self.page_size = page_size
        self.manual_acks = manual_acks
        self.pages: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.states: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ops: list[StorageOp] = []
        self._ids = itertools.count()

    def new_op(self, kind: str, **payload) -> StorageOp:
        op = StorageOp(next(self._ids), kind, self.manual_acks, payload=payload)
        self.ops.append(op)
        return op

    def complete(self, op: StorageOp | None = None) -> StorageOp | None:
        """Manual mode: mark one operation (default: the oldest unfinished) complete. ``op`` must
        be one of this tier's operations in flight (``ops``); anything else raises
        :class:`InvalidInputError`, nothing changed."""
        if op is None:
            op = next((o for o in self.ops if not o.manual_done), None)
        elif not any(o is op for o in self.ops):
            what = f"storage op {op.op_id}" if isinstance(op, StorageOp) else f"{type(op).__name__} {op!r}"
            raise InvalidInputError(f"{what} is not in flight on this storage tier (complete takes one of storage.ops)")
        if op is not None:
            op.manual_done = True
        return op

    def store_prefix(self, tokens: Sequence[int], with_state: bool = True) -> int:
        """Put the deterministic content of a token prefix into storage (as if another server had
        cached it). Returns the pages stored."""
        tokens = check_token_ids(tokens, "tokens")
        check_bool(with_state, "with_state")
        ps = self.page_size
        hashes = page_hashes(tokens, ps)
        k, v = kv_content(self.spec, tokens[: len(hashes) * ps], 0)
        for i, h in enumerate(hashes):
            self.pages[h] = (k[:, i * ps : (i + 1) * ps].clone(), v[:, i * ps : (i + 1) * ps].clone())
        if with_state and hashes:
            self.states[hashes[-1]] = state_content(self.spec, hashes[-1])
        return len(hashes)


class StorageOps:
    """Storage backup, prefetch and the host-only insert of one tiered cache (``cache`` is the
    facade: its ``evict_host`` and ``evict_mamba_host`` make host room).

    Variants fixed at construction: ``skip_full_lru`` (legacy B3), ``hang_under_unbacked``
    (legacy B6), ``old_pin_rule`` (legacy B5). ``faults`` (a :class:`~himamba.memory.faults.FaultPlan`)
    may fail an operation when it completes: then nothing is stored or inserted, every slot the
    operation held is freed and every pin released, and a ``storage`` step says so."""

    prefetch_threshold = 1  # tokens; upstream's default is 256

    def __init__(self, cache, storage: StorageTier, tree, device, host, in_flight, lookup, insert, *,
                 skip_full_lru: bool = False, hang_under_unbacked: bool = False, old_pin_rule: bool = False,
                 faults: FaultPlan | None = None) -> None:
        self.cache, self.storage, self.tree, self.device, self.host = cache, storage, tree, device, host
        self.in_flight, self.lookup, self.insert = in_flight, lookup, insert
        self.events = cache.events
        self.page_size = tree.page_size
        self.skip_full_lru = skip_full_lru
        self.hang_under_unbacked = hang_under_unbacked
        self.old_pin_rule = old_pin_rule
        self.faults = faults

    def _fails(self) -> bool:
        return self.faults is not None and self.faults.fires("storage")

    def path_hash(self, node: TreeNode) -> int:
        tokens = self.tree.path_tokens(node)
        return prefix_fingerprint(tokens) if tokens else 0

    # -- backup to storage -----------------------------------------------------------------------
    def write_backup_storage(self, node: TreeNode) -> int | None:
        """Copy ``node``'s host KV (and host state) to storage; pin the node until the storage
        ack (``check_storage_progress``). Returns the operation id (``None`` without a host copy)."""
        if node.host_value is None:
            return None
        ps = self.page_size
        host = self.host
        start_tokens = self.tree.path_tokens(node.parent) if node.parent is not None else []
        hashes = page_hashes(node.key.token_ids, ps, prefix_fingerprint(start_tokens) if start_tokens else 0)
        k = host.host_kv_pool.k_buffer[:, node.host_value].clone()
        v = host.host_kv_pool.v_buffer[:, node.host_value].clone()
        state = None
        if node.mamba_host_value is not None:
            state = (host.host_mamba_pool.conv[:, node.mamba_host_value[0]].clone(),
                     host.host_mamba_pool.ssm[:, node.mamba_host_value[0]].clone())
        mamba_pinned = state is not None
        op = self.storage.new_op("backup", node=node, hashes=hashes, k=k, v=v, state=state)
        self.in_flight.backup[op.op_id] = (node, mamba_pinned)
        host.pin(node, mamba=mamba_pinned)
        if self.events.active:
            self.events.emit(EventKind.STORAGE, f"storage backup of #{node.id} issued (op {op.op_id}); #{node.id} pinned", (node.id,))
        return op.op_id

    def check_storage_progress(self) -> int:
        """Finish completed storage backups: the pages land in storage and the pins are released.
        Returns backups finished."""
        done = 0
        storage = self.storage
        for op in [o for o in storage.ops if o.kind == "backup" and o.done()]:
            storage.ops.remove(op)
            p = op.payload
            ps = self.page_size
            failed = self._fails()
            if not failed:
                for i, h in enumerate(p["hashes"]):
                    storage.pages[h] = (p["k"][:, i * ps : (i + 1) * ps], p["v"][:, i * ps : (i + 1) * ps])
                if p["state"] is not None and p["hashes"]:
                    storage.states[p["hashes"][-1]] = p["state"]
            node, mamba_pinned = self.in_flight.backup.pop(op.op_id)
            self.host.unpin(node, mamba=mamba_pinned)
            done += 1
            if self.events.active:
                what = "failed (injected fault): nothing stored" if failed else "done"
                self.events.emit(EventKind.STORAGE, f"storage backup of #{node.id} {what}; pin released", (node.id,))
        return done

    # -- prefetch from storage -----------------------------------------------------------------
    def prefetch_from_storage(self, req_id: object, anchor: TreeNode, tokens: list[int]) -> int:
        """Fetch the stored pages that continue ``anchor`` by ``tokens`` (checked by the facade)."""
        cache, host, storage = self.cache, self.host, self.storage
        if req_id in self.in_flight.prefetch:
            raise InvalidInputError(f"request {req_id!r} already has a prefetch in flight")
        ps = self.page_size
        tokens = list(tokens)[: len(tokens) - len(tokens) % ps]
        hashes = page_hashes(tokens, ps, self.path_hash(anchor))
        n_pages = 0
        while n_pages < len(hashes) and hashes[n_pages] in storage.pages:
            n_pages += 1
        n = n_pages * ps
        if n == 0 or n < self.prefetch_threshold:
            return 0
        host.pin(anchor, mamba=False)
        slots = allocate_or_make_room(lambda: host.host_kv_pool.alloc(n), cache.evict_host, n)
        slot = None
        state_key = hashes[n_pages - 1]
        if slots is not None and state_key in storage.states:
            slot = cache.alloc_state(host.host_mamba_pool, cache.evict_mamba_host)
            if slot is None:
                host.host_kv_pool.free(slots)
                slots = None
        if slots is None:
            host.unpin(anchor, mamba=False)
            return 0
        if slot is not None:
            anchor.protect_host_mamba()
            if not self.old_pin_rule:
                host.mamba_host_lru_list.discard(anchor)
        op = storage.new_op("prefetch", hashes=hashes[:n_pages])
        self.in_flight.prefetch[req_id] = (anchor, tokens[:n], slots, op, slot)
        if self.events.active:
            self.events.emit(EventKind.STORAGE, f"prefetch of {count(n, 'token')} under #{anchor.id} issued; #{anchor.id} pinned", (anchor.id,))
        return n

    def check_prefetch_progress(self, req_id: object) -> int | None:
        """If ``req_id``'s prefetch has completed: hang the fetched tokens under the anchor as
        host-only nodes, free the slots of the part already cached, release the pins. Returns the
        tokens newly inserted, or ``None`` while the prefetch is still in flight."""
        entry = self.in_flight.prefetch.get(req_id)
        if entry is None:
            raise InvalidInputError(f"no prefetch in flight for request {req_id!r}")
        anchor, tokens, slots, op, slot = entry
        if not op.done():
            return None
        del self.in_flight.prefetch[req_id]
        storage, pools = self.storage, self.host
        storage.ops.remove(op)
        if self._fails():
            pools.host_kv_pool.free(slots)
            if slot is not None:
                pools.host_mamba_pool.free(slot)
            self.host.unpin(anchor, mamba=slot is not None)
            if self.events.active:
                self.events.emit(EventKind.STORAGE, f"prefetch under #{anchor.id} failed (injected fault): nothing "
                                 f"inserted, {count(len(slots), 'host slot')} freed; #{anchor.id} unpinned", (anchor.id,))
            return 0
        ps = self.page_size
        for i, h in enumerate(op.payload["hashes"]):
            k, v = storage.pages[h]
            pools.host_kv_pool.k_buffer[:, slots[i * ps : (i + 1) * ps]] = k
            pools.host_kv_pool.v_buffer[:, slots[i * ps : (i + 1) * ps]] = v
        if slot is not None:
            conv, ssm = storage.states[op.payload["hashes"][-1]]
            pools.host_mamba_pool.conv[:, slot[0]] = conv
            pools.host_mamba_pool.ssm[:, slot[0]] = ssm
        used, attached = self.insert_host(anchor, RadixKey(tokens, None), slots, slot)
        if used < len(slots):
            free = torch.ones(len(slots), dtype=torch.bool)
            free[len(slots) - used :] = False
            pools.host_kv_pool.free(slots[free])
        if slot is not None and not attached:
            pools.host_mamba_pool.free(slot)
        self.host.unpin(anchor, mamba=slot is not None)
        return used

    def insert_host(self, anchor: TreeNode, key: RadixKey, slots: torch.Tensor,
                    slot: torch.Tensor | None) -> tuple[int, bool]:
        """Hang fetched host KV under ``anchor``. Returns (trailing host slots adopted by a new
        node, whether the state slot was attached). Matching children are retimed (and, unless
        legacy B3, refreshed in the full LRU like an insert); a remainder under a parent that is
        neither root nor backed up is refused unless legacy B6."""
        b3 = self.skip_full_lru
        ps = self.page_size
        tree, root = self.tree, self.tree.root
        anchor.last_access_time = tree.tick()
        if not b3:
            self.insert.refresh_lru(anchor)
        self._announce_retime(anchor, b3, mamba_moved=not b3)
        node = anchor
        while len(key) and (ck := key.child_key(ps)) in node.children:
            node = node.children[ck]
            node.last_access_time = tree.tick()
            if b3:
                if node.mamba_value is not None:
                    self.device.mamba_lru_list.reset_node_mru(node)
            else:
                self.insert.refresh_lru(node)
            self._announce_retime(node, b3, mamba_moved=True)
            p = node.key.match(key, ps)
            if p < len(node.key):
                node = self.lookup.split(node, p)
            key, slots = key[p:], slots[p:]
        if not len(key):
            return 0, False
        if node is not root and node.host_value is None and not self.hang_under_unbacked:
            if self.events.active:
                self.events.emit(EventKind.STORAGE, f"prefetched {count(len(key), 'token')} refused: attach point #{node.id} is not backed up", (node.id,))
            return 0, False
        new = tree.new_node(key, node)
        new.host_value = slots.clone()
        new.last_access_time = tree.tick()
        tree.attach(node, new)
        if slot is not None:
            new.mamba_host_value = slot.clone().view(1)
            self.host.mamba_host_lru_list.insert_mru(new)
        self.lookup.refresh(new)
        self.lookup.refresh(node)
        if self.events.active:
            self.events.emit(EventKind.NODE_CREATED, f"prefetched host node #{new.id}{preview(key.token_ids)} under #{node.id} (KV=H M={new.state_tier()})", (new.id, node.id))
        return len(key), slot is not None

    def _announce_retime(self, node: TreeNode, b3: bool, mamba_moved: bool) -> None:
        """Emit one LRU_REFRESH event for a node retimed by the host insert (no state change)."""
        if not self.events.active or node is self.tree.root or node.value is None:
            return
        if b3:
            mamba = "" if node.mamba_value is None else (
                "; mamba LRU refreshed" if mamba_moved else "; its mamba LRU refresh skipped too")
            text = f"#{node.id} retimed without moving in the full LRU (legacy B3){mamba}"
        else:
            text = f"#{node.id} retimed and moved to the MRU end of its device LRU lists"
        self.events.emit(EventKind.LRU_REFRESH, text, (node.id,), misplaced=b3)
