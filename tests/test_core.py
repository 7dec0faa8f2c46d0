"""Unit tests of the building blocks: RadixKey, LRUList, SlotAllocator, pools, ModelSpec presets,
deterministic content, and the EventBus."""

from __future__ import annotations

import math
import random
import weakref

import pytest
import torch
from helpers import alloc_kv, alloc_state, assert_healthy, make_cache, node_at, put

import himamba as hm
from himamba.core.key import as_key, common_prefix_len
from himamba.core.lru import LRULink, LRUList
from himamba.core.node import full_lru_list, host_mamba_lru_list, mamba_lru_list
from himamba.errors import CacheAssertionError
from himamba.memory.allocator import SlotAllocator
from himamba.memory.content import (
    kv_content,
    kv_matches,
    prefix_fingerprint,
    state_content,
    state_content_many,
    state_matches,
    write_kv,
    write_state,
)
from himamba.memory.pools import KVPool, MambaPool
from himamba.observe.events import Event, EventBus, EventKind

KiB, MiB = 1024, 1024 * 1024

# -- RadixKey ------------------------------------------------------------------------------------


class TestRadixKey:
    def test_child_key_page_size_1_is_the_first_token(self):
        assert hm.RadixKey([7, 8, 9]).child_key(1) == 7
        assert hm.RadixKey([7, 8, 9]).child_key() == 7

    def test_child_key_larger_pages_is_the_first_page(self):
        key = hm.RadixKey([7, 8, 9, 10, 11, 12, 13, 14])
        assert key.child_key(4) == (7, 8, 9, 10)
        assert key.child_key(2) == (7, 8)
        assert isinstance(key.child_key(4), tuple)

    def test_child_key_with_extra_key(self):
        key = hm.RadixKey([7, 8, 9, 10], extra_key="lora-1")
        assert key.child_key(1) == ("lora-1", 7)
        assert key.child_key(4) == ("lora-1", (7, 8, 9, 10))
        assert key.child_key(4) != hm.RadixKey([7, 8, 9, 10], extra_key="lora-2").child_key(4)
        assert hm.RadixKey([7], extra_key=0).child_key(1) == (0, 7)  # a falsy extra key still counts

    @pytest.mark.parametrize(
        "a, b, ps, want",
        [
            ([1, 2, 3, 4, 5, 6, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8], 1, 7),
            ([1, 2, 3, 4, 5, 6, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8], 2, 6),
            ([1, 2, 3, 4, 5, 6, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8], 4, 4),
            ([1, 2, 3, 4, 5, 6, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8], 8, 0),
            ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8], 4, 8),
            ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6], 4, 4),  # a partial last page does not count
            ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6], 1, 5),
            ([9, 2, 3, 4], [1, 2, 3, 4], 1, 0),
            ([], [1, 2], 1, 0),
            ([1, 2], [], 4, 0),
        ],
    )
    def test_match_counts_whole_equal_pages(self, a, b, ps, want):
        assert hm.RadixKey(a).match(hm.RadixKey(b), ps) == want
        assert hm.RadixKey(b).match(hm.RadixKey(a), ps) == want

    def test_common_prefix_len_agrees_with_a_plain_loop(self):
        rng = random.Random(5)
        for _ in range(2000):
            n = rng.randint(0, 70)
            a = [rng.randrange(3) for _ in range(n)]
            b = a[: rng.randint(0, n)] + [rng.randrange(3) for _ in range(rng.randint(0, 20))]
            if rng.random() < 0.5:
                a, b = b, a
            want = 0
            while want < min(len(a), len(b)) and a[want] == b[want]:
                want += 1
            assert common_prefix_len(a, b) == want, (a, b)

    def test_offset_forms_agree_with_slicing(self):
        """match_at and child_key_at (what the walks use) answer as match and child_key on a slice."""
        rng = random.Random(9)
        for _ in range(500):
            extra = rng.choice([None, "x"])
            q = hm.RadixKey([rng.randrange(3) for _ in range(rng.randint(1, 30))], extra)
            edge = hm.RadixKey([rng.randrange(3) for _ in range(rng.randint(1, 12))], extra)
            pos, ps = rng.randrange(len(q)), rng.choice([1, 2, 4])
            assert edge.match_at(q, pos, ps) == edge.match(q[pos:], ps)
            if len(q) - pos >= ps:
                assert q.child_key_at(pos, ps) == q[pos:].child_key(ps)
        with pytest.raises(hm.InvalidInputError, match="different extra keys"):
            hm.RadixKey([1], "a").match_at(hm.RadixKey([0, 1], "b"), 1)

    def test_matching_different_extra_keys_raises(self):
        with pytest.raises(hm.InvalidInputError, match="different extra keys"):
            hm.RadixKey([1, 2], "a").match(hm.RadixKey([1, 2], "b"))
        with pytest.raises(hm.InvalidInputError):
            hm.RadixKey([1, 2]).match(hm.RadixKey([1, 2], "b"))
        assert hm.RadixKey([1, 2], "a").match(hm.RadixKey([1, 3], "a")) == 1

    def test_page_aligned(self):
        key = hm.RadixKey(list(range(10)), extra_key="x")
        aligned = key.page_aligned(4)
        assert aligned.token_ids == list(range(8)) and aligned.extra_key == "x"
        assert key.page_aligned(5) is key
        assert key.page_aligned(1) is key
        assert hm.RadixKey([1, 2, 3]).page_aligned(4).token_ids == []

    def test_slicing_keeps_the_extra_key(self):
        key = hm.RadixKey([1, 2, 3, 4, 5], extra_key=("salt", 3))
        part = key[1:4]
        assert isinstance(part, hm.RadixKey)
        assert part.token_ids == [2, 3, 4] and part.extra_key == ("salt", 3)
        assert key[2:].extra_key == ("salt", 3) and key[:0].extra_key == ("salt", 3)
        assert key[0] == 1 and key[-1] == 5
        assert list(key) == [1, 2, 3, 4, 5] and len(key) == 5
        assert key.token_ids == [1, 2, 3, 4, 5]  # slicing did not touch the original

    def test_equality_includes_the_extra_key_and_keys_are_unhashable(self):
        assert hm.RadixKey([1, 2]) == hm.RadixKey([1, 2])
        assert hm.RadixKey([1, 2], "a") != hm.RadixKey([1, 2], "b")
        assert hm.RadixKey([1, 2]) != hm.RadixKey([1, 2, 3])
        with pytest.raises(TypeError):
            hash(hm.RadixKey([1]))

    def test_as_key(self):
        key = hm.RadixKey([1, 2])
        assert as_key(key) is key
        assert as_key([3, 4]) == hm.RadixKey([3, 4])
        assert as_key((3, 4), extra_key="e") == hm.RadixKey([3, 4], "e")

        class Index:
            def __init__(self, v):
                self.v = v

            def __index__(self):
                return self.v

        got = as_key([Index(5), 6])
        assert got.token_ids == [5, 6] and all(type(t) is int for t in got.token_ids)
        for bad in ([True], [1.0], ["1"], [None]):
            with pytest.raises(hm.InvalidInputError, match="token ids must be ints"):
                as_key(bad)

    def test_as_key_accepts_numpy_ints(self):
        np = pytest.importorskip("numpy")
        got = as_key([np.int64(3), np.int32(4), np.uint8(5), 6])
        assert got.token_ids == [3, 4, 5, 6]
        assert all(type(t) is int for t in got.token_ids)
        with pytest.raises(hm.InvalidInputError):
            as_key([np.float64(3.0)])
        with pytest.raises(hm.InvalidInputError):
            as_key([np.bool_(True)])
        cache = make_cache()
        put(cache, [3, 4, 5, 6])
        assert cache.match_prefix([np.int64(3), np.int64(4), np.int64(5), np.int64(6)]).prefix_len == 4

    def test_different_extra_keys_never_share_nodes_in_the_cache(self):
        cache = make_cache()
        for extra in ("a", "b", None):
            key = hm.RadixKey([1, 2, 3], extra_key=extra)
            cache.insert(key, alloc_kv(cache, [1, 2, 3], 0), alloc_state(cache, [1, 2, 3]))
        assert len(cache.root_node.children) == 3
        assert cache.match_prefix(hm.RadixKey([1, 2, 3], "a")).prefix_len == 3
        assert cache.match_prefix(hm.RadixKey([1, 2, 3], "c")).prefix_len == 0
        assert cache.match_prefix([1, 2, 3]).prefix_len == 3
        assert_healthy(cache)


