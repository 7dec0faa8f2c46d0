"""CacheConformance: behaviour every radix cache of this package must show (cachetools style).

A test module subclasses the mixin once per cache and configuration::

    class TestMambaRadixCachePage4(CacheConformance):
        cache_class = hm.MambaRadixCache
        config = {"page_size": 4, "device_kv_tokens": 128}

The tests only use the public API (insert, match_prefix, inc_lock_ref / dec_lock_ref, evict,
evict_mamba, the pools and the size counters) and only make claims that hold for the
device-only ``MambaRadixCache`` and for a tiered cache with the same API alike: "evicted"
means "its KV is no longer on the device" (a tiered cache may keep the node on host), and no
test depends on a write policy. Caches whose transfers complete asynchronously are brought to
rest by :meth:`CacheConformance.settle` before each check. Token sequences are whole pages, so
the same tests run for every page size. ``assert_healthy`` (invariants with exact pool
accounting, and byte integrity) runs after every operation.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from helpers import alloc_kv, alloc_state, assert_healthy, make_cache, node_at, put

import himamba as hm
from himamba.memory.content import kv_content, state_matches


class CacheConformance:
    """Mixin of generic cache tests. Subclasses set ``cache_class`` and optionally ``config``
    (keyword overrides of :class:`himamba.CacheConfig`; ``device`` defaults to the CPU)."""

    cache_class: ClassVar[type | None] = None
    config: ClassVar[dict[str, Any]] = {}

    # -- plumbing ----------------------------------------------------------------------------------
    def make(self, **overrides: Any):
        assert self.cache_class is not None, "subclasses must set cache_class"
        cache = make_cache(self.cache_class, **{**self.config, **overrides})
        self.check(cache)
        return cache

    def settle(self, cache) -> None:
        """Process finished transfers, if the cache has any (a tiered cache's write and load
        acknowledgements), so locks taken for in-flight copies do not leak into the checks.
        Override for caches that need something else."""
        for name in ("writing_check", "loading_check"):
            fn = getattr(cache, name, None)
            if callable(fn):
                fn()

    def check(self, cache, held_kv: int = 0, held_states: int = 0) -> None:
        self.settle(cache)
        assert_healthy(cache, held_kv=held_kv, held_states=held_states)

    @staticmethod
    def seq(cache, start: int, pages: int) -> list[int]:
        """``pages`` whole pages of consecutive token ids starting at ``start``."""
        return list(range(start, start + pages * cache.page_size))

    def put(self, cache, tokens: list[int]) -> hm.InsertResult:
        result = put(cache, tokens)
        self.check(cache)
        return result

    @staticmethod
    def device_len(cache, tokens) -> int:
        """Tokens of ``tokens`` usable from the device right now (a lookup; may refresh LRU)."""
        return cache.match_prefix(tokens).prefix_len

    @staticmethod
    def on_device(cache, node) -> bool:
        """``node`` is in the tree with its KV on the device."""
        return node.value is not None and any(n is node for n in cache.nodes())

    # -- the tests ---------------------------------------------------------------------------------
    def test_insert_match_round_trip(self):
        """insert(key, slots, state) then match_prefix(key) gives back exactly those slots and
        the new node; a longer query matches the same; an unknown key matches nothing."""
        cache = self.make()
        toks = self.seq(cache, 1, 3)
        kv = alloc_kv(cache, toks, 0)
        state = alloc_state(cache, toks)
        self.check(cache, held_kv=len(toks), held_states=1)

        result = cache.insert(toks, kv, state)
        self.check(cache)
        assert result.prefix_len == 0 and result.mamba_exist is False
        node = node_at(cache, toks)
        assert node.parent is cache.root_node
        assert torch.equal(node.value, kv) and node.mamba_value.tolist() == state.tolist()

        m = cache.match_prefix(toks)
        self.check(cache)
        assert torch.equal(m.device_indices, kv) and m.prefix_len == len(toks)
        assert m.last_device_node is node

        m = cache.match_prefix(toks + self.seq(cache, 500, 1))
        self.check(cache)
        assert torch.equal(m.device_indices, kv) and m.last_device_node is node

        m = cache.match_prefix(self.seq(cache, 900, 2))
        self.check(cache)
        assert m.prefix_len == 0 and m.last_device_node is cache.root_node
        assert cache.num_nodes() == 1
        assert cache.kv_pool.available_size() == cache.kv_pool.capacity - len(toks)
        assert cache.mamba_pool.available_size() == cache.mamba_pool.capacity - 1

    def test_prefix_reuse(self):
        """A request extending a cached prompt reuses its slots: only the new tokens are
        allocated, insert reports the cached part as prefix_len, and the extended prompt matches
        the old slots followed by the new ones."""
        cache = self.make()
        a = self.seq(cache, 1, 2)
        ab = a + self.seq(cache, 100, 2)
        self.put(cache, a)
        a_slots = cache.match_prefix(a).device_indices.clone()
        self.check(cache)
        used = cache.kv_pool.capacity - cache.kv_pool.available_size()
        assert used == len(a)

        result = self.put(cache, ab)
        assert result.prefix_len == len(a) and result.mamba_exist is False
        assert cache.kv_pool.capacity - cache.kv_pool.available_size() == len(ab)
        m = cache.match_prefix(ab)
        self.check(cache)
        assert m.prefix_len == len(ab)
        assert torch.equal(m.device_indices[: len(a)], a_slots)
        assert node_at(cache, ab).parent is node_at(cache, a)
        assert cache.num_nodes() == 2

    def test_duplicate_insert_returns_mamba_exist(self):
        """Inserting a cached key again reports mamba_exist: the tree keeps its own state and
        the caller still owns (and frees) its slot; the duplicate KV slots are freed; pool usage
        and the tree are as before."""
        cache = self.make()
        toks = self.seq(cache, 1, 2)
        self.put(cache, toks)
        node = node_at(cache, toks)
        tree_state = node.mamba_value.clone()
        free_kv, free_states = cache.kv_pool.available_size(), cache.mamba_pool.available_size()

        kv = alloc_kv(cache, toks, 0)
        state = alloc_state(cache, toks)
        self.check(cache, held_kv=len(toks), held_states=1)
        result = cache.insert(toks, kv, state, prev_prefix_len=0)
        self.check(cache, held_kv=0, held_states=1)
        assert result.mamba_exist is True and result.prefix_len == len(toks)
        assert node.mamba_value.tolist() == tree_state.tolist()
        assert not cache.kv_pool.allocator.is_allocated(kv).any()
        assert cache.mamba_pool.allocator.all_allocated(state)

        cache.mamba_pool.free(state)
        self.check(cache)
        assert cache.kv_pool.available_size() == free_kv
        assert cache.mamba_pool.available_size() == free_states
        assert cache.num_nodes() == 1

    def test_lock_protects_from_evict(self):
        """A locked prompt survives any evict while another one goes; once released it can be
        evicted too. A lock covers the ancestors of the locked node."""
        cache = self.make()
        x = self.seq(cache, 1, 2)
        x_long = x + self.seq(cache, 50, 1)
        y = self.seq(cache, 100, 2)
        self.put(cache, x)
        self.put(cache, x_long)
        self.put(cache, y)
        nx, nxl, ny = node_at(cache, x), node_at(cache, x_long), node_at(cache, y)

        assert cache.inc_lock_ref(nxl) == -len(x_long)
        self.check(cache)
        assert cache.full_protected_size_ == len(x_long)
        freed = cache.evict(cache.kv_pool.capacity)
        self.check(cache)
        assert freed == len(y)
        assert self.on_device(cache, nx) and self.on_device(cache, nxl)
        assert not self.on_device(cache, ny)
        assert cache.full_evictable_size_ == 0 and cache.full_protected_size_ == len(x_long)
        assert self.device_len(cache, x_long) == len(x_long)
        self.check(cache)

        assert cache.dec_lock_ref(nxl) == len(x_long)
        self.check(cache)
        assert cache.full_protected_size_ == 0
        assert cache.evict(cache.kv_pool.capacity) == len(x_long)
        self.check(cache)
        assert not self.on_device(cache, nx) and not self.on_device(cache, nxl)
        assert cache.kv_pool.available_size() == cache.kv_pool.capacity

    def test_evict_frees_oldest_leaf_first(self):
        """evict takes least recently used leaves first: of three equal prompts X, Y, Z
        (inserted in that order), after X is looked up again, evicting one prompt's worth of
        tokens takes exactly Y; X and Z stay fully usable."""
        cache = self.make()
        x, y, z = (self.seq(cache, s, 2) for s in (1, 100, 200))
        for toks in (x, y, z):
            self.put(cache, toks)
        nx, ny, nz = (node_at(cache, t) for t in (x, y, z))
        assert self.device_len(cache, x) == len(x)
        self.check(cache)

        assert cache.evict(len(y)) == len(y)
        self.check(cache)
        assert not self.on_device(cache, ny)
        assert self.on_device(cache, nx) and self.on_device(cache, nz)
        assert self.device_len(cache, y) == 0
        self.check(cache)
        assert self.device_len(cache, x) == len(x)
        self.check(cache)

        assert cache.evict(1) == len(z), "Z was not refreshed, so it is now the oldest"
        self.check(cache)
        assert self.on_device(cache, nx) and not self.on_device(cache, nz)

    def test_evict_until_empty_returns_pools_to_full_capacity(self):
        """Evicting everything (a tree with branches, a split and a tombstone) frees every
        device KV slot and every device state: pools at full capacity, device counters zero,
        both device LRU lists and the evictable-leaf set empty, nothing matchable."""
        cache = self.make()
        a = self.seq(cache, 1, 2)
        prompts = [a, a + self.seq(cache, 50, 1), a + self.seq(cache, 60, 2), self.seq(cache, 200, 3)]
        for toks in prompts:
            self.put(cache, toks)
        cache.match_prefix(prompts[3][: cache.page_size])  # lookup split
        self.check(cache)
        assert cache.evict_mamba(1) == 1  # a (has children) or a leaf: either way one state
        self.check(cache)
        assert cache.num_nodes() >= 4
        on_device = cache.kv_pool.capacity - cache.kv_pool.available_size()
        assert on_device == cache.full_evictable_size_ > 0

        freed = cache.evict(cache.kv_pool.capacity)
        self.check(cache)
        assert freed == on_device
        assert cache.kv_pool.available_size() == cache.kv_pool.capacity
        assert cache.mamba_pool.available_size() == cache.mamba_pool.capacity
        assert (cache.full_evictable_size_, cache.full_protected_size_) == (0, 0)
        assert (cache.mamba_evictable_size_, cache.mamba_protected_size_) == (0, 0)
        assert cache.full_lru_list.order() == [] and cache.mamba_lru_list.order() == []
        assert cache.evictable_full_device_leaves == set()
        for toks in prompts:
            assert self.device_len(cache, toks) == 0
            self.check(cache)
        assert cache.evict(1) == 0
        self.check(cache)

    def inner_state_evicted(self):
        """A[2 pages] → AB[+1 page], both with states; then ``evict_mamba(1)`` takes A's state
        (A is older), leaving A a device tombstone. Returns (cache, a, ab, node A, node AB)."""
        cache = self.make()
        a = self.seq(cache, 1, 2)
        ab = a + self.seq(cache, 100, 1)
        self.put(cache, a)
        self.put(cache, ab)
        na, nab = node_at(cache, a), node_at(cache, ab)
        assert self.device_len(cache, ab) == len(ab)  # na older than nab in every list
        self.check(cache)
        states = cache.mamba_pool.available_size()
        assert cache.evict_mamba(1) == 1
        self.check(cache)
        assert na.mamba_value is None and na.value is not None
        assert nab.mamba_value is not None
        assert cache.mamba_pool.available_size() == states + 1
        return cache, a, ab, na, nab

    def test_tombstone_cuts_usable_prefix(self):
        """When an internal node loses its device state, a lookup ending at it reuses nothing,
        while a lookup through it to a descendant with a state still reuses everything."""
        cache, a, ab, na, nab = self.inner_state_evicted()
        m = cache.match_prefix(a)
        self.check(cache)
        assert m.prefix_len == 0 and m.last_device_node is cache.root_node
        m = cache.match_prefix(ab)
        self.check(cache)
        assert m.prefix_len == len(ab) and m.last_device_node is nab

    def test_match_ending_mid_edge_splits_and_reuses_nothing(self):
        """A lookup that ends inside a cached edge splits it: the upper part has no state, so
        the lookup reuses 0 tokens (and reports the branching point); the full prompt still
        matches its original slots through both halves. Tokens past the last whole page are
        ignored."""
        cache = self.make(mamba_cache_chunk_size=1)
        toks = self.seq(cache, 1, 3)
        self.put(cache, toks)
        slots = node_at(cache, toks).value.clone()
        head = toks[: 2 * cache.page_size]

        query = head + [999] * (cache.page_size - 1) if cache.page_size > 1 else head
        m = cache.match_prefix(query)
        self.check(cache)
        assert m.prefix_len == 0 and m.last_device_node is cache.root_node
        assert m.mamba_branching_seqlen == len(head)
        assert cache.num_nodes() == 2
        upper = node_at(cache, head)
        assert upper.mamba_value is None and len(upper.key) == len(head)
        assert node_at(cache, toks).parent is upper

        m = cache.match_prefix(toks)
        self.check(cache)
        assert torch.equal(m.device_indices, slots)
        assert m.last_device_node is node_at(cache, toks)

    def test_extra_key_separates_trees(self):
        """The same tokens under different extra keys are cached separately (different root
        children, different slots) and only a query with the same extra key matches them."""
        cache = self.make()
        toks = self.seq(cache, 1, 2)
        slots = {}
        for extra in ("lora-a", "lora-b"):
            kv = alloc_kv(cache, toks, 0)
            state = alloc_state(cache, toks)
            self.check(cache, held_kv=len(toks), held_states=1)
            result = cache.insert(hm.RadixKey(toks, extra), kv, state)
            self.check(cache)
            assert result.prefix_len == 0 and result.mamba_exist is False
            slots[extra] = kv
        assert len(cache.root_node.children) == 2 and cache.num_nodes() == 2

        for extra, kv in slots.items():
            m = cache.match_prefix(hm.RadixKey(toks, extra))
            self.check(cache)
            assert torch.equal(m.device_indices, kv)
            assert m.last_device_node.key.extra_key == extra
        assert self.device_len(cache, hm.RadixKey(toks, "lora-c")) == 0
        self.check(cache)
        assert self.device_len(cache, toks) == 0
        self.check(cache)
        assert cache.kv_pool.capacity - cache.kv_pool.available_size() == 2 * len(toks)

    def test_bytes_survive_operations(self):
        """Across inserts, a split, a tombstone and an eviction, every KV row and state the
        tree owns keeps its bytes (check_integrity), the matched slots hold the content of the
        matched tokens, and check_integrity does notice a corrupted row."""
        cache = self.make()
        a = self.seq(cache, 1, 2)
        ab = a + self.seq(cache, 100, 2)
        c = self.seq(cache, 300, 2)
        for toks in (a, ab, c):
            self.put(cache, toks)
        na, nc = node_at(cache, a), node_at(cache, c)
        cache.match_prefix(ab[: len(a) + cache.page_size])  # lookup split inside B
        self.check(cache)
        assert cache.num_nodes() == 4
        assert self.device_len(cache, ab) == len(ab)  # order of states: b, a, c ...
        self.check(cache)
        assert self.device_len(cache, c) == len(c)  # ... then c, b, a
        self.check(cache)
        assert cache.evict_mamba(1) == 1  # a: the least recently used state, has children
        self.check(cache)
        assert na.mamba_value is None and self.on_device(cache, na)
        assert self.device_len(cache, ab) == len(ab)  # refreshes the whole chain; c is oldest
        self.check(cache)
        assert cache.evict(1) == len(c)
        self.check(cache)
        assert not self.on_device(cache, nc)

        m = cache.match_prefix(ab)
        self.check(cache)
        assert m.prefix_len == len(ab)
        k, v = kv_content(cache.kv_pool.spec, ab, 0, cache.kv_pool.device)
        assert torch.equal(cache.kv_pool.k_buffer[:, m.device_indices], k)
        assert torch.equal(cache.kv_pool.v_buffer[:, m.device_indices], v)
        assert state_matches(cache.mamba_pool, m.last_device_node.mamba_value, ab)

        row = int(m.device_indices[0])
        saved = cache.kv_pool.k_buffer[:, row].clone()
        cache.kv_pool.k_buffer[:, row] += 1
        bad = hm.check_integrity(cache)
        assert bad and all(violation.invariant == "INTEGRITY" for violation in bad)
        cache.kv_pool.k_buffer[:, row] = saved
        self.check(cache)
