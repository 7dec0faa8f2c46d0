"""The policy replay and the cache's eviction policies: the future handed to farthest_next_use,
Marconi's alpha tuned on its bootstrap window, and every pair sound on both caches."""

from __future__ import annotations

import math
import random

import pytest

from himamba.core.key import RadixKey
from himamba.errors import CacheAssertionError
from himamba.sim import mooncake, policy_replay, policy_setup, policy_sweep

EVICTIONS = policy_sweep.available_evictions()
needs_seam = pytest.mark.skipif(len(EVICTIONS) < 4, reason="this cache has no eviction policies but lru")


@pytest.fixture(scope="module")
def items():
    return policy_replay.block_items(mooncake.generate(300, seed=6))


def test_next_use_names_the_first_later_request_through_a_path() -> None:
    items = policy_replay.token_items([(3, [1, 2, 3, 9]), (2, [1, 5, 6]), (3, [1, 2, 3]), (1, [7])])
    future = policy_setup.NextUse(items)
    future.now = 0
    assert (future([1]), future([1, 2]), future([1, 2, 3]), future([1, 2, 3, 9])) == (1, 2, 2, math.inf)
    assert future([7]) == 3 and future([8]) == math.inf and future([]) == math.inf
    future.now = 2
    assert future([1]) == math.inf and future([7]) == 3


@needs_seam
@pytest.mark.parametrize("eviction", EVICTIONS)
@pytest.mark.parametrize("tiered", [False, True], ids=["device", "tiered"])
def test_every_eviction_policy_keeps_the_replay_sound(items, eviction: str, tiered: bool) -> None:
    cache = policy_replay.make_cache(120, 16, eviction=eviction, host_kv=360 if tiered else 0, host_states=48)
    f = policy_replay.replay(cache, items, "branch_point")
    assert f["eviction"] == eviction and f["evicted_kv"] > 0 and f["hit_rate"] > 0
    assert f["accounting_ok"] and f["violations"] == 0


@needs_seam
def test_farthest_next_use_is_handed_the_future_and_beats_lru_here(items) -> None:
    cache = policy_replay.make_cache(120, 16, eviction="farthest_next_use")
    f = policy_replay.replay(cache, items, "page_aligned")
    future = policy_setup.eviction_policy(cache).future
    assert isinstance(future, policy_setup.NextUse) and future.now == len(items) - 1
    lru = policy_replay.replay(policy_replay.make_cache(120, 16), items, "page_aligned")
    assert f["hit_rate"] > lru["hit_rate"]


@needs_seam
def test_flop_aware_tunes_alpha_once_on_marconis_bootstrap_window(items) -> None:
    cache = policy_replay.make_cache(120, 16, eviction="flop_aware")
    f = policy_replay.replay(cache, items, "page_aligned")
    policy = policy_setup.eviction_policy(cache)
    assert f["alpha"] == policy.alpha in policy_setup.ALPHA_GRID and policy.unit_tokens == 512
    # the window is 5x the requests seen at the first eviction, and the alpha kept saved the most there
    def evicted(n):
        f = policy_replay.replay(policy_replay.make_cache(120, 16), items[:n], "page_aligned")
        return f["evicted_kv"] + f["evicted_states"] > 0

    first = next(n for n in range(1, len(items)) if evicted(n))
    assert f["alpha_window"] == 5 * first
    saved = {a: policy_replay.replay(policy_replay.make_cache(120, 16, eviction=f"flop_aware:{a}"),
                                     items[:5 * first], "page_aligned")["flops_saved"] for a in policy_setup.ALPHA_GRID}
    assert saved[f["alpha"]] == max(saved.values())
    # every share is the separate replay's, alpha 1 too (read from the run's own counters at the window)
    assert f["alpha_shares"] == saved
    assert 0 < f["alpha_tuning_cpu_s"] <= f["requests"] / f["requests_per_cpu_s"] + 0.001  # inside the run's time
    given = policy_replay.replay(policy_replay.make_cache(120, 16, eviction="flop_aware:0.3"), items, "page_aligned")
    assert given["alpha"] == 0.3 and given["alpha_window"] is None