# -- LRUList -------------------------------------------------------------------------------------


def _chain(*specs):
    """Nodes from (id, parent id or None, has value) triples; returns {id: node} with a root 0."""
    root = hm.TreeNode(0, hm.RadixKey([]))
    nodes = {0: root}
    for node_id, parent_id, has_value in specs:
        node = hm.TreeNode(node_id, hm.RadixKey([node_id]), nodes[parent_id])
        if has_value:
            node.value = torch.tensor([node_id])
            node.mamba_value = torch.tensor([node_id])
            node.mamba_host_value = torch.tensor([node_id])
        nodes[node_id] = node
    return nodes


def _full_list():
    return full_lru_list()


class TestLRUList:
    def test_insert_mru_orders_most_recent_first(self):
        n = _chain((1, 0, True), (2, 1, True), (3, 0, True))
        lst = _full_list()
        assert len(lst) == 0 and lst.order() == [] and lst.lru_no_lock() is None
        for i in (1, 2, 3):
            lst.insert_mru(n[i])
        assert lst.order() == [3, 2, 1] and len(lst) == 3
        assert [x.id for x in lst.nodes()] == [3, 2, 1]
        assert lst.in_list(n[2]) and n[2] in lst and not lst.in_list(None) and not lst.in_list(n[0])

    def test_remove_and_errors(self):
        n = _chain((1, 0, True), (2, 0, True), (3, 0, False))
        lst = _full_list()
        lst.insert_mru(n[1])
        lst.insert_mru(n[2])
        with pytest.raises(CacheAssertionError, match="already in the list"):
            lst.insert_mru(n[1])
        with pytest.raises(CacheAssertionError, match="no value"):
            lst.insert_mru(n[3])
        lst.remove_node(n[1])
        assert lst.order() == [2] and len(lst) == 1 and not lst.in_list(n[1])
        with pytest.raises(CacheAssertionError, match="not in the list"):
            lst.remove_node(n[1])
        lst.discard(n[1])  # tolerant
        lst.discard(n[2])
        assert lst.order() == [] and len(lst) == 0
        lst.insert_mru(n[1])  # a removed node may come back
        assert lst.order() == [1]

    def test_reset_node_mru(self):
        n = _chain((1, 0, True), (2, 0, True), (3, 0, True), (4, 0, True))
        lst = _full_list()
        for i in (1, 2, 3):
            lst.insert_mru(n[i])
        lst.reset_node_mru(n[1])
        assert lst.order() == [1, 3, 2]
        lst.reset_node_mru(n[1])
        assert lst.order() == [1, 3, 2]
        with pytest.raises(CacheAssertionError):
            lst.reset_node_mru(n[4])

    def test_reset_node_and_parents_puts_the_child_ahead_of_its_parents(self):
        # root - 1 - 2 (no value) - 3 ; root - 4 ; root - 5
        n = _chain((1, 0, True), (2, 1, False), (3, 2, True), (4, 0, True), (5, 0, True))
        lst = _full_list()
        for i in (3, 1, 4, 5):
            lst.insert_mru(n[i])
        assert lst.order() == [5, 4, 1, 3]
        lst.reset_node_and_parents_mru(n[3], n[0])
        assert lst.order() == [3, 1, 5, 4]
        lst.reset_node_and_parents_mru(n[3], n[0])  # already in front: unchanged
        assert lst.order() == [3, 1, 5, 4]
        lst.reset_node_and_parents_mru(n[4], n[0])
        assert lst.order() == [4, 3, 1, 5]

    def test_reset_node_and_parents_stops_at_the_given_root(self):
        n = _chain((1, 0, True), (2, 1, True), (3, 2, True), (4, 0, True))
        lst = _full_list()
        for i in (3, 2, 1, 4):
            lst.insert_mru(n[i])
        lst.reset_node_and_parents_mru(n[3], n[1])  # 1 is the "root": not moved
        assert lst.order() == [3, 2, 4, 1]

    def test_reset_node_and_parents_requires_qualifying_members(self):
        n = _chain((1, 0, True), (2, 1, True))
        lst = _full_list()
        lst.insert_mru(n[2])
        with pytest.raises(CacheAssertionError, match="not in the list"):
            lst.reset_node_and_parents_mru(n[2], n[0])

    def test_lru_no_lock_and_prev_no_lock_skip_locked_nodes(self):
        n = _chain((1, 0, True), (2, 0, True), (3, 0, True), (4, 0, True))
        lst = _full_list()
        for i in (1, 2, 3, 4):
            lst.insert_mru(n[i])  # LRU end: 1
        assert lst.lru_no_lock() is n[1]
        n[1].full_lock_ref = 1
        n[3].full_lock_ref = 2
        assert lst.lru_no_lock() is n[2]
        assert lst.prev_no_lock(n[2]) is n[4]
        assert lst.prev_no_lock(n[1]) is n[2]
        assert lst.prev_no_lock(n[4]) is None
        n[2].full_lock_ref = n[4].full_lock_ref = 1
        assert lst.lru_no_lock() is None
        n[2].mamba_lock_ref = 0
        with pytest.raises(CacheAssertionError):
            lst.prev_no_lock(hm.TreeNode(9, hm.RadixKey([9])))

    def test_each_list_skips_on_its_own_lock(self):
        n = _chain((1, 0, True), (2, 0, True))
        for make, attr in ((full_lru_list, "full_lock_ref"), (mamba_lru_list, "mamba_lock_ref"),
                           (host_mamba_lru_list, "mamba_lock_ref")):
            lst = make()
            lst.insert_mru(n[1])
            lst.insert_mru(n[2])
            assert lst.lru_no_lock() is n[1]
            setattr(n[1], attr, 1)
            assert lst.lru_no_lock() is n[2], lst.kind
            setattr(n[1], attr, 0)
            other = "full_lock_ref" if attr == "mamba_lock_ref" else "mamba_lock_ref"
            setattr(n[1], other, 1)
            assert lst.lru_no_lock() is n[1], lst.kind
            setattr(n[1], other, 0)

    def test_each_list_chains_its_own_link_and_admits_only_holders(self):
        n = _chain((1, 0, True), (2, 0, False))
        for make, link, value in ((full_lru_list, "full_link", "value"), (mamba_lru_list, "mamba_link", "mamba_value"),
                                  (host_mamba_lru_list, "host_mamba_link", "mamba_host_value")):
            lst = make()
            lst.insert_mru(n[1])
            assert lst.head.next is getattr(n[1], link) and getattr(n[1], link).next is lst.tail, lst.kind
            others = {"full_link", "mamba_link", "host_mamba_link"} - {link}
            assert all(getattr(n[1], o).prev is None for o in others), lst.kind
            with pytest.raises(CacheAssertionError, match="no value"):
                lst.insert_mru(n[2])
            setattr(n[2], value, torch.tensor([2]))
            lst.insert_mru(n[2])
            assert lst.order() == [2, 1]
            setattr(n[2], value, None)
            lst.remove_node(n[1])
            lst.remove_node(n[2])

    def test_the_three_lists_are_independent(self):
        n = _chain((1, 0, True), (2, 0, True))
        full, mamba = _full_list(), mamba_lru_list()
        full.insert_mru(n[1])
        full.insert_mru(n[2])
        mamba.insert_mru(n[2])
        mamba.insert_mru(n[1])
        assert full.order() == [2, 1] and mamba.order() == [1, 2]
        full.remove_node(n[1])
        assert mamba.order() == [1, 2]

    def test_a_list_over_any_node_type(self):
        class Item:
            def __init__(self, item_id, locks=0):
                self.id, self.parent, self.locks, self.last_access_time = item_id, None, locks, 0.0
                self.link = LRULink(self)

        lst = LRUList("items", link=lambda x: x.link, lock_count=lambda x: x.locks, holds_value=lambda x: True)
        a, b, c = Item(1), Item(2, locks=1), Item(3)
        for x in (a, b, c):
            lst.insert_mru(x)
        assert lst.order() == [3, 2, 1] and lst.lru_no_lock() is a and lst.prev_no_lock(a) is c


