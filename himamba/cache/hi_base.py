"""HiTreeBase: the tiered cache's extra state — host pools, transfer controller, host LRU list,
host-leaf set, in-flight maps — and host pins (reference §1.4-1.6, §3.13).

A node's KV lives on the device (``value``), on the host (``host_value``) or both; likewise its
state (``mamba_value`` / ``mamba_host_value``). Host pins (``host_ref_counter``,
``host_mamba_ref_counter``) keep host copies in place while storage operations use them.
"""

from __future__ import annotations

from typing import Any

from himamba.cache.tree_base import TreeBase
from himamba.core.lru import LRUList
from himamba.core.node import TreeNode, host_mamba_lru_list
from himamba.errors import InvalidInputError, LockError
from himamba.memory.pools import KVPool, MambaPool
from himamba.memory.transfer import TransferController, make_engine
from himamba.observe.events import EventKind, operation
from himamba.validate import check_allocation, check_bool, physical_memory_bytes


class HiTreeBase(TreeBase):
    """Host tier bookkeeping shared by the tiered cache's mixins."""

    def __init__(self, config=None, *, manual_acks: bool = False, **overrides: Any) -> None:
        self._manual_acks = check_bool(manual_acks, "manual_acks")
        super().__init__(config, **overrides)

    def _check_memory(self, config) -> None:
        """The host pools live in this machine's RAM, next to the device pools when the device is
        the CPU; refuse sizes that cannot fit before anything is allocated."""
        super()._check_memory(config)
        host = config.host_bytes() + (config.device_bytes() if self.device.type == "cpu" else 0)
        check_allocation(host, "the host pools", physical_memory_bytes(), "this machine's RAM")

    def _init_tree(self) -> None:
        cfg = self.config
        if not hasattr(self, "host_kv_pool"):
            pin = self.device.type == "cuda"
            self.host_kv_pool = KVPool(cfg.model, cfg.host_kv_tokens, cfg.page_size, "cpu", pin_memory=pin)
            self.host_mamba_pool = MambaPool(cfg.model, cfg.host_mamba_slots, "cpu", pin_memory=pin)
            self.mamba_host_lru_list = host_mamba_lru_list()
            self.cache_controller = TransferController(
                self.kv_pool, self.mamba_pool, self.host_kv_pool, self.host_mamba_pool,
                manual_acks=self._manual_acks,
                # looked up at each call, so that they are bracketed while anyone listens
                evict_host_states=lambda n: self.evict_mamba_host(n),
                evict_device_states=lambda n: self.evict_mamba(n),
                engine=make_engine(cfg.copy_engine, self.device),
            )
        super()._init_tree()
        self.evictable_full_host_leaves: set[TreeNode] = set()
        self.ongoing_write_through: dict[int, TreeNode] = {}
        self._locked_writes: set[int] = set()  # ids in ongoing_write_through whose write locked
        self.ongoing_load_back: dict[int, TreeNode] = {}
        self.ongoing_prefetch: dict[object, tuple] = {}
        self.ongoing_backup: dict[int, tuple[TreeNode, bool]] = {}
        self.write_through_threshold = 1 if cfg.write_policy == "write_through" else 2
        self.load_back_threshold = cfg.load_back_threshold

    @operation("reset")
    def reset(self) -> None:
        """Finish or drop everything in flight, free every slot the tree owns, start empty.

        Issued copies are waited for (so nothing lands later in reused slots); queued loads are
        dropped unissued; prefetch slots are freed; storage contents are kept."""
        cc = self.cache_controller
        cc.drop_pending_loads()
        for queue in (cc.ack_write_queue, cc.ack_load_queue):
            while queue:
                queue.popleft().wait()
        for entry in self.ongoing_prefetch.values():
            self.host_kv_pool.free(entry[2])
            if entry[4] is not None:
                self.host_mamba_pool.free(entry[4])
        storage = getattr(self, "storage", None)
        if storage is not None:
            storage.ops.clear()
        super().reset()

    def _lru_lists(self) -> tuple[LRUList, ...]:
        return (self.full_lru_list, self.mamba_lru_list, self.mamba_host_lru_list)

    def _free_node_memory(self, node: TreeNode) -> None:
        super()._free_node_memory(node)
        if node.host_value is not None and node is not self.root_node:
            self.host_kv_pool.free(node.host_value)
        if node.mamba_host_value is not None:
            self.host_mamba_pool.free(node.mamba_host_value)

    @property
    def write_policy(self) -> str:
        return self.config.write_policy

    # -- host leaf set (reference §1.5) ---------------------------------------------------------
    def _is_host_leaf(self, node: TreeNode) -> bool:
        if node is self.root_node or node.value is not None or node.host_value is None:
            return False
        if self.config.has_legacy("B5"):
            if node.host_ref_counter != 0:
                return False
            return not any(c.value is None and c.host_value is not None for c in node.children.values())
        return node.host_ref_counter == 0 and node.host_mamba_ref_counter == 0 and not node.children

    def _update_host_leaf_status(self, node: TreeNode) -> None:
        if self._is_host_leaf(node):
            self.evictable_full_host_leaves.add(node)
        else:
            self.evictable_full_host_leaves.discard(node)

    def _refresh_leaf_status(self, node: TreeNode) -> None:
        self._update_device_leaf_status(node)
        self._update_host_leaf_status(node)

    def _host_lru_admits(self, node: TreeNode) -> bool:
        """May a node with a host state be in the host LRU list? (Pinned states are kept out.)"""
        return node.host_mamba_ref_counter == 0 or self.config.has_legacy("B5")

    def _free_host_state(self, node: TreeNode) -> None:
        """Free ``node``'s host state slot (if any); it leaves the host LRU list. Nothing else
        (host KV, leaf sets) changes."""
        if node.mamba_host_value is None:
            return
        self.host_mamba_pool.free(node.mamba_host_value)
        self.mamba_host_lru_list.discard(node)
        node.mamba_host_value = None

    # -- host pins (reference §3.13) ------------------------------------------------------------
    @operation("protect_host")
    def protect_host(self, node: TreeNode, mamba: bool = False) -> None:
        """Pin ``node``'s host KV (and, with ``mamba``, its host state) against host eviction.

        Changes: ``host_ref_counter += 1`` (and ``host_mamba_ref_counter += 1``); the node leaves
        the host-leaf set (and the host LRU list). Use this, not ``node.protect_host()``, so that
        the leaf sets stay right."""
        self._check_in_tree(node)
        check_bool(mamba, "mamba")
        if node is self.root_node or node.host_value is None:
            raise InvalidInputError(f"protect_host: node #{node.id} has no host KV to pin (pin a backed-up node)")
        if mamba and node.mamba_host_value is None:
            raise InvalidInputError(f"protect_host(mamba=True): node #{node.id} has no host state to pin")
        self._protect_host_node(node, mamba)

    @operation("release_host")
    def release_host(self, node: TreeNode, mamba: bool = False) -> None:
        """Release one pin taken by :meth:`protect_host` (same ``mamba`` flag). Raises
        :class:`LockError`, changing nothing, when a counter would go below zero."""
        self._check_in_tree(node)
        check_bool(mamba, "mamba")
        kv_held, mamba_held = self._internal_pins(node)
        if node.host_ref_counter <= kv_held or (mamba and node.host_mamba_ref_counter <= mamba_held):
            held = f"; {kv_held} held by storage operations in flight" if kv_held else ""
            raise LockError(f"release_host(#{node.id}, mamba={mamba}): no pin of the caller's to release "
                            f"(hr={node.host_ref_counter}, hmr={node.host_mamba_ref_counter}{held})")
        self._release_host_node(node, mamba)

    def _internal_pins(self, node: TreeNode) -> tuple[int, int]:
        """Host pins on ``node`` that storage operations in flight hold (KV pins, state pins);
        only their completion releases them."""
        kv = state = 0
        for pinned, mamba in self.ongoing_backup.values():
            if pinned is node:
                kv, state = kv + 1, state + mamba
        for entry in self.ongoing_prefetch.values():
            if entry[0] is node:
                kv, state = kv + 1, state + (entry[4] is not None)
        return kv, state

    def _check_releasable(self, node: TreeNode) -> None:
        """Also refuse a release that would take a lock an in-flight load or locked write holds
        (those are released by ``loading_check`` / ``writing_check`` only): on every node of the
        path the caller must hold at least one lock of its own."""
        super()._check_releasable(node)
        if not self.ongoing_load_back and not self._locked_writes:
            return
        root = self.root_node
        held: dict[int, int] = {}
        writes = (self.ongoing_write_through[i] for i in self._locked_writes if i in self.ongoing_write_through)
        for holder in (*self.ongoing_load_back.values(), *writes):
            x = holder
            while x is not root:
                held[x.id] = held.get(x.id, 0) + 1
                x = x.parent
        x = node
        while x is not root:
            h = held.get(x.id, 0)
            if h and x.full_lock_ref + x.evicted_lock_ref <= h:
                raise LockError(f"dec_lock_ref(#{node.id}): the lock on node #{x.id} belongs to a load-back or "
                                "write-through in flight (released by loading_check / writing_check), not to the caller")
            x = x.parent

    def _protect_host_node(self, node: TreeNode, protect_mamba: bool = True) -> None:
        node.protect_host()
        self.evictable_full_host_leaves.discard(node)
        if protect_mamba:
            node.protect_host_mamba()
            if not self.config.has_legacy("B5"):
                self.mamba_host_lru_list.discard(node)
        if self.events.active:
            self.events.emit(EventKind.PIN, f"pin #{node.id} (hr={node.host_ref_counter}, hmr={node.host_mamba_ref_counter})", (node.id,))

    def _release_host_node(self, node: TreeNode, release_mamba: bool = True) -> None:
        node.release_host()
        if release_mamba:
            node.release_host_mamba()
            if (node.host_mamba_ref_counter == 0 and node.mamba_host_value is not None
                    and not self.mamba_host_lru_list.in_list(node)):
                self.mamba_host_lru_list.insert_mru(node)
        if node.host_ref_counter == 0 and node.host_mamba_ref_counter == 0:
            self._update_host_leaf_status(node)
        if self.events.active:
            self.events.emit(EventKind.UNPIN, f"unpin #{node.id} (hr={node.host_ref_counter}, hmr={node.host_mamba_ref_counter})", (node.id,))