@pytest.mark.parametrize("admission", ["sequence_end", "page_aligned", "branch_point", "every_n:2"])
@pytest.mark.parametrize("tiered", [False, True], ids=["device", "tiered"])
def test_every_insert_the_replay_skips_the_check_for_would_pass_it(items, admission: str, tiered: bool) -> None:
    """The replay calls the insert walk without the public argument check: each call's arguments
    (an insert from the root or one that goes on below the request's last depth) pass that check,
    and hand over the host ids the check would read."""
    cache = policy_replay.make_cache(120, 16, host_kv=360 if tiered else 0, host_states=48)
    inserter, walk, after, seen = cache.inserter, cache.inserter.insert, cache.inserter.insert_after, []

    def check(key, value, mamba_value, prev_prefix_len, ids, state_ids) -> None:
        _, want_ids, want_state = inserter.check_args(key, value, mamba_value, prev_prefix_len)
        assert list(ids) == list(want_ids) and list(state_ids) == list(want_state)
        seen.append(prev_prefix_len)

    def checked(key, value, mamba_value, prev_prefix_len, chunked, walked, ids, state_ids, path=None):
        check(key, value, mamba_value, prev_prefix_len, ids, state_ids)
        return walk(key, value, mamba_value, prev_prefix_len, chunked, walked, ids, state_ids, path)

    def checked_after(path, key, value, mamba_value, prev_prefix_len, ids, state_ids):
        check(key, value, mamba_value, prev_prefix_len, ids, state_ids)
        return after(path, key, value, mamba_value, prev_prefix_len, ids, state_ids)

    inserter.insert, inserter.insert_after = checked, checked_after
    f = policy_replay.replay(cache, items, admission)
    assert len(seen) == f["inserts"] > 0
    assert any(seen) or admission == "sequence_end"  # past a matched prefix (sequence_end matches nothing here)
    assert f["accounting_ok"] and f["violations"] == 0


def _snapshot(cache) -> tuple:
    """Everything an insert can change: each node's key, slots, time and hit count, the clock,
    both LRU orders and every pool's free slots."""
    nodes = sorted((n.id, -1 if n.parent is None else n.parent.id, tuple(n.key.token_ids), n.last_access_time,
                    n.hit_count, None if n.value is None else tuple(n.value.tolist()),
                    None if n.mamba_value is None else tuple(n.mamba_value.tolist())) for n in cache.tree.nodes())
    pools = [(p.available_size(), p.allocator._state.tolist()) for p in (cache.kv_pool, cache.mamba_pool)]
    return nodes, cache.tree.clock, cache.full_lru_list.order(), cache.mamba_lru_list.order(), pools


def _conversations(n: int, seed: int) -> policy_replay.PolicyItems:
    """A token trace of multi-turn chats: each turn's prompt is the chat so far plus a question,
    its key the prompt and the answer; a turn is sometimes sent twice (so a depth past the match
    can already hold a state)."""
    rng, chats, rows = random.Random(seed), [[] for _ in range(6)], []
    for _ in range(n):
        if rows and rng.random() < 0.2:  # the same turn again: its states past the prompt are there
            rows.append(rows[-1])
            continue
        chat = rng.choice(chats)
        chat.extend(rng.randrange(50) for _ in range(rng.randrange(1, 9)))
        answer = [rng.randrange(50) for _ in range(rng.randrange(1, 6))]
        rows.append((len(chat), [*chat, *answer]))
        if rng.random() < 0.7 and len(chat) < 30:
            chat.extend(answer)
        else:
            chat.clear()
    return policy_replay.token_items(rows)


def _run(items, admission: str, eviction: str, plain: bool) -> tuple:
    """A replay on a device-only cache, with its middle depths inserted through ``insert_after``
    or (``plain``) by a whole insert from the root each; returns the cache's snapshot, the
    figures but for timings, and the ``prev_prefix_len`` of each middle depth."""
    cache = policy_replay.make_cache(60, 16, eviction=eviction)
    inserter, walk, after, used = cache.inserter, cache.inserter.insert, cache.inserter.insert_after, []

    def insert_from_root(path, key, value, mamba_value, prev_prefix_len, ids, state_ids):
        walked = []
        result = walk(key, value, mamba_value, prev_prefix_len, False, [], ids, state_ids, walked)
        path[:] = walked  # what the next depth's insert walks again
        used.append(prev_prefix_len)
        return result

    def counted(path, key, value, mamba_value, prev_prefix_len, ids, state_ids):
        used.append(prev_prefix_len)
        return after(path, key, value, mamba_value, prev_prefix_len, ids, state_ids)

    inserter.insert_after = insert_from_root if plain else counted
    f = policy_replay.replay(cache, items, admission)
    assert f["accounting_ok"] and f["violations"] == 0
    return _snapshot(cache), {k: v for k, v in f.items() if not k.endswith(("_s", "seconds"))}, used


