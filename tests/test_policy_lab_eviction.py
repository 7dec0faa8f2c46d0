"""The policy replay and the cache's eviction policies: the future handed to farthest_next_use,
Marconi's alpha tuned on its bootstrap window, and every pair sound on both caches."""

from __future__ import annotations

import math

import pytest

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
    pass that check, and hand over the host ids the check would read."""
    cache = policy_replay.make_cache(120, 16, host_kv=360 if tiered else 0, host_states=48)
    inserter, walk, seen = cache.inserter, cache.inserter.insert, []

    def checked(key, value, mamba_value, prev_prefix_len, chunked, walked, ids, state_ids):
        _, want_ids, want_state = inserter.check_args(key, value, mamba_value, prev_prefix_len)
        assert list(ids) == list(want_ids) and list(state_ids) == list(want_state)
        seen.append(prev_prefix_len)
        return walk(key, value, mamba_value, prev_prefix_len, chunked, walked, ids, state_ids)

    inserter.insert = checked
    f = policy_replay.replay(cache, items, admission)
    assert len(seen) == f["inserts"] > 0
    assert any(seen) or admission == "sequence_end"  # past a matched prefix (sequence_end matches nothing here)
    assert f["accounting_ok"] and f["violations"] == 0


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
