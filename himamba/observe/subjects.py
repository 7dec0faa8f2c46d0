"""Foreign subjects: objects of another library that the views accept as if they were caches.

A higher floor (the lens, :mod:`himamba.lens`) registers, for the classes it understands (say,
SGLang's own caches), the functions that turn a live object into what a view needs:
``"snapshot"`` (an object -> :class:`~himamba.observe.snapshot.Snapshot`) and ``"invariants"``
(an object, ``held_kv``, ``held_states`` -> a list of violations). :func:`~himamba.observe.
snapshot.take` and ``check_invariants`` ask :func:`handler` first, so that this floor never
imports the floor that knows the foreign classes.

Contract: :func:`handler` answers ``None`` for every object no one registered for (himamba's own
caches among them), and decides once per class (the answer is kept by type, so asking costs a
dictionary look-up).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: (accepts(type) -> bool, {what: function}) in the order registered.
_REGISTERED: list[tuple[Callable[[type], bool], dict[str, Callable[..., Any]]]] = []
_BY_TYPE: dict[type, dict[str, Callable[..., Any]] | None] = {}


def register(accepts: Callable[[type], bool], **functions: Callable[..., Any]) -> None:
    """Register ``functions`` (``snapshot=...``, ``invariants=...``) for every class for which
    ``accepts(cls)`` is true. Later registrations are asked first."""
    _REGISTERED.insert(0, (accepts, dict(functions)))
    _BY_TYPE.clear()


def handler(obj: Any, what: str) -> Callable[..., Any] | None:
    """The registered function ``what`` for ``obj``'s class, or ``None``."""
    cls = type(obj)
    try:
        functions = _BY_TYPE[cls]
    except KeyError:
        functions = next((f for accepts, f in _REGISTERED if accepts(cls)), None)
        _BY_TYPE[cls] = functions
    return None if functions is None else functions.get(what)
