"""Policy objects (cache/policies.py, cache/eviction_policies.py, chosen in cache/build.py): each
policy the config names is the one the cache uses, and each changes what its docstring says.

A new policy gets its test here: build a cache with it, drive the smallest scenario where it
decides differently from the default, and assert the tree shape, counters and ``check_invariants``
after every operation (``assert_healthy``).
"""

from __future__ import annotations

import pytest
from helpers import alloc_kv, alloc_state, assert_healthy, make_cache, node_at, put

import himamba as hm
from himamba.cache.eviction_policies import LRU
from himamba.cache.policies import (
    DeviceCascadeRule,
    NoHostTier,
    TieredCascadeRule,
    UnifiedCascadeRule,
    WriteBack,
    WriteThrough,
)


def tiered(**config) -> hm.HiMambaRadixCache:
    # the selective policy backs nothing up after one insert, so evicted leaves are deleted
    return make_cache(cls=hm.HiMambaRadixCache, write_policy="write_through_selective", **config)


def two_branches(cache) -> None:
    """[1,2] (split off by the second insert, no state) over [3,4] and [5,6], both leaves."""
    put(cache, [1, 2, 3, 4])
    put(cache, [1, 2, 5, 6])
    assert node_at(cache, [1, 2]).mamba_value is None
    assert_healthy(cache)


@pytest.mark.parametrize("rule", ["himamba", "unified"])
def test_cascade_rule_decides_whether_a_childless_tombstone_stays(rule):
    """Evicting both children leaves [1,2] childless and stateless: himamba's rule deletes it in
    the cascade; SGLang's unified rule keeps it as a device leaf for ordinary eviction."""
    cache = tiered(cascade_rule=rule)
    two_branches(cache)
    assert cache.evict(4) == (4 if rule == "unified" else 6)
    assert_healthy(cache)
    kept = node_at(cache, [1, 2]) if cache.num_nodes() else None
    if rule == "unified":
        assert cache.num_nodes() == 1 and kept in cache.evictable_full_device_leaves
        assert cache.evict(2) == 2 and cache.num_nodes() == 0
        assert_healthy(cache)
    else:
        assert kept is None


def test_the_config_picks_the_policy_objects():
    device = make_cache()
    assert type(device.policy_objects["cascade"]) is DeviceCascadeRule
    assert type(device.write_policy_object) is NoHostTier
    assert isinstance(device.policy_objects["eviction"], LRU)
    assert type(tiered().policy_objects["cascade"]) is TieredCascadeRule
    assert type(tiered(cascade_rule="unified").policy_objects["cascade"]) is UnifiedCascadeRule
    assert type(make_cache(cls=hm.HiMambaRadixCache, write_policy="write_back").write_policy_object) is WriteBack
    selective = tiered().write_policy_object
    assert type(selective) is WriteThrough and selective.threshold == 2
    assert make_cache(cls=hm.HiMambaRadixCache).write_policy_object.threshold == 1


def test_legacy_b1_turns_the_host_pin_stop_off():
    assert tiered(legacy={"B1"}).policy_objects["cascade"].honour_pins is False
    assert tiered().policy_objects["cascade"].honour_pins is True


def test_the_device_cache_ignores_cascade_rule():
    """cascade_rule applies to the tiered cache only (the device tree has no unified variant)."""
    cache = make_cache(cascade_rule="unified")
    two_branches(cache)
    cache.evict(4)
    assert cache.num_nodes() == 0
    assert_healthy(cache)


def test_the_fuzzer_draws_the_cascade_rule():
    """A quarter of tiered fuzz scripts run under the unified rule; the differential's scripts
    (profile=False, compared with SGLang 0.5.11, which has no such rule) never do."""
    from himamba.sim.fuzz.generate import make_script

    rules = [make_script(s, 1)["config"].get("cascade_rule", "himamba") for s in range(200)]
    assert 30 < rules.count("unified") < 70
    assert all("cascade_rule" not in make_script(s, 1, profile=False)["config"] for s in range(50))
    assert all("cascade_rule" not in make_script(s, 1, cache="device")["config"] for s in range(50))


# -- eviction policies ---------------------------------------------------------------------------------
def mamba_order(cache) -> list[list[int]]:
    return [cache.path_tokens(n) for n in cache.mamba_lru_list.nodes()]


@pytest.mark.parametrize("eviction", ["lru", "lru_consumed"])
def test_lru_consumed_moves_only_the_state_a_match_consumed(eviction):
    """#31643: a match refreshes the consumed state only; an insert and a split leave the mamba
    list alone. Under lru the match moves the matched node's ancestors too."""
    cache = make_cache(eviction=eviction)
    put(cache, [1, 2])
    put(cache, [1, 2, 3, 4])
    put(cache, [7, 8])
    assert mamba_order(cache) == [[7, 8], [1, 2, 3, 4], [1, 2]]
    cache.match_prefix([1, 2, 3, 4])
    assert_healthy(cache)
    if eviction == "lru":
        assert mamba_order(cache) == [[1, 2, 3, 4], [1, 2], [7, 8]]
    else:
        assert mamba_order(cache) == [[1, 2, 3, 4], [7, 8], [1, 2]]
    state = alloc_state(cache, [7, 8])  # an insert of a cached key, without a match first
    assert cache.insert([7, 8], alloc_kv(cache, [7, 8], 0), state).mamba_exist
    cache.mamba_pool.free(state)
    assert mamba_order(cache)[0] == ([7, 8] if eviction == "lru" else [1, 2, 3, 4])  # refreshed under lru only
    assert_healthy(cache)