# -- SlotAllocator ------------------------------------------------------------------------------


class TestSlotAllocator:
    def test_fresh_allocator_hands_out_slots_in_order(self):
        a = SlotAllocator(6)
        assert a.alloc(2).tolist() == [0, 1]
        assert a.alloc(3).tolist() == [2, 3, 4]
        assert a.alloc(0).tolist() == []
        assert a.alloc(2) is None
        assert a.alloc(1).tolist() == [5]
        assert a.alloc(1) is None

    def test_freed_slots_are_reused_first_in_first_out(self):
        a = SlotAllocator(6)
        slots = a.alloc(6)
        a.free(slots[[4]])
        a.free(slots[[1, 3]])
        a.free(slots[[0]])
        assert a.alloc(4).tolist() == [4, 1, 3, 0]
        a.free(torch.tensor([3]))
        a.free(torch.tensor([1]))
        assert a.alloc(1).tolist() == [3]
        assert a.alloc(1).tolist() == [1]

    def test_never_used_slots_come_before_freed_ones(self):
        a = SlotAllocator(6)
        first = a.alloc(2)
        a.free(first[[1]])
        assert a.alloc(4).tolist() == [2, 3, 4, 5]
        assert a.alloc(1).tolist() == [1]

    def test_sizes(self):
        a = SlotAllocator(8, 2)
        assert (a.available_size(), a.used_size(), a.capacity, a.num_pages) == (8, 0, 8, 4)
        x = a.alloc(6)
        assert (a.available_size(), a.used_size()) == (2, 6)
        a.free(x[:2])
        assert (a.available_size(), a.used_size()) == (4, 4)
        assert a.alloc(6) is None
        assert (a.available_size(), a.used_size()) == (4, 4)

    def test_pages_are_aligned_and_contiguous(self):
        ps = 4
        a = SlotAllocator(32, ps)
        x = a.alloc(16)
        assert x.tolist() == list(range(16))
        a.free(torch.cat((x[8:12], x[0:4])))
        a.free(x[12:16])
        y = a.alloc(24)
        rows = y.view(-1, ps)
        assert bool((rows[:, 0] % ps == 0).all())
        assert bool((rows == rows[:, :1] + torch.arange(ps)).all())
        assert (rows[:, 0] // ps).tolist() == [4, 5, 6, 7, 2, 0]  # fresh pages first, then freed ones in order
        assert len(set(y.tolist()) | set(x[4:8].tolist())) == 28

    @pytest.mark.parametrize("page_size", [1, 4])
    def test_no_slots_are_fine_everywhere(self, page_size):
        """An empty slot tensor: no problem, allocated, handed over, freed and held as a no-op."""
        a = SlotAllocator(16, page_size)
        none = torch.empty(0, dtype=torch.int64)
        assert a.problem_with(none) is None and a.all_allocated(none)
        assert a.handover_problem(none, 0, "value") is None
        a.free(none)
        a.free_owned(none)
        a.release(a.hold(none))
        assert a.available_size() == 16 and a.parked_size() == 0

    def test_is_allocated_and_all_allocated(self):
        a = SlotAllocator(8)
        x = a.alloc(4)
        assert a.is_allocated(torch.arange(8)).tolist() == [True] * 4 + [False] * 4
        assert a.all_allocated(x) and a.all_allocated(x[:0])
        a = SlotAllocator(8, 2)
        x = a.alloc(4)
        assert a.all_allocated(x)
        assert not a.all_allocated(torch.arange(2, 6))
        assert not a.all_allocated(torch.tensor([8, 9]))  # out of range: False, not an error
        assert not a.all_allocated(torch.tensor([1, 2]))  # not a whole aligned page

    def test_is_allocated_answers_per_slot_with_pages(self):
        """Regression: is_allocated used to answer once per page."""
        a = SlotAllocator(8, 2)
        a.alloc(4)
        assert a.is_allocated(torch.arange(8)).tolist() == [True] * 4 + [False] * 4

    @pytest.mark.parametrize("ps", [1, 2])
    def test_handover_names_what_is_wrong_with_a_split_into_tree_and_caller_slots(self, ps):
        """The first ``tree_len`` slots must be owned by the tree, the rest held by the caller,
        each named once; the answer is a sentence, and asking changes no state."""
        a = SlotAllocator(16, ps)
        tree, mine = a.alloc(2 * ps), a.alloc(2 * ps)
        a.mark_owned(tree)
        before = a._state.clone()

        def problem(idx, tree_len):
            return a.handover_problem(idx, tree_len, "value", "prev_prefix_len", "device KV")

        assert problem(torch.cat((tree, mine)), 2 * ps) is None
        assert problem(mine, 0) is None and problem(tree[:0], 0) is None
        assert "claims" in problem(torch.cat((tree, mine)), 3 * ps)  # a caller slot claimed as the tree's
        assert "already owns" in problem(torch.cat((tree, mine)), ps)  # a tree slot past the split
        assert "already owns" in problem(tree, 0)
        assert "more than once" in problem(torch.cat((mine, mine)), 0)
        assert "more than once" in problem(torch.cat((tree, tree)), 4 * ps)
        assert "not allocated" in problem(torch.arange(6 * ps, 7 * ps), 0)
        assert "out of range" in problem(torch.arange(16, 16 + ps), 0)
        if ps > 1:
            assert "aligned pages" in problem(mine[1:1 + ps], 0)
            assert "claims" in problem(torch.cat((tree, mine)), 2 * ps + 1)  # a page split between owners
        assert problem(torch.tensor([1.0]), 0).startswith("value indices must be an integer tensor")
        assert torch.equal(a._state, before)
        assert a.owned_flags(torch.cat((tree, mine))).tolist() == [True] * 2 * ps + [False] * 2 * ps
        with pytest.raises(hm.PoolError, match="belong to a tree node"):
            a.free(tree)  # a caller cannot free the tree's slots
        assert torch.equal(a._state, before)
        a.free_owned(tree)  # the tree's own free clears ownership
        assert not a.owned_flags(tree).any() and not a.is_allocated(tree).any()

    def test_a_single_state_slot_is_handed_over_only_when_the_caller_holds_it(self):
        a = SlotAllocator(4)
        held, owned = a.alloc(1), a.alloc(1)
        a.mark_owned(owned)
        assert a.handover_problem(held, 0, "mamba_value", pool="state") is None
        assert "already owns" in a.handover_problem(owned, 0, "mamba_value", pool="state")
        assert "out of range" in a.handover_problem(torch.tensor([9]), 0, "mamba_value", pool="state")
        for bad in (torch.tensor([3]),):
            assert a.handover_problem(bad, 0, "mamba_value", pool="state") == \
                "mamba_value names a state slot that is not allocated"

    def test_a_failed_free_changes_nothing(self):
        a = SlotAllocator(4)
        x = a.alloc(3)
        with pytest.raises(hm.PoolError):
            a.free(torch.tensor([0, 3]))  # 3 was never handed out
        assert a.is_allocated(torch.arange(4)).tolist() == [True, True, True, False]
        assert a.available_size() == 1
        a.free(x)
        assert a.available_size() == 4

    def test_free_list_does_not_alias_the_callers_tensor(self):
        """Regression: free() used to keep the caller's tensor itself (page size 1)."""
        a = SlotAllocator(4)
        x = a.alloc(4)
        a.free(x[1:3])
        x[1:3] = torch.tensor([0, 3])  # the caller reuses its buffer
        assert sorted(a.alloc(2).tolist()) == [1, 2]

    def test_free_list_with_pages_does_not_alias_the_callers_tensor(self):
        a = SlotAllocator(8, 2)
        x = a.alloc(8)
        a.free(x[2:6])
        x[2:6] = torch.tensor([0, 1, 6, 7])
        assert sorted(a.alloc(4).tolist()) == [2, 3, 4, 5]


# -- pools and model shapes -----------------------------------------------------------------------


def _specs():
    return [hm.ModelSpec.tiny()] + [s.scaled(1, 1) for k, s in hm.ModelSpec.presets().items() if k != "tiny"]


class TestPools:
    @pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.name)
    def test_kv_pool_shapes(self, spec):
        pool = KVPool(spec, capacity=8, page_size=2)
        shape = (spec.num_full_layers, 8, spec.kv_heads, spec.head_dim)
        assert tuple(pool.k_buffer.shape) == shape and tuple(pool.v_buffer.shape) == shape
        assert pool.k_buffer.dtype == spec.kv_dtype and pool.v_buffer.dtype == spec.kv_dtype
        assert pool.nbytes == 8 * spec.kv_bytes_per_token
        assert (pool.capacity, pool.page_size, pool.available_size(), pool.used_size()) == (8, 2, 8, 0)
        assert pool.alloc(4).tolist() == [0, 1, 2, 3] and pool.used_size() == 4

    @pytest.mark.parametrize("spec", _specs(), ids=lambda s: s.name)
    def test_mamba_pool_shapes(self, spec):
        pool = MambaPool(spec, capacity=3)
        assert tuple(pool.conv.shape) == (spec.num_mamba_layers, 3, spec.conv_channels, spec.conv_kernel - 1)
        assert tuple(pool.ssm.shape) == (spec.num_mamba_layers, 3, *spec.ssm_shape)
        assert pool.conv.dtype == spec.conv_dtype and pool.ssm.dtype == spec.ssm_dtype
        assert pool.nbytes == 3 * spec.state_bytes_per_slot
        assert pool.page_size == 1

    def test_cache_pools_follow_the_config(self):
        cache = make_cache(page_size=4, device_kv_tokens=32, device_mamba_slots=5)
        spec = cache.config.model
        assert tuple(cache.kv_pool.k_buffer.shape) == (spec.num_full_layers, 32, spec.kv_heads, spec.head_dim)
        assert tuple(cache.mamba_pool.ssm.shape) == (spec.num_mamba_layers, 5, *spec.ssm_shape)
        assert cache.kv_pool.page_size == 4 and cache.mamba_pool.capacity == 5

    def test_copy_slot(self):
        spec = hm.ModelSpec.tiny()
        pool = MambaPool(spec, capacity=3)
        a, b = pool.alloc(1), pool.alloc(1)
        write_state(pool, a, [1, 2, 3])
        write_state(pool, b, [4])
        pool.copy_slot(b, a)
        assert state_matches(pool, b, [1, 2, 3]) and state_matches(pool, a, [1, 2, 3])