@pytest.mark.parametrize("admission", ["every_n:1", "every_n:2", "branch_point", "tokens every_n:3"])
@pytest.mark.parametrize("eviction", EVICTIONS)
def test_one_walk_per_request_leaves_the_cache_as_an_insert_per_depth(items, admission: str, eviction: str) -> None:
    """On a device-only cache the replay inserts a request's depths in one walk (the middle ones
    through ``insert_after``): tree, times, hit counts, LRU orders, pools and figures are exactly
    those of a plain insert from the root per depth."""
    tokens = admission.startswith("tokens ")
    if tokens:
        items, admission = _conversations(400, seed=3), admission.split()[1]
    chained, f_chained, used = _run(items, admission, eviction, plain=False)
    plain, f_plain, used_plain = _run(items, admission, eviction, plain=True)
    assert used == used_plain
    assert bool(used) == admission.startswith("every_n")  # branch_point keeps at most two depths
    assert f_chained["evicted_kv"] > 0 and f_chained["hit_rate"] > 0
    assert f_chained["evicted_states"] > 0 or admission == "branch_point"
    assert f_chained["states_admitted"] < f_chained["inserts"] or not tokens  # some depth held its state
    assert chained == plain and f_chained == f_plain


def test_only_a_device_only_cache_defers_an_inserts_walk() -> None:
    cache = policy_replay.make_cache(60, 12, host_kv=120)
    with pytest.raises(CacheAssertionError, match="device-only"):
        cache.inserter.insert_after([], RadixKey([1, 2]), cache.kv_pool.alloc(2), cache.mamba_pool.alloc(1), 0,
                                    None, None)


def test_only_a_new_cache_counts_as_its_own_alphas_tuning_run(items) -> None:
    """Tuning reads alpha 1's share from the run itself only when the replay started on a new cache."""
    device, tiered = policy_replay.make_cache(120, 16), policy_replay.make_cache(120, 16, host_kv=360)
    assert policy_replay.is_new(device) and policy_replay.is_new(tiered)
    policy_replay.replay(device, items[:20], "page_aligned")
    assert not policy_replay.is_new(device)
    held = tiered.kv_pool.alloc(1)  # a caller's slot: the pools are not all free
    assert held is not None and not policy_replay.is_new(tiered)


def test_a_tiered_replay_computes_what_a_failed_load_did_not_bring(items) -> None:
    """Loads that fail while landing are retracted by the cache: the replay does not count or
    reuse their slots, and the run stays sound."""
    cache = policy_replay.make_cache(120, 16, host_kv=360, host_states=48, copy_engine="deferred",
                                     faults="copy_land=0.5,seed=0")
    f = policy_replay.replay(cache, items, "page_aligned")
    assert cache.cache_controller.faults.injected.get("copy_land", 0) > 0 and f["host_hit_elements"] > 0
    assert f["accounting_ok"] and f["violations"] == 0


@needs_seam
@pytest.mark.parametrize("tiered", [False, True], ids=["device", "tiered"])
def test_flop_aware_forgets_the_ends_of_deleted_nodes_and_decides_alike(tiered: bool) -> None:
    """The policy memoises each node's end by id; past its floor (and twice the tree) it drops
    the nodes that left the tree. Pruned often or never, the replay leaves the same cache and
    figures; the pruned memo stays small, and each end it holds is the one the full memo has."""
    items = _conversations(600, seed=4)
    runs = []
    for floor in (8, 10**9):
        cache = policy_replay.make_cache(60, 16, eviction="flop_aware:1", host_kv=120 if tiered else 0)
        policy = policy_setup.eviction_policy(cache)
        policy.node_ends.floor = floor
        f = policy_replay.replay(cache, items, "every_n:2")
        assert f["accounting_ok"] and f["violations"] == 0 and f["evicted_states"] > 0
        runs.append((_snapshot(cache), {k: v for k, v in f.items() if not k.endswith(("_s", "seconds"))},
                     policy.node_ends.known()))
    (pruned_cache, pruned_f, pruned), (full_cache, full_f, full) = runs
    assert pruned_cache == full_cache and pruned_f == full_f
    assert len(full) > 1000 and len(pruned) < len(full) // 10  # every node ever scored, against a few
    assert all(full[i] == end for i, end in pruned.items())
