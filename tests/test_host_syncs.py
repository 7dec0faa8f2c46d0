"""Host synchronisations: the counting hook, the transfer path that makes none, and the
allocator's GPU read path (several values in one host read) giving the same answers."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_healthy

import himamba as hm
from himamba.errors import PoolError
from himamba.memory.allocator import SlotAllocator
from himamba.memory.syncs import count_host_syncs


def test_host_reads_are_counted_per_site_and_the_transfer_path_makes_none() -> None:
    """The counting hook sees every host read inside himamba (each a sync on a GPU); the
    controller's write, load, start and ack path makes none of its own."""

    item = torch.Tensor.item
    cache = hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", write_policy="write_back"), manual_acks=True)
    hm.serve(cache, [1, 2, 3, 4])
    with count_host_syncs() as count:
        cache.evict(4)  # a write-back write, waited for
        m = cache.match_prefix([1, 2, 3, 4])
        cache.init_load_back(m.best_match_node)
        cache.ready_to_load_host_cache()
        cache.cache_controller.complete()
        cache.loading_check()
        torch.tensor([1]).item()  # outside himamba
    assert torch.Tensor.item is item  # the hook is gone
    assert count.total > 0 and count.by_site["(outside)"] >= 1
    assert not [s for s in count.by_site if s.startswith(("memory/transfer.py", "memory/cuda_engine.py"))], count.by_site
    assert_healthy(cache)


@pytest.mark.parametrize("page_size", [1, 4])
def test_the_gpu_path_answers_as_the_cpu_path(page_size: int) -> None:
    """The GPU's path (torch only) and the CPU's (numpy yes/no checks first) give
    the same answers and the same errors."""
    plain, fused = SlotAllocator(32, page_size), SlotAllocator(32, page_size)
    fused._cpu_check = None
    a, b = plain.alloc(2 * page_size), fused.alloc(2 * page_size)
    assert torch.equal(a, b)
    own_a, own_b = plain.alloc(page_size), fused.alloc(page_size)
    plain.mark_owned(own_a)
    fused.mark_owned(own_b)
    for idx, tree_len in [(torch.cat((own_a, a)), page_size), (torch.cat((own_a, a)), 0), (a, page_size),
                          (torch.cat((a, a)), 0), (own_a, page_size), (torch.tensor([40 * page_size] * page_size), 0),
                          (a[:1], 0), (torch.cat((own_a, a)), page_size + 1)]:
        assert plain.handover_problem(idx, tree_len, "v", "n") == fused.handover_problem(idx, tree_len, "v", "n"), idx
    probes = [a, a[:page_size], torch.cat((a, a)), torch.tensor([40 * page_size] * page_size),
              torch.tensor([-1] * page_size), a[:1], torch.tensor([7])]
    if page_size > 1:
        probes.append(a[1 : 1 + page_size])  # not page aligned
    for idx in probes:
        assert plain.all_allocated(idx) == fused.all_allocated(idx), idx
        assert plain.problem_with(idx) == fused.problem_with(idx), idx
    bad_frees = [torch.cat((a, a)), probes[3], probes[4]] + probes[7:]
    for bad in bad_frees:
        with pytest.raises(PoolError) as p_err:
            plain.free(bad)
        with pytest.raises(PoolError) as f_err:
            fused.free(bad)
        assert str(p_err.value) == str(f_err.value)
    plain.free(a)
    fused.free(b)
    plain.free(own_a)
    fused.free(own_b)
    assert plain.available_size() == fused.available_size() == 32
    assert torch.equal(plain._state, fused._state) and not plain._state.any()


def test_on_the_gpu_path_an_insert_reads_the_host_once() -> None:
    """The GPU's path (torch only): the KV check and the state slot's check share one host read;
    a lone state-slot check is one read too. (On the CPU the checks run in numpy.)"""
    cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu", page_size=4))
    for alloc in (cache.kv_pool.allocator, cache.mamba_pool.allocator):
        alloc._cpu_check = None
    kv, slot = cache.kv_pool.alloc(8), cache.mamba_pool.alloc(1)

    def reads(call) -> int:
        with count_host_syncs() as count:
            call()
        return sum(n for site, n in count.by_site.items() if site.startswith("memory/allocator.py"))

    assert reads(lambda: cache.mamba_pool.allocator.handover_problem(slot, 0, "mamba_value", pool="state")) == 1
    assert reads(lambda: cache.insert(list(range(8)), kv, slot)) == 1
    assert_healthy(cache, integrity=False)  # no content was written: only the bookkeeping counts


@pytest.mark.parametrize(("page_size", "policy"), [(1, "write_back"), (4, "write_through")])
def test_random_scripts_stay_healthy_on_the_gpu_allocator_path(monkeypatch, page_size: int, policy: str) -> None:
    """Every allocator on the GPU's code path (torch only), the deferred engine,
    manual acks: invariants after every operation and integrity at the end stay empty."""
    from himamba.sim.fuzz import make_cache, make_script
    from himamba.sim.ops import DriverState, apply

    init = SlotAllocator.__init__

    def gpu_path(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._cpu_check = None

    monkeypatch.setattr(SlotAllocator, "__init__", gpu_path)
    script = make_script(7, 400, page_size=page_size, write_policy=policy, manual_acks=True)
    script["config"].update(device="cpu", copy_engine="deferred")
    cache, state = make_cache(script), DriverState()
    assert cache.kv_pool.allocator._cpu_check is None
    for op in script["ops"]:
        apply(cache, state, op)
        assert not hm.check_invariants(cache), op
    assert not hm.check_integrity(cache)


def test_a_state_slot_checked_with_the_kv_gets_the_same_sentence_on_both_paths() -> None:
    """handover_problem(..., state=...) on the GPU path (one shared read) words every bad state
    slot as the CPU path (separate checks) does, and a bad KV slot first."""
    def pools(gpu: bool):
        kv, st = SlotAllocator(16, 1), SlotAllocator(4, 1)
        if gpu:
            for a in (kv, st):
                a._cpu_check = None
        tree, mine = kv.alloc(2), kv.alloc(2)
        kv.mark_owned(tree)
        held, owned = st.alloc(1), st.alloc(1)
        st.mark_owned(owned)
        return kv, st, torch.cat((tree, mine)), held, owned

    answers = []
    for gpu in (False, True):
        kv, st, value, held, owned = pools(gpu)
        said = []
        for v, n in [(value, 2), (value, 3), (value[:0], 0)]:
            for slot in (held, owned, torch.tensor([3]), torch.tensor([9]), torch.tensor([-1])):
                said.append(kv.handover_problem(v, n, "value", "prev_prefix_len", "device KV",
                                                state=(st, slot, "mamba_value", "state")))
        answers.append(said)
    assert answers[0] == answers[1]
    assert answers[0][0] is None and "already owns" in answers[0][1] and "not allocated" in answers[0][2]
    assert "out of range" in answers[0][3] and "claims" in answers[0][5] and answers[0][10] is None