def _state_bytes(spec: hm.ModelSpec) -> int:
    conv = spec.conv_channels * (spec.conv_kernel - 1) * torch.empty((), dtype=spec.conv_dtype).element_size()
    ssm = math.prod(spec.ssm_shape) * torch.empty((), dtype=spec.ssm_dtype).element_size()
    return spec.num_mamba_layers * (conv + ssm)


def _kv_bytes(spec: hm.ModelSpec) -> int:
    return 2 * spec.num_full_layers * spec.kv_heads * spec.head_dim * torch.empty((), dtype=spec.kv_dtype).element_size()


class TestModelSpecPresets:
    @pytest.mark.parametrize(
        "preset, layers, kv_per_token, conv_per_layer, ssm_per_layer, state_mib",
        [
            (hm.ModelSpec.qwen3_next_80b_a3b, (12, 36, 48), 24 * KiB, 48 * KiB, 2 * MiB, 73.7),
            (hm.ModelSpec.nemotron_h_8b, (4, 24, 52), 16 * KiB, 60 * KiB, 4 * MiB, 97.4),
            (hm.ModelSpec.jamba_v0_1, (4, 28, 32), 16 * KiB, 48 * KiB, 512 * KiB, 15.3),
        ],
        ids=["qwen3-next", "nemotron-h", "jamba"],
    )
    def test_sizes_recomputed_from_the_shapes(self, preset, layers, kv_per_token, conv_per_layer, ssm_per_layer, state_mib):
        spec = preset()
        assert (spec.num_full_layers, spec.num_mamba_layers, spec.num_layers) == layers
        assert _kv_bytes(spec) == kv_per_token == spec.kv_bytes_per_token
        assert spec.conv_bytes_per_layer == conv_per_layer
        assert spec.ssm_bytes_per_layer == ssm_per_layer
        assert _state_bytes(spec) == spec.state_bytes_per_slot == spec.num_mamba_layers * (conv_per_layer + ssm_per_layer)
        assert round(spec.state_bytes_per_slot / MiB, 1) == state_mib
        assert spec.state_to_kv_ratio == pytest.approx(spec.state_bytes_per_slot / kv_per_token)
        assert spec.describe()["KV bytes per token"] == kv_per_token

    def test_model_card_shapes(self):
        qwen, nemo, jamba = hm.ModelSpec.qwen3_next_80b_a3b(), hm.ModelSpec.nemotron_h_8b(), hm.ModelSpec.jamba_v0_1()
        assert (qwen.kv_heads, qwen.head_dim, qwen.conv_channels, qwen.conv_kernel, qwen.ssm_shape) == (2, 256, 8192, 4, (32, 128, 128))
        assert (nemo.kv_heads, nemo.head_dim, nemo.conv_channels, nemo.conv_kernel, nemo.ssm_shape) == (8, 128, 10240, 4, (128, 64, 128))
        assert (jamba.kv_heads, jamba.head_dim, jamba.conv_channels, jamba.conv_kernel, jamba.ssm_shape) == (8, 128, 8192, 4, (8192, 16))
        for spec in (qwen, nemo, jamba):
            assert spec.kv_dtype == torch.bfloat16 and spec.ssm_dtype == torch.float32
        assert qwen.state_to_kv_ratio == 3144  # "one state weighs as much as ~3,100 tokens of KV"

    def test_presets_and_scaling(self):
        presets = hm.ModelSpec.presets()
        assert set(presets) == {"tiny", "qwen3-next-80b-a3b", "nemotron-h-8b", "jamba-v0.1", "falcon-h1", "attention-mamba2-7b"}
        qwen = presets["qwen3-next-80b-a3b"]
        small = qwen.scaled(1, 2)
        assert (small.num_full_layers, small.num_mamba_layers) == (1, 2)
        assert small.kv_bytes_per_token == qwen.kv_bytes_per_token // 12
        assert small.state_bytes_per_slot == 2 * qwen.state_bytes_per_slot // 36
        assert small.conv_shape == qwen.conv_shape == (8192, 3)
        tiny = hm.ModelSpec.tiny()
        assert tiny.kv_bytes_per_token == _kv_bytes(tiny) and tiny.state_bytes_per_slot == _state_bytes(tiny)


