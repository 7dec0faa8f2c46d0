"""Every bad input of the catalogue (tests/bad_inputs.py) gets a clear error and changes nothing.

A clear error is a ValueError subclass of the project (InvalidInputError, LockError, PoolError)
whose message is a sentence; "nothing changed" is the cache's whole fingerprint (and the given
requests) before and after, invariants and integrity clean, or, for files and folders, the case's
own check that nothing was written.
"""

from __future__ import annotations

import pytest
from bad_inputs import CASES
from fingerprint import assert_rejected

import himamba as hm


@pytest.mark.parametrize("case", CASES, ids=[f"{c.klass}: {c.name}" for c in CASES])
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


def test_every_class_has_cases():
    classes = {c.klass for c in CASES}
    assert classes == {"ownership", "atomicity", "data loss", "silent", "unclear", "hangs", "output folders"}
    assert len(CASES) >= 100
