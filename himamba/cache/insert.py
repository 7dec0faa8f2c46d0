"""Insert (reference §3.3): cache a request's key with its device KV slots and its state slot.

The walk follows the key down the tree, retiming and refreshing each node on the way; slots of
tokens the tree already holds (past ``prev_prefix_len``) are freed; a host-only node on the way
*unevicts* by adopting the request's device slots (KV=DH); the remainder becomes a new leaf, or,
when the key ends on a stateless node, that node adopts the state. Each node walked counts a hit
as the write policy says (which may back it up).
"""

from __future__ import annotations

import numpy as np
import torch

from himamba.cache.device_tier import DeviceTier
from himamba.cache.lookup import Lookup
from himamba.cache.policies import NoHostTier
from himamba.cache.results import InsertResult
from himamba.cache.tree import RadixTree
from himamba.cache.words import count
from himamba.core.key import RadixKey, preview
from himamba.core.node import TreeNode
from himamba.errors import CacheAssertionError, InvalidInputError
from himamba.memory.device import check_on_device
from himamba.observe.events import EventKind
from himamba.validate import check_int


class Insert:
    """insert and its argument check, for one cache (``cache`` is the facade: its write policy)."""

    def __init__(self, cache, tree: RadixTree, device: DeviceTier, lookup: Lookup) -> None:
        self.cache, self.tree, self.device, self.lookup = cache, tree, device, lookup
        self.move_states = not lookup.consumed_only  # eviction lru_consumed: inserts leave the mamba list alone
        self.events = cache.events
        self.page_size = tree.page_size

    # -- the argument check ----------------------------------------------------------------------
    def check_args(
        self, key: RadixKey, value: torch.Tensor, mamba_value: torch.Tensor | None, prev_prefix_len: int
    ) -> tuple[list[TreeNode], np.ndarray, np.ndarray | None]:
        """Raise InvalidInputError unless insert(key, value, mamba_value, prev_prefix_len) is
        well formed. ``mamba_value=None`` skips the state checks (for callers that allocate the
        state slot only after validating). Returns what the insert reuses: the device nodes that
        the check's read-only walk found wholly matched by ``key`` (in order from the root), and
        the host ids of ``value`` and of ``mamba_value`` (``None`` without one) that it checked."""
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.int64:
            raise InvalidInputError("value must be a 1-D int64 tensor of device KV slots")
        n = len(key.token_ids)
        if value.shape[0] != n:
            raise InvalidInputError(f"value has {len(value)} slots but the key has {n} tokens")
        if n % self.page_size:
            raise InvalidInputError(f"key of {n} tokens is not a multiple of the page size {self.page_size}")
        if mamba_value is not None and (
            not isinstance(mamba_value, torch.Tensor) or mamba_value.numel() != 1 or mamba_value.dtype != torch.int64
        ):
            raise InvalidInputError("mamba_value must be a 1-element int64 tensor naming a device state slot")
        if type(prev_prefix_len) is not int or not 0 <= prev_prefix_len <= n:
            check_int(prev_prefix_len, "prev_prefix_len", 0, n)
        device = self.device
        check_on_device(value, device.kv_pool.device, "value (device KV slots)")
        if mamba_value is not None:
            check_on_device(mamba_value, device.mamba_pool.device, "mamba_value (a device state slot)")
        kv = device.kv_pool.allocator
        ids = kv.host_ids(value)
        state_ids, state = None, None
        if mamba_value is not None:
            states = device.mamba_pool.allocator
            state_ids = states.host_ids(mamba_value)
            state = (states, state_ids, "mamba_value", "state")
        problem = kv.handover_problem(ids, prev_prefix_len, "value", "prev_prefix_len", "device KV", state=state)
        if problem is not None:
            raise InvalidInputError(problem)
        if not prev_prefix_len:
            return [], ids, state_ids
        reach, walked = self.device_reach(key, prev_prefix_len)
        if reach < prev_prefix_len:
            raise InvalidInputError(
                f"prev_prefix_len={prev_prefix_len} claims the first {prev_prefix_len} slots of value come from the tree, "
                f"but only {reach} tokens of this key are cached on device: the tree would adopt its own slots twice")
        return walked, ids, state_ids

    def device_reach(self, key: RadixKey, limit: int) -> tuple[int, list[TreeNode]]:
        """How many leading tokens of ``key`` (counted up to ``limit`` or a little past) lie on
        device nodes of the tree, following the path an insert walks, and the nodes on the way
        that ``key`` matches wholly. Changes nothing."""
        ps = self.page_size
        node, pos, n = self.tree.root, 0, len(key)
        walked: list[TreeNode] = []
        while pos < limit and pos < n and (ck := key.child_key_at(pos, ps)) in node.children:
            child = node.children[ck]
            if child.value is None:
                break
            p = child.key.match_at(key, pos, ps)
            pos += p
            if p < len(child.key.token_ids):
                break
            walked.append(child)
            node = child
        return pos, walked

    # -- the walk -------------------------------------------------------------------------------------
    def insert(
        self, key: RadixKey, value: torch.Tensor, mamba_value: torch.Tensor, prev_prefix_len: int, chunked: bool,
        walked: list[TreeNode], ids: np.ndarray, state_ids: np.ndarray, path: list[TreeNode] | None = None,
    ) -> InsertResult:
        """The insert's walk and changes, on arguments :meth:`check_args` passed (and what it
        returned). ``walked``: nodes the check found wholly matched, in order; reached again
        through the same children, their keys (which only a split changes, and a split puts a new
        node in the parent's place) need no new compare. ``ids``, ``state_ids``: the host ids of
        ``value`` and ``mamba_value``, so that no slot is read twice. ``path``, when given, gets
        the nodes from the root (excluded) to the one that ends at the key's end appended, in order."""
        return self._walk(self.tree.root, 0, key, value, mamba_value, prev_prefix_len, chunked, walked, ids,
                          state_ids, path)

    @property
    def defers_walks(self) -> bool:
        """May :meth:`insert_after` defer a walk here: only on a cache without a host tier, whose
        hit only counts (a tiered hit may back a node up)."""
        return type(self.cache.write_policy_object) is NoHostTier

    def insert_after(
        self, path: list[TreeNode], key: RadixKey, value: torch.Tensor, mamba_value: torch.Tensor,
        prev_prefix_len: int, ids: np.ndarray, state_ids: np.ndarray,
    ) -> InsertResult:
        """``insert(key, value, mamba_value, prev_prefix_len, chunked=False, ...)`` on a device-only
        cache, with its walk over ``path`` deferred to a later insert: for inserting several depths
        of one key (states every few blocks) in one walk instead of one from the root per depth.

        ``path`` is the tree's path from the root (excluded) to a device node that ends exactly
        ``prev_prefix_len`` tokens into ``key`` and matches it wholly (what an insert of
        ``key[:prev_prefix_len]`` appended to its ``path``). The nodes of ``path`` are counted as
        walked (each one's hit count, and the clock by one tick each, first, as the walk would)
        but are neither retimed nor moved to the MRU ends; the walk goes on below them and
        appends its nodes to ``path``. The caller must end the run with an :meth:`insert` whose
        walk passes every node of ``path`` (``walked=path``): that walk retimes them and moves them
        to the MRU ends in path order, which leaves the tree, clock, hit counts and LRU lists as a
        plain insert per depth would. Only for a cache without a host tier (whose hit only
        counts); CacheAssertionError otherwise."""
        if not self.defers_walks:
            raise CacheAssertionError("insert_after: only a device-only cache defers its walk (a hit may back up)")
        for node in path:
            node.hit_count += 1
        self.tree.clock += len(path)
        start = path[-1] if path else self.tree.root
        return self._walk(start, prev_prefix_len, key, value, mamba_value, prev_prefix_len, False, [], ids,
                          state_ids, path)

    def _walk(
        self, node: TreeNode, pos: int, key: RadixKey, value: torch.Tensor, mamba_value: torch.Tensor,
        prev_prefix_len: int, chunked: bool, walked: list[TreeNode], ids: np.ndarray, state_ids: np.ndarray,
        path: list[TreeNode] | None,
    ) -> InsertResult:
        """The walk of :meth:`insert` from ``node``, which ends ``pos`` tokens into ``key``; those
        ``pos`` tokens are on device and count towards ``prefix_len``."""
        ps = self.page_size
        tree, device = self.tree, self.device
        on_hit = self.cache.write_policy_object.on_hit
        total = pos  # tokens counted towards prefix_len
        n = len(key)  # the walk has matched key[:pos] (and value[:pos])
        known = iter(walked)
        expect = next(known, None)
        while pos < n and (ck := key.child_key_at(pos, ps)) in node.children:
            node = node.children[ck]
            node.last_access_time = tree.tick()
            self.refresh_lru(node)
            if node is expect:
                p, expect = len(node.key.token_ids), next(known, None)
            else:
                p = node.key.match_at(key, pos, ps)
            if p < len(node.key.token_ids):
                node = self.lookup.split(node, p)
            if node.value is None:
                self.unevict(node, value[pos:pos + p], ids[pos:pos + p])
            else:
                total += self.take_duplicates(node, ids, pos, p, prev_prefix_len, total)
                on_hit(self.cache, node, chunked)
            if path is not None:
                path.append(node)
            pos += p
        if pos < n:
            new = self.add_leaf(node, key[pos:], value, ids, pos, mamba_value, state_ids)
            on_hit(self.cache, new, chunked)
            if path is not None:
                path.append(new)
            return InsertResult(total, False)
        if node.mamba_value is None:
            self.attach_state(node, mamba_value, state_ids)
            return InsertResult(total, False)
        device.full_lru_list.reset_node_mru(node)
        if self.move_states:
            device.mamba_lru_list.reset_node_mru(node)
        node.last_access_time = tree.tick()
        return InsertResult(total, True)

    def refresh_lru(self, node: TreeNode) -> None:
        """An insert's LRU refresh of a node on its path: to the MRU end of the full list if
        its KV is on device, of the mamba list if it holds a device state (the root is never
        listed; under ``lru_consumed`` the mamba list is left alone). Used by ``insert`` and by
        the storage tier's host insert."""
        if node is self.tree.root:
            return
        if node.value is not None:
            self.device.full_lru_list.reset_node_mru(node)
        if node.mamba_value is not None and self.move_states:
            self.device.mamba_lru_list.reset_node_mru(node)

    def take_duplicates(self, node: TreeNode, ids: np.ndarray, pos: int, p: int, prev_prefix_len: int,
                        total: int) -> int:
        """The walk passed ``node`` (on device) over the request's slots ``ids[pos:pos + p]``: free
        those past ``prev_prefix_len`` (the tree has its own). Returns the tokens that count
        towards ``prefix_len``."""
        if prev_prefix_len < total + p:
            dup = ids[pos + max(0, prev_prefix_len - total) : pos + p]
            self.device.kv_pool.free_owned(dup)  # checked with the whole value
            if self.events.active:
                self.events.emit(EventKind.DUPLICATE_FREED, f"#{node.id} already cached: freed {count(len(dup), 'duplicate request slot')}", (node.id,))
        return p

    def unevict(self, node: TreeNode, value: torch.Tensor, ids: np.ndarray) -> None:
        """A host-only node on the insert's path adopts the request's device slots ``value``
        (host ids ``ids``) (KV=DH)."""
        if node.value is not None or node.mamba_value is not None:
            raise CacheAssertionError(f"unevict: node #{node.id} is not evicted")
        self.device.adopt_kv(node, value, ids)
        self.lookup.refresh(node)
        self.lookup.refresh(node.parent)
        if self.events.active:
            self.events.emit(EventKind.UNEVICTED, f"host node #{node.id}{preview(node.key.token_ids)} takes the request's {count(len(value), 'device slot')} (KV=DH)", (node.id,))

    def add_leaf(self, parent: TreeNode, key: RadixKey, value: torch.Tensor, ids: np.ndarray, start: int,
                 mamba_value: torch.Tensor, state_ids: np.ndarray) -> TreeNode:
        """A new leaf under ``parent`` for ``key``, owning the request's slots ``value[start:]``
        (host ids ``ids``) and its state slot (host ids ``state_ids``)."""
        node = self.tree.new_node(key, parent)
        node.last_access_time = self.tree.tick()
        self.tree.attach(parent, node)
        self.device.adopt_kv(node, value, ids, start)
        self.device.adopt_state(node, mamba_value, state_ids)
        self.lookup.refresh(node)
        self.lookup.refresh(parent)
        if self.events.active:
            self.events.emit(
                EventKind.NODE_CREATED,
                f"new leaf #{node.id}{preview(key.token_ids)} under #{parent.id} with {count(len(key), 'token')} and a state",
                (node.id, parent.id),
            )
        return node

    def attach_state(self, node: TreeNode, mamba_value: torch.Tensor, state_ids: np.ndarray) -> None:
        """A stateless node on the insert's path adopts the request's state slot (host ids ``state_ids``)."""
        self.device.adopt_state(node, mamba_value, state_ids)
        self.device.full_lru_list.reset_node_mru(node)
        node.last_access_time = self.tree.tick()
        if self.events.active:
            self.events.emit(EventKind.STATE_ATTACHED, f"tombstone #{node.id} adopts the request's state", (node.id,))
