"""Host synchronisations: the counting hook, the transfer path that makes none, and slot checks
on a GPU's terms (slot ids from host copies, never read from the device on the hot paths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_healthy

import himamba as hm
from himamba.errors import PoolError
from himamba.memory import slot_ids
from himamba.memory.allocator import SlotAllocator
from himamba.memory.syncs import count_host_syncs, take_slot_ids_as_on_a_gpu


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


def _gpu_like(capacity: int = 32, page_size: int = 1) -> SlotAllocator:
    alloc = SlotAllocator(capacity, page_size)
    alloc.reads_tensor_memory = False
    return alloc


def _reads(call) -> int:
    """Host reads made by ``call`` (from the test itself too: counted under "(outside)")."""
    with count_host_syncs() as count:
        call()
    return count.raw


def test_slots_the_cache_handed_out_are_checked_without_a_read_and_others_are_read_once() -> None:
    """On a GPU's terms an insert of allocated slots (joined with slot_ids.cat) reads nothing; a
    tensor the cache did not make is read once, then its copy serves; an in-place write makes the
    copy stale, and the next check reads again."""
    cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu", page_size=4))
    take_slot_ids_as_on_a_gpu(cache)
    kv, slot = cache.kv_pool.alloc(8), cache.mamba_pool.alloc(1)
    assert _reads(lambda: cache.insert(list(range(8)), kv, slot)) == 0
    m = cache.match_prefix(list(range(8)) + [9, 9, 9, 9])
    more, slot2 = cache.kv_pool.alloc(4), cache.mamba_pool.alloc(1)
    value = slot_ids.cat((m.device_indices, more))
    assert _reads(lambda: cache.insert(list(range(8)) + [9, 9, 9, 9], value, slot2, prev_prefix_len=8)) == 0
    assert_healthy(cache, integrity=False)  # no content was written: only the bookkeeping counts

    alloc = cache.kv_pool.allocator
    foreign = torch.tensor(cache.kv_pool.alloc(4).tolist())  # the same ids, made elsewhere
    assert _reads(lambda: alloc.problem_with(foreign)) == 1
    assert _reads(lambda: alloc.problem_with(foreign[1:3])) == 0  # a view of a tensor read once
    foreign[0] = 0  # an in-place write: the copy is stale now
    assert _reads(lambda: alloc.problem_with(foreign)) == 1


def test_host_copies_follow_views_joins_and_assignments() -> None:
    base = slot_ids.upload(np.arange(10, dtype=np.int64), torch.device("cpu"))
    assert slot_ids.mirrored(base[2:8:3]).tolist() == [2, 5]
    assert slot_ids.mirrored(base[4]).tolist() == [4]
    assert slot_ids.mirrored(base.view(2, 5)[1]).tolist() == [5, 6, 7, 8, 9]
    assert slot_ids.mirrored(base.flip(0)) is None  # not a view the copy can follow
    joined = slot_ids.cat((base[:2], base[8:], base[:0]))
    assert slot_ids.mirrored(joined).tolist() == [0, 1, 8, 9]
    assert slot_ids.mirrored(slot_ids.cat((base[:2], torch.tensor([5])))) is None  # a part without a copy
    slot_ids.assign(joined, 1, 3, base[5:7])
    assert joined.tolist() == [0, 5, 6, 9] and slot_ids.mirrored(joined).tolist() == [0, 5, 6, 9]
    copy = slot_ids.clone(base[3:5])
    assert slot_ids.mirrored(copy).tolist() == [3, 4] and copy._base is None
    base[0] = 7
    assert slot_ids.mirrored(base) is None and slot_ids.mirrored(base[1:]) is None
    with torch.inference_mode():  # no version counter: the copy is trusted, assign keeps it right
        inf = slot_ids.upload(np.arange(4, dtype=np.int64), torch.device("cpu"))
        slot_ids.assign(inf, 0, 1, torch.tensor([3]))
        assert slot_ids.mirrored(inf).tolist() == [3, 1, 2, 3]
    ids = slot_ids.host_ids(base)  # read (the copy was stale), recorded
    assert ids.tolist() == [7, *range(1, 10)] and slot_ids.mirrored(base) is ids
    with pytest.raises(ValueError):
        ids[0] = 1  # copies are read-only


@pytest.mark.parametrize("page_size", [1, 4])
def test_a_gpu_like_allocator_answers_as_the_cpu_one(page_size: int) -> None:
    """Slot ids from host copies (and reads of foreign tensors) give the same answers and the
    same errors as slot ids read from host memory."""
    plain, gpu = SlotAllocator(32, page_size), _gpu_like(32, page_size)
    answers = []
    for alloc in (plain, gpu):
        a, own = alloc.alloc(2 * page_size), alloc.alloc(page_size)
        alloc.mark_owned(own)
        out = [alloc.handover_problem(idx, n, "v", "n") for idx, n in [
            (slot_ids.cat((own, a)), page_size), (slot_ids.cat((own, a)), 0), (a, page_size), (slot_ids.cat((a, a)), 0),
            (own, page_size), (torch.tensor([40 * page_size] * page_size), 0), (a[:1], 0),
            (slot_ids.cat((own, a)), page_size + 1)]]
        probes = [a, a[:page_size], slot_ids.cat((a, a)), torch.tensor([40 * page_size] * page_size),
                  torch.tensor([-1] * page_size), a[:1], torch.tensor([7]), a[1 : 1 + page_size]]
        out += [(alloc.all_allocated(p), alloc.problem_with(p)) for p in probes]
        for bad in [slot_ids.cat((a, a)), probes[3], probes[4]] + ([probes[7]] if page_size > 1 else []):
            with pytest.raises(PoolError) as err:
                alloc.free(bad)
            out.append(str(err.value))
        alloc.free(a)
        alloc.free_owned(own)  # owned by a tree: only free_owned returns it
        out.append(alloc.available_size())
        answers.append(out)
    assert answers[0] == answers[1]
    assert answers[0][0] is None and answers[0][-1] == 32


def test_a_transfer_keeps_its_slots_from_reuse_until_it_lands() -> None:
    """Freed while a transfer names them, pages are parked: not free, not handed out; the
    transfer's release lets them join the free list."""
    alloc = SlotAllocator(8, 2)
    slots = alloc.alloc(4)
    pages = alloc.hold(slots[:2])
    alloc.free(slots)
    assert alloc.available_size() == 6 and alloc.parked_size() == 2 and alloc.held_in_flight(slots).tolist() == [True] * 2 + [False] * 2
    taken = alloc.alloc(6)
    assert not set(taken.tolist()) & set(slots[:2].tolist())
    assert alloc.alloc(2) is None
    alloc.release(pages)
    assert alloc.parked_size() == 0 and alloc.alloc(2).tolist() == slots[:2].tolist()


