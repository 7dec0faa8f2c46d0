"""Admission policies: the depths each keeps, the read-only branch-point walk, ceilings by hand,
and unbounded replays that reach every ceiling exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

import himamba as hm
from himamba.sim import admission, mooncake, policy_replay
from himamba.sim.admission import parse_admission

SYNTHETIC = Path(__file__).resolve().parents[2] / "shared" / "traces" / "synthetic_trace.jsonl"
POLICIES = ("sequence_end", "page_aligned", "branch_point", "every_n:1", "every_n:3")


def test_each_policy_keeps_states_past_the_match_only() -> None:
    ends = {name: parse_admission(name).ends for name in POLICIES}
    # 10 blocks, 9 of them whole, 2 matched, the key leaves the tree after 5
    assert ends["sequence_end"](10, 9, 2, 5) == [10]
    assert ends["page_aligned"](10, 9, 2, 5) == [9] and ends["page_aligned"](1, 0, 0) == []
    assert ends["branch_point"](10, 9, 2, 5) == [5, 10]
    assert ends["branch_point"](10, 9, 5, 5) == [10]  # the branch point already has the matched state
    assert ends["branch_point"](10, 9, 0, 10) == [10]  # the whole key is in the tree: no branch
    assert ends["every_n:3"](10, 9, 2, 5) == [3, 6, 9] and ends["every_n:3"](10, 9, 6, 5) == [9]
    assert ends["every_n:1"](4, 4, 2) == [3, 4] and ends["sequence_end"](4, 4, 4) == []


@pytest.mark.parametrize("bad", ["lru", "every_n", "every_n:0", "every_n:-2", "every_n:02", "every_n:x", 3, None])
def test_unknown_policies_are_refused_with_the_choices(bad) -> None:
    with pytest.raises(hm.InvalidInputError, match="admission must be one of"):
        parse_admission(bad)


def _tree_state(cache) -> list:
    out, stack = [], [cache.root_node]
    while stack:
        node = stack.pop()
        out.append((node.id, tuple(node.key.token_ids), node.last_access_time, node.mamba_value is not None))
        stack.extend(node.children.values())
    return sorted(out)


def test_branch_point_is_a_dry_run_that_changes_nothing() -> None:
    cache = policy_replay.make_cache(64, 8)
    policy_replay.replay(cache, [([1, 2, 3, 4], 4, 4, None), ([1, 2, 9], 3, 3, None)], "sequence_end")
    before = _tree_state(cache)
    assert admission.branch_point(cache.root_node, [1, 2, 3, 7]) == 3  # inside the edge [3, 4]
    assert admission.branch_point(cache.root_node, [1, 2, 5]) == 2  # at the node [1, 2]
    assert admission.branch_point(cache.root_node, [1, 2, 3, 4, 5]) == 4
    assert admission.branch_point(cache.root_node, [8]) == 0
    assert _tree_state(cache) == before


def test_branch_point_replay_keeps_a_state_where_the_key_branches_off() -> None:
    cache = policy_replay.make_cache(64, 8)
    f = policy_replay.replay(cache, [([1, 2, 3, 4], 4, 4, None), ([1, 2, 3, 9], 4, 4, None), ([1, 2, 3, 5], 4, 4, None)],
                             "branch_point")
    assert cache.node_at([1, 2, 3]).mamba_value is not None  # the second request's branch point
    assert f["hit_elements"] == 3 and f["states_admitted"] == 4  # ends of all three, the branch point once
    assert hm.check_invariants(cache, held_kv=0, held_states=0) == []


def test_ceilings_of_a_small_trace_by_hand() -> None:
    R = mooncake.MooncakeRequest
    trace = [R(0, 1500, 1, (1, 2, 3)), R(1, 2000, 1, (1, 2, 4, 5)), R(2, 1200, 1, (1, 2, 6)), R(3, 2500, 1, (1, 2, 4, 5, 7))]
    c = mooncake.ceilings(trace)
    # the second request leaves (1, 2, 3) after 2 blocks: the third reuses 2, the fourth the second's 4
    assert c["ceiling_branch_point"] == round(6 / 15, 6) and c["ceiling_sequence_end"] == round(4 / 15, 6)
    assert c["ceiling_branch_point_tokens"] == round((1024 + 2048) / 7200, 6)
    generic = admission.ceilings(policy_replay.block_items(trace), ("branch_point", "sequence_end", "page_aligned"))
    assert {k: c[k] for k in generic} == generic


def _traces():
    out = [("generated", mooncake.generate(800, seed=5))]
    if SYNTHETIC.exists():
        out.append(("synthetic", mooncake.load_mooncake(SYNTHETIC, limit=1500)))
    return out


@pytest.mark.parametrize("name, trace", _traces(), ids=lambda v: v if isinstance(v, str) else "")
def test_an_unbounded_block_replay_reaches_each_ceiling_exactly(name: str, trace) -> None:
    items = policy_replay.block_items(trace)
    ceilings = admission.ceilings(items, POLICIES)
    assert {k: v for k, v in mooncake.ceilings(trace).items() if k in ceilings} == \
        {k: ceilings[k] for k in mooncake.ceilings(trace) if k in ceilings}
    blocks = sum(len(r.hash_ids) for r in trace)
    for policy in POLICIES:
        cache = policy_replay.make_cache(2 * blocks + 1, 2 * blocks + 1)
        f = policy_replay.replay(cache, items, policy)
        assert (f["hit_rate"], f["hit_rate_tokens"]) == (ceilings[f"ceiling_{policy}"], ceilings[f"ceiling_{policy}_tokens"]), policy
        assert f["evicted_kv"] == f["evicted_states"] == 0 and f["accounting_ok"] and f["violations"] == 0
    assert ceilings["ceiling_every_n:1"] >= ceilings["ceiling_page_aligned"] > ceilings["ceiling_sequence_end"] > 0
    assert ceilings["ceiling_branch_point"] > ceilings["ceiling_sequence_end"]


def test_an_unbounded_token_replay_reaches_each_ceiling_exactly() -> None:
    turns = [(6 * i + 3, list(range(1, 6 * i + 7))) for i in range(1, 12)]  # each prompt extends the last answer
    forks = [(5, [1, 2, 3, 4, 90 + i, 7]) for i in range(4)]  # branch off inside the first turn
    items = policy_replay.token_items(turns + forks + turns[:3])
    ceilings = admission.ceilings(items, POLICIES)
    for policy in POLICIES:
        f = policy_replay.replay(policy_replay.make_cache(1000, 200), items, policy)
        assert f["hit_rate"] == f["hit_rate_tokens"] == ceilings[f"ceiling_{policy}"], policy
    assert ceilings["ceiling_branch_point"] > ceilings["ceiling_sequence_end"]


@pytest.mark.parametrize("policy", POLICIES)
def test_bounded_pools_evict_and_every_policy_keeps_the_cache_sound(policy: str) -> None:
    trace = mooncake.generate(300, seed=1)
    items = policy_replay.block_items(trace)
    cache = policy_replay.make_cache(120, 16)
    f = policy_replay.replay(cache, items, policy)
    assert f["evicted_kv"] > 0 and 0 < f["hit_rate"] < admission.ceilings(items, [policy])[f"ceiling_{policy}"]
    assert f["accounting_ok"] and f["violations"] == 0


def test_a_request_keeps_at_most_a_quarter_of_the_state_pool_its_deepest_states() -> None:
    cache = policy_replay.make_cache(64, 8)  # a quarter: 2 states
    f = policy_replay.replay(cache, [(list(range(1, 11)), 10, 10, None)], "every_n:2")
    kept = [n for n in range(1, 11) if cache.node_at(list(range(1, n + 1))) is not None
            and cache.node_at(list(range(1, n + 1))).mamba_value is not None]
    assert kept == [8, 10] and f["states_admitted"] == 2 and cache.full_evictable_size() == 10