def test_flop_aware_evicts_the_leaf_that_saves_least_per_byte():
    """A deep 8-token leaf saves far more prefill FLOPs per byte than a 1-token one; with a large
    alpha that outweighs recency, so the newer, cheaper leaf goes first (LRU takes the older)."""
    for eviction, gone in (("lru", [1, 2, 3, 4, 5, 6, 7, 8]), ("flop_aware:100", [9])):
        cache = make_cache(eviction=eviction)
        put(cache, [1, 2, 3, 4, 5, 6, 7, 8])
        put(cache, [9])
        cache.evict(1)
        assert cache.node_at(gone) is None, eviction
        assert cache.num_nodes() == 1
        assert_healthy(cache)


def test_flop_aware_at_alpha_0_ranks_states_by_their_utility():
    """At alpha 0 the utility is the scaled recency alone: the policy skips the efficiencies and
    ranks states by time, which must give the order that ranking by the utility gives."""
    cache = make_cache(eviction="flop_aware:0")
    for key in ([1, 2], [1, 2, 3], [1, 2, 4], [5], [5, 6, 7], [1, 2, 3, 8], [9, 9], [5, 6, 7, 1]):
        put(cache, key)
    cache.match_prefix([1, 2, 3])
    cache.match_prefix([9, 9])
    policy = cache.policy_objects["eviction"]
    states = list(cache.mamba_lru_list.nodes())
    now = cache.tree.clock
    recency = [1.0 / max(now - n.last_access_time, 1e-9) for n in states]
    lo, hi = min(recency), max(recency)
    utility = {n: (r - lo) / (hi - lo) for n, r in zip(states, recency, strict=True)}
    by_utility = sorted(states, key=lambda n: (len(n.children) > 1, utility[n], n.last_access_time, n.id))
    assert policy._utilities(states) == [utility[n] for n in states]
    assert sorted(states, key=policy.state_score(states)) == by_utility
    assert any(len(n.children) > 1 for n in states) and by_utility != states[::-1]  # not the LRU order
    assert_healthy(cache)


def test_farthest_next_use_evicts_what_the_future_needs_latest():
    import math

    cache = make_cache(eviction="farthest_next_use")
    put(cache, [1, 2])
    put(cache, [3, 4])
    future = {(1, 2): 5.0}
    cache.policy_objects["eviction"].set_future(lambda path: future.get(tuple(path), math.inf))
    cache.evict(1)  # [1,2] is older but needed at request 5; [3,4] is never needed again
    assert cache.node_at([3, 4]) is None and cache.node_at([1, 2]) is not None
    assert_healthy(cache)


@pytest.mark.parametrize("bad", ["mru", "flop_aware:", "flop_aware:-1", "flop_aware:x", "lru:2", 3])
def test_unknown_eviction_policies_are_refused(bad):
    with pytest.raises(hm.InvalidInputError, match="eviction"):
        hm.CacheConfig(eviction=bad)


def test_every_eviction_step_says_why():
    """Eviction, demotion, write-back and load-back steps name the rule and, for a choice between
    leaves or states, the runner-up."""
    cache = make_cache(cls=hm.HiMambaRadixCache, write_policy="write_back")
    put(cache, [1, 2, 3])
    put(cache, [4, 5])
    with hm.Recorder(cache) as rec:
        cache.evict(3)
        m = cache.match_prefix([1, 2, 3])
        cache.init_load_back(m.best_match_node)
    texts = rec.texts()
    a, b = node_at(cache, [1, 2, 3]), node_at(cache, [4, 5])
    assert any("demoted to host: 3 device tokens freed" in t and f"(oldest evictable leaf #{a.id}, t=" in t
               and f"before #{b.id}, t=" in t for t in texts), texts
    assert any("backed up to host" in t and "(write-back: the leaf is being evicted)" in t for t in texts), texts
    assert any("load back" in t and "load-back rule:" in t for t in texts), texts
    cache.writing_check()
    cache.loading_check()
    assert_healthy(cache)


def test_node_ends_survive_a_split_restart_on_reset_and_drop_deleted_nodes():
    """FlopAware's memo of where each node ends (cache/node_ends.py): a split leaves the lower
    node's end as it was; past its size the memo keeps only nodes still in the tree; a reset
    (new root, ids from 0 again) empties it."""
    from himamba.cache.node_ends import NodeEnds
    from himamba.cache.tree import depth

    cache = make_cache()  # the memo reads the tree only: LRU makes the eviction below plain
    ends = NodeEnds(cache.tree, floor=0)
    put(cache, [1, 2, 3, 4])
    leaf = node_at(cache, [1, 2, 3, 4])
    ends.current()[leaf.id] = depth(leaf)
    put(cache, [1, 2, 5])  # splits the leaf's edge after [1, 2]: a new node above it
    upper, other = node_at(cache, [1, 2]), node_at(cache, [1, 2, 5])
    assert upper.id != leaf.id and len(leaf.key) == 2 and depth(leaf) == 4
    memo = ends.current()  # 1 entry, past 2 x the nodes at the last pruning (none yet): pruned, kept
    assert memo == {leaf.id: 4}
    memo.update({upper.id: depth(upper), other.id: depth(other)})
    assert cache.evict(1) == 2 and cache.node_at([1, 2, 3, 4]) is None  # the oldest leaf leaves
    assert ends.current() == {leaf.id: 4, upper.id: 2, other.id: 3}  # not past 2 x 4 nodes: kept
    fresh = NodeEnds(cache.tree, floor=0)
    fresh.current().update(ends.known())
    assert fresh.current() == {upper.id: 2, other.id: 3}  # past 0 entries: only nodes in the tree
    assert_healthy(cache)
    cache.reset()
    put(cache, [9])
    assert node_at(cache, [9]).id == 1  # ids start again: an old entry would now be wrong
    assert ends.current() == {}
    assert_healthy(cache)