def _site_of(path: str, text: str) -> str:
    """``path:line`` of the one line of ``himamba/<path>`` holding ``text``."""
    from pathlib import Path

    lines = (Path(hm.__file__).parent / path).read_text().splitlines()
    found = [i + 1 for i, line in enumerate(lines) if text in line]
    assert len(found) == 1, (path, text, found)
    return f"{path}:{found[0]}"


#: The CPU copy engine's own read: a state copy indexes its one slot on the host.
_CPU_STATE_COPY = _site_of("memory/copy_engines.py", "dst[:, int(d_idx)].copy_(src[:, int(s_idx)])")


@pytest.mark.parametrize(("page_size", "policy"), [(1, "write_back"), (4, "write_through")])
def test_random_scripts_on_a_gpus_terms_read_no_slot_ids_and_stay_healthy(page_size: int, policy: str) -> None:
    """Device pools taking slot ids as on a GPU, the deferred engine, manual acks: no host read
    on any hot path but the CPU copy engine's own, invariants (COPY included) after every
    operation and integrity at the end empty."""
    from himamba.sim.fuzz import make_cache, make_script
    from himamba.sim.ops import DriverState, apply

    script = make_script(7, 400, page_size=page_size, write_policy=policy, manual_acks=True)
    script["config"].update(device="cpu", copy_engine="deferred")
    cache, state = make_cache(script), DriverState()
    take_slot_ids_as_on_a_gpu(cache)
    with count_host_syncs() as count:
        for op in script["ops"]:
            apply(cache, state, op)
            assert not hm.check_invariants(cache), op
    assert {site for site in count.by_site if site != "(outside)"} <= {_CPU_STATE_COPY}, count.by_site
    assert not hm.check_integrity(cache)


def test_a_host_copy_that_drifts_from_its_tensor_is_a_copy_violation() -> None:
    cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu"))
    take_slot_ids_as_on_a_gpu(cache)
    hm.serve(cache, [1, 2, 3])
    node = next(n for n in cache.nodes() if n is not cache.root_node)
    assert not hm.check_invariants(cache)
    slot_ids.record(node.value, np.array([0, 0, 0]))  # a wrong copy
    assert [v.invariant for v in hm.check_invariants(cache)] == ["COPY"]