# -- deterministic content ------------------------------------------------------------------------


class TestContent:
    spec = hm.ModelSpec.tiny()

    def test_distinct_prefixes_give_distinct_states(self):
        prefixes = [[], [0], [0, 0], [1], [1, 2], [2, 1], [1, 2, 3], [1, 2, 4], [1, 2, 3, 4], list(range(50))]
        states = [state_content(self.spec, prefix_fingerprint(p)) for p in prefixes]
        for i in range(len(prefixes)):
            for j in range(i + 1, len(prefixes)):
                same = torch.equal(states[i][0], states[j][0]) and torch.equal(states[i][1], states[j][1])
                assert not same, (prefixes[i], prefixes[j])
        again = state_content(self.spec, prefix_fingerprint([1, 2, 3]))
        assert torch.equal(again[0], states[6][0]) and torch.equal(again[1], states[6][1])

    def test_fingerprint_continues(self):
        assert prefix_fingerprint([1, 2, 3, 4]) == prefix_fingerprint([3, 4], prefix_fingerprint([1, 2]))
        assert prefix_fingerprint([]) == 0
        assert prefix_fingerprint([0]) != prefix_fingerprint([0, 0])

    def test_state_shapes(self):
        conv, ssm = state_content(self.spec, 12345)
        assert tuple(conv.shape) == (self.spec.num_mamba_layers, *self.spec.conv_shape)
        assert tuple(ssm.shape) == (self.spec.num_mamba_layers, *self.spec.ssm_shape)
        assert not torch.equal(conv[0], conv[1])  # layers differ too

    def test_kv_row_depends_on_token_position_and_layer(self):
        spec = self.spec
        k, v = kv_content(spec, [5, 6, 7], 10)
        assert tuple(k.shape) == (spec.num_full_layers, 3, spec.kv_heads, spec.head_dim) == tuple(v.shape)
        base_k, _ = kv_content(spec, [5], 10)
        other_token, _ = kv_content(spec, [6], 10)
        other_pos, _ = kv_content(spec, [5], 11)
        assert not torch.equal(base_k, other_token)
        assert not torch.equal(base_k, other_pos)
        assert not torch.equal(base_k[0], base_k[1])  # layer
        assert not torch.equal(k, v)
        # a row depends on nothing else: the same token at the same position matches
        assert torch.equal(k[:, 1:2], kv_content(spec, [6], 11)[0])
        assert torch.equal(k[:, 0:1], base_k)

    def test_kv_formula(self):
        """The documented formula, element by element (the implementation caches part of it)."""
        spec = self.spec
        k, v = kv_content(spec, [5, 9], 3)
        for layer in range(spec.num_full_layers):
            for i, (tok, pos) in enumerate(((5, 3), (9, 4))):
                for h in range(spec.kv_heads):
                    for d in range(spec.head_dim):
                        want = (tok * 7 + pos * 13 + layer * 29 + (h * spec.head_dim + d) * 3) % 251
                        assert float(k[layer, i, h, d]) == want and float(v[layer, i, h, d]) == (want + 101) % 251

    def test_many_states_equal_single_states(self):
        fps = [0, 1, 250, 251, 12345, (1 << 61) - 2]
        conv, ssm = state_content_many(self.spec, fps)
        for i, fp in enumerate(fps):
            one_conv, one_ssm = state_content(self.spec, fp)
            assert torch.equal(conv[:, i], one_conv) and torch.equal(ssm[:, i], one_ssm)
        digits = (fps[4] % 251, fps[4] // 251 % 251, fps[4] // 251**2 % 251)
        for e in range(6):  # conv element e of layer 1: digit[e % 3] + e * 5 + 31 (salt 0)
            flat = conv[1, 4].reshape(-1)
            assert float(flat[e]) == (digits[e % 3] + e * 5 + 31) % 251

    def test_a_spec_with_a_list_shape_still_works(self):
        spec = hm.ModelSpec("custom", 1, 1, 2, 1, 2, 2, [2, 2])
        assert spec.ssm_shape == (2, 2)
        assert state_content(spec, 7)[1].shape == (1, 2, 2)

    def test_values_are_exact_in_every_dtype(self):
        k, v = kv_content(self.spec, list(range(300)), 0)
        assert float(k.max()) <= 250 and float(k.min()) >= 0
        assert torch.equal(k.to(torch.bfloat16).float(), k.float())

    def test_write_and_verify_round_trip(self):
        cache = make_cache(device_kv_tokens=8, device_mamba_slots=2)
        idx = cache.kv_pool.alloc(3)
        write_kv(cache.kv_pool, idx, [4, 5, 6], 2)
        assert kv_matches(cache.kv_pool, idx, [4, 5, 6], 2)
        assert not kv_matches(cache.kv_pool, idx, [4, 5, 6], 3)
        assert not kv_matches(cache.kv_pool, idx, [4, 5, 7], 2)
        slot = cache.mamba_pool.alloc(1)
        write_state(cache.mamba_pool, slot, [4, 5, 6])
        assert state_matches(cache.mamba_pool, slot, [4, 5, 6])
        assert not state_matches(cache.mamba_pool, slot, [4, 5])


# -- events -------------------------------------------------------------------------------------


def _record(cache):
    events: list[Event] = []
    stop = cache.events.subscribe(events.append)
    return events, stop


class TestEvents:
    def test_bus_is_inactive_without_listeners(self):
        bus = EventBus()
        assert bus.active is False
        got_a, got_b = [], []
        stop_a = bus.subscribe(got_a.append)
        stop_b = bus.subscribe(got_b.append)
        assert bus.active is True
        bus.emit(EventKind.LOCK, "one", (1,))
        stop_a()
        assert bus.active is True
        bus.emit(EventKind.UNLOCK, "two")
        stop_b()
        assert bus.active is False
        stop_b()  # twice is harmless
        assert bus.active is False
        assert [e.text for e in got_a] == ["one"] and [e.text for e in got_b] == ["one", "two"]
        assert got_a[0].nodes == (1,) and got_a[0].kind is EventKind.LOCK and got_a[0].depth == 0

    def test_cache_has_no_listener_by_default_and_stops_after_unsubscribe(self):
        cache = make_cache()
        assert cache.events.active is False
        events, stop = _record(cache)
        put(cache, [1, 2, 3])
        assert events and cache.events.active
        stop()
        n = len(events)
        put(cache, [1, 2, 4])
        cache.evict(10)
        assert len(events) == n and not cache.events.active

    def test_evict_brackets_leaf_evictions_and_the_cascade(self):
        cache = make_cache()
        put(cache, [1, 2, 3, 4])
        put(cache, [1, 2, 5, 6])  # splits: [1,2] has no state
        put(cache, [8])
        upper = node_at(cache, [1, 2])
        first, second = node_at(cache, [1, 2, 3, 4]), node_at(cache, [1, 2, 5, 6])
        cache.match_prefix([8])  # [8] is the newest: evict takes [3,4], then [5,6]
        events, stop = _record(cache)
        freed = cache.evict(3)
        stop()
        assert freed == 6  # both leaves plus the cascaded [1,2]
        kinds = [e.kind for e in events]
        assert kinds[0] is EventKind.OP_BEGIN and kinds[-1] is EventKind.OP_END
        assert events[0].data["op"] == "evict" == events[-1].data["op"]
        assert events[0].depth == events[-1].depth == 0
        inner = events[1:-1]
        assert inner and all(e.depth == 1 for e in inner)
        assert EventKind.OP_BEGIN not in {e.kind for e in inner}
        assert [e.kind for e in inner] == [
            EventKind.LEAF_EVICTED, EventKind.CASCADE,  # parent still has a child: stop
            EventKind.LEAF_EVICTED, EventKind.CASCADE, EventKind.NODE_DELETED,  # [1,2] goes too
        ] + [EventKind.CASCADE] * (len(inner) - 5)
        assert inner[0].nodes[0] == first.id and inner[2].nodes[0] == second.id
        assert inner[1].data["stop"] is True and inner[3].data["stop"] is False
        assert inner[4].nodes[0] == upper.id
        assert all(e.data["stop"] for e in inner[5:])
        assert "evict" in str(events[0]) and str(inner[0]).startswith("  ")
        assert_healthy(cache)

    def test_operations_are_bracketed_only_while_someone_listens(self):
        """With no listener an operation is the plain method (no bracketing call in between);
        the first listener brackets every operation, the last one leaving removes it; a
        controller's eviction callback is bracketed too; the bus keeps no cache alive."""
        cache = make_cache(cls=hm.HiMambaRadixCache, host_kv_tokens=64, host_mamba_slots=8)
        plain = type(cache).__dict__.get("insert") or hm.MambaRadixCache.insert
        assert "insert" not in vars(cache) and cache.insert.__func__ is plain
        events, stop = _record(cache)
        second = cache.events.subscribe(lambda e: None)
        assert cache.insert.__func__ is not plain
        cache.cache_controller.evict_device_states(1)
        assert [(e.kind, e.data.get("op")) for e in events][:1] == [(EventKind.OP_BEGIN, "evict_mamba")]
        stop()
        assert cache.insert.__func__ is not plain  # one listener is left
        second()
        assert "insert" not in vars(cache) and cache.insert.__func__ is plain
        put(cache, [1, 2])
        assert len(events) == 2  # nothing recorded after the listeners left
        device = make_cache()
        _record(device)[1]()
        gone = weakref.ref(device)
        del device  # freed at once: listening left no cycle behind
        assert gone() is None

    def test_nested_operations_nest_their_events(self):
        cache = make_cache()
        put(cache, [1, 2])
        tokens = [1, 2, 3]
        req = hm.Request(token_ids=tokens, kv_indices=alloc_kv(cache, tokens, 0), mamba_pool_idx=alloc_state(cache, tokens))
        events, stop = _record(cache)
        cache.cache_finished_req(req)
        stop()
        ops = [(e.kind, e.data.get("op"), e.depth) for e in events if e.kind in (EventKind.OP_BEGIN, EventKind.OP_END)]
        assert ops[0] == (EventKind.OP_BEGIN, "cache_finished_req", 0)
        assert ops[-1] == (EventKind.OP_END, "cache_finished_req", 0)
        assert (EventKind.OP_BEGIN, "insert", 1) in ops and (EventKind.OP_END, "insert", 1) in ops
        created = [e for e in events if e.kind is EventKind.NODE_CREATED]
        assert len(created) == 1 and created[0].depth == 2
        depths = [e.depth for e in events]
        assert max(depths) == 2 and depths[0] == 0 and depths[-1] == 0
        assert all(abs(a - b) <= 1 for a, b in zip(depths, depths[1:], strict=False))
        assert_healthy(cache)

    def test_evict_mamba_tombstone_event(self):
        cache = make_cache()
        put(cache, [1, 2])
        put(cache, [1, 2, 3])
        cache.match_prefix([1, 2, 3])  # [1,2] and its child are both fresh; [1,2] is older
        events, stop = _record(cache)
        assert cache.evict_mamba(1) == 1
        stop()
        tomb = [e for e in events if e.kind is EventKind.TOMBSTONE]
        assert len(tomb) == 1 and tomb[0].nodes[0] == node_at(cache, [1, 2]).id and tomb[0].depth == 1
        assert node_at(cache, [1, 2]).mamba_value is None
        assert_healthy(cache)


@pytest.mark.parametrize("page_size", [1, 4])
def test_node_at_finds_only_nodes_ending_exactly_there_and_changes_nothing(page_size):
    ps = page_size
    cache = make_cache(hm.MambaRadixCache, page_size=ps, device_kv_tokens=64 * ps, device_mamba_slots=8)
    a, b = list(range(1, 1 + 2 * ps)), list(range(1, 1 + 3 * ps))
    put(cache, a)
    put(cache, b)
    before = [(n.id, n.last_access_time) for n in cache.nodes()], list(cache.full_lru_list.nodes())
    na = cache.node_at(a)
    assert na is not None and na.key.token_ids == a and na.parent is cache.root_node
    assert cache.node_at(hm.RadixKey(b)).key.token_ids == b[len(a):]
    assert cache.node_at([]) is cache.root_node
    assert cache.node_at(a[:ps]) is None  # inside an edge: no split, no node
    assert cache.node_at(b + [99] * ps) is None and cache.node_at([99] * ps) is None
    assert ([(n.id, n.last_access_time) for n in cache.nodes()], list(cache.full_lru_list.nodes())) == before
    assert_healthy(cache)


def test_a_match_leaves_edges_holding_the_querys_token_objects_without_sharing_its_list():
    """A wholly matched edge takes the query's copy of its tokens (so that the insert that follows
    compares identical objects); its tokens are unchanged and no caller's list is held."""
    cache = make_cache(device_kv_tokens=64, device_mamba_slots=8)
    put(cache, [1000 + i for i in range(6)])
    put(cache, [1000 + i for i in range(10)])
    upper, lower = node_at(cache, [1000 + i for i in range(6)]), node_at(cache, [1000 + i for i in range(10)])
    query = [int(str(1000 + i)) for i in range(12)]  # equal values, objects of its own
    assert not any(a is b for a, b in zip(query[:6], upper.key.token_ids, strict=True))
    cache.match_prefix(query)
    assert upper.key.token_ids == [1000 + i for i in range(6)]
    assert lower.key.token_ids == [1006 + i for i in range(4)]
    assert all(a is b for a, b in zip(query[:6], upper.key.token_ids, strict=True))
    assert all(a is b for a, b in zip(query[6:10], lower.key.token_ids, strict=True))
    query[0] = 7  # the caller's list is not the tree's
    assert upper.key.token_ids[0] == 1000
    assert cache.match_prefix([7, 1001]).device_indices.shape[0] == 0
    assert_healthy(cache)
