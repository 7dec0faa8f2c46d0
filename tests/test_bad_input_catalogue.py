"""Every bad input of the catalogue (tests/bad_inputs.py) gets a clear error and changes nothing.

A clear error is a ValueError subclass of the project (InvalidInputError, LockError, PoolError)
whose message is a sentence; "nothing changed" is the cache's whole fingerprint (and the given
requests) before and after, invariants and integrity clean, or, for files and folders, the case's
own check that nothing was written. A case marked ``open`` is expected to fail (strictly: once it
passes, the mark must go). The fault and hostile-output classes (tests/fault_cases.py) are judged
by the state each names instead.
"""

from __future__ import annotations

import pytest
import torch
from bad_inputs import CASES
from fault_cases import FAULT_CLASSES
from fingerprint import assert_rejected

import himamba as hm

INPUTS = [c for c in CASES if c.klass not in FAULT_CLASSES]
FAULTS = [c for c in CASES if c.klass in FAULT_CLASSES]


@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.open)) if c.open else c for c in INPUTS
], ids=[f"{c.klass}: {c.name}" for c in INPUTS])
def test_bad_input_is_refused_and_changes_nothing(case, tmp_path, capsys):
    cache, call, requests, *rest = case.build(tmp_path)
    after = rest[0] if rest else None
    if cache is not None:
        error = assert_rejected(cache, ValueError, call, *requests)
    else:
        with pytest.raises(ValueError) as info:
            call()
        error = info.value
        assert len(str(error)) >= 15, f"unhelpful message: {error!r}"
    assert isinstance(error, hm.HiMambaError), f"{type(error).__name__} is not a project error: {error}"
    if after is not None:
        after()


@pytest.mark.parametrize("case", FAULTS, ids=[f"{c.klass}: {c.name}" for c in FAULTS])
def test_a_fault_or_hostile_output_leaves_the_state_it_names(case, tmp_path):
    """A fault, a listener's exception, a second thread, a crafted label or a long recording: the
    call ends with the error (if any) and the state the case names; invariants and integrity
    are clean."""
    cache, call, requests, after, named = case.build(tmp_path)
    error = None
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - an interrupt too: what it raised is checked below
        error = exc
    if cache is not None:
        assert not hm.check_invariants(cache) and not hm.check_integrity(cache)
    named(error)


def test_every_class_has_cases():
    classes = {c.klass for c in CASES}
    assert classes == {"ownership", "atomicity", "data loss", "silent", "unclear", "hangs", "output folders",
                       "command line", "small holes", *FAULT_CLASSES}
    assert len(CASES) >= 190


def test_serve_keeps_the_extra_key():
    """Regression: serve used to insert the plain tokens, dropping a RadixKey's extra_key."""
    from bad_inputs import device_cache

    cache = device_cache()
    key = hm.RadixKey([1, 2, 3, 4], extra_key="lora-7")
    hm.serve(cache, key)
    node = cache.node_at(key)
    assert node is not None and node.key.extra_key == "lora-7"
    assert cache.node_at([1, 2, 3, 4]) is not node  # the plain key is another branch
    assert cache.match_prefix(key).prefix_len == 4
    assert not hm.check_invariants(cache) and not hm.check_integrity(cache)


def test_tree_slots_are_marked_owned_and_freeing_clears_the_mark():
    from bad_inputs import device_cache

    cache = device_cache()
    owned = cache.kv_pool.allocator.owned_flags
    for node in cache.nodes():
        if node is not cache.root_node and node.value is not None:
            assert owned(node.value).all()
    fresh = cache.kv_pool.alloc(3)
    assert not owned(fresh).any()
    cache.evict(cache.full_evictable_size())
    held = sum(len(n.value) for n in cache.nodes() if n is not cache.root_node and n.value is not None)
    assert int(owned(torch.arange(cache.kv_pool.capacity)).sum()) == held
