"""Recording the real code: an event bus for one live SGLang cache, fed by wrapping methods of that
one instance (never its class, never the installed package).

:func:`ensure_bus` gives a live upstream cache an ``events`` attribute, a :class:`LensBus`. While
no one listens the cache is untouched; the first ``subscribe`` (a :class:`~himamba.observe.
recorder.Recorder` attaching) puts wrapped versions of the methods named in the generation's
hook table into the **instance's** ``__dict__`` (and, for the unified tree, into its tree core
instance's), and the last ``unsubscribe`` takes them out again, so the cache then runs its own
class's methods exactly as before. The wrappers emit the same :class:`~himamba.observe.events.
EventKind` s as himamba's caches:

* every public operation is bracketed by ``OP_BEGIN`` / ``OP_END`` (nested calls through
  ``self`` one level deeper), so steps group by the call that caused them;
* inside them, the decisions upstream's own methods make: ``SPLIT``, ``NODE_CREATED``,
  ``LEAF_EVICTED``, ``DEMOTED``, ``TOMBSTONE`` (a state dropped), ``HOST_LEAF_EVICTED``, one
  ``CASCADE`` per node the cascade deletes and one where it stops, with the rule that stopped it
  (read from the survivor: root, children, a state, a lock or a host lock);
* on the Rust tree core, whose cascade runs inside the binding, the decisions visible from Python
  are the adapter's calls (``evict_device_leaf``, ``demote``, ...) and the cache actions upstream
  carries out (``_apply_cache_action``: slots freed per component).

Each event is emitted after the wrapped method returns, so the recorder's snapshot shows its
effect.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from himamba.observe.events import EventBus, EventKind

K = EventKind

#: Public operations per generation (bracketed by OP_BEGIN / OP_END).
OPS_0511 = ("match_prefix", "insert", "evict", "evict_mamba", "evict_host", "evict_mamba_host", "inc_lock_ref",
            "dec_lock_ref", "cache_finished_req", "cache_unfinished_req", "init_load_back", "load_back",
            "write_backup", "writing_check", "loading_check", "_protect_host_node", "_release_host_node",
            "_insert_helper_host")
OPS_UNIFIED = ("match_prefix", "insert", "evict", "inc_lock_ref", "dec_lock_ref", "inc_host_lock_ref",
               "dec_host_lock_ref", "cache_finished_req", "cache_unfinished_req", "evict_host")


def nid(x: Any) -> Any:
    """A node's id: a node object's ``id``, or the NodeId itself."""
    return getattr(x, "id", x)


def stop_reason_0511(node: Any, root: Any, tiered: bool) -> str:
    """Why 0.5.11's cascade keeps ``node`` (its rule, in its order)."""
    if node is root:
        return "the root"
    if node.children:
        return "it has children"
    if node.mamba_value is not None:
        return "it holds a device state"
    if tiered and getattr(node, "mamba_host_value", None) is not None:
        return "it holds a host state"
    if node.full_lock_ref > 0 or node.mamba_lock_ref > 0:
        return "it is locked"
    if tiered and (node.host_ref_counter > 0 or node.host_mamba_ref_counter > 0):
        return "it is pinned on the host (#23696)"
    return "(no stop rule holds)"


def stop_reason_unified(node: Any, root: Any) -> str:
    """Why the unified tree's cascade keeps ``node`` (its rule, in its order)."""
    if node is root:
        return "the root"
    if node.children:
        return "it has children"
    names = {0: "FULL", 1: "SWA", 2: "MAMBA"}
    for i, cd in enumerate(node.component_data):
        if cd.lock_ref > 0:
            return f"{names.get(i, i)} holds a device lock"
        if cd.host_lock_ref > 0:
            return f"{names.get(i, i)} holds a host lock"
    if node.component_data[0].value is not None:
        return "FULL KV is on the device (kept as a device leaf)"
    if node.component_data[0].host_value is not None:
        return "FULL KV is on the host (kept as a host leaf)"
    return "(no stop rule holds)"


class LensBus(EventBus):
    """An :class:`EventBus` whose first listener wraps the subject's methods (``install``) and
    whose last one unwraps them (``uninstall``)."""

    __slots__ = ("_install", "_uninstall", "mark", "cached")

    def __init__(self, install: Callable[[], None], uninstall: Callable[[], None]) -> None:
        super().__init__(None)
        self._install, self._uninstall = install, uninstall
        self.mark = 0  # moves whenever a wrapped method starts or returns
        self.cached: tuple[int, Any] | None = None  # (mark, snapshot) last taken while listened to

    def snapshot(self, take: Callable[[], Any]) -> Any:
        """``take()``, or the snapshot taken at the same mark while anyone listens: no wrapped
        method has run since, so the tree is as it was (the step that opens an operation sees the
        tree the step that closed the last one saw)."""
        if self.active and self.cached is not None and self.cached[0] == self.mark:
            return self.cached[1]
        snap = take()
        self.cached = (self.mark, snap) if self.active else None
        return snap

    def subscribe(self, listener: Callable[..., None]) -> Callable[[], None]:
        first = not self.active
        stop = super().subscribe(listener)
        if first:
            self._install()

        def unsubscribe() -> None:
            stop()
            if not self.active:
                self._uninstall()

        return unsubscribe


def _bracket(bus: EventBus, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def op(*args: Any, **kwargs: Any) -> Any:
        shown = name.lstrip("_")
        bus.emit(K.OP_BEGIN, _said(lambda: f"{shown}({_args(args)})"), op=shown)
        bus.depth += 1
        bus.mark += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            bus.depth -= 1
            bus.mark += 1
        bus.emit(K.OP_END, _said(lambda: f"{shown} -> {_short(result)}"), op=shown)
        return result

    return op


def _after(bus: EventBus, fn: Callable[..., Any], emit: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def decision(*args: Any, **kwargs: Any) -> Any:
        before = emit.before(*args) if hasattr(emit, "before") else None
        bus.mark += 1
        try:
            result = fn(*args, **kwargs)
        finally:
            bus.mark += 1
        try:
            said = list(emit(args + tuple(kwargs.values()), result, before))
        except Exception as exc:  # noqa: BLE001 - the upstream call succeeded; say what could not be read
            said = [(K.STORAGE, f"{fn.__name__}: (not described: {type(exc).__name__})", ())]
        for kind, text, nodes in said:
            bus.emit(kind, text, tuple(nodes))
        return result

    return decision


def _short(value: Any, depth: int = 0) -> str:
    """A result in a few words: node objects as ``#id``, small index tensors as lists, records
    (dataclasses, named tuples) as ``Name(field=..., ...)`` with their set fields."""
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
    elif hasattr(value, "children") and hasattr(value, "id"):
        text = f"#{value.id}"
    elif hasattr(value, "numel") and hasattr(value, "tolist"):
        text = repr(value.tolist()) if value.numel() <= 8 else f"<{value.numel()} slots>"
    elif isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        text = "(" + ", ".join(_short(v, depth + 1) for v in value[:4]) + (", ..." if len(value) > 4 else "") + ")"
    else:
        fields = getattr(value, "_fields", None) or list(getattr(value, "__dataclass_fields__", {}))
        if not fields or depth > 0:
            text = type(value).__name__
        else:
            shown = [(f, getattr(value, f, None)) for f in fields]
            shown = [(f, v) for f, v in shown if not _unset(v) and not callable(v)][:4]
            text = f"{type(value).__name__}(" + ", ".join(f"{f}={_short(v, 1)}" for f, v in shown) + ")"
    return text if len(text) <= 100 else text[:97] + "..."


def _unset(v: Any) -> bool:
    """A record field not worth showing: None, False, zero or an empty list."""
    if v is None or v is False:
        return True
    if isinstance(v, (int, float)):
        return v == 0
    return isinstance(v, (list, tuple, dict)) and not v


def _said(describe: Callable[[], str]) -> str:
    """A description that never raises (the wrapped upstream call must not fail because of it)."""
    try:
        return describe()
    except Exception as exc:  # noqa: BLE001 - a description is never worth a failed operation
        return f"(not described: {type(exc).__name__})"


def _args(args: tuple) -> str:
    parts = []
    for a in args:
        key = getattr(a, "key", None)
        if hasattr(a, "children") and hasattr(a, "id"):
            parts.append(f"#{a.id}")
        elif hasattr(key, "token_ids"):
            ids = list(key.token_ids)
            parts.append(f"key={ids if len(ids) <= 8 else f'[{len(ids)} tokens]'}")
        elif isinstance(a, int) and not isinstance(a, bool):
            parts.append(f"#{a}")
        else:
            parts.append(_short(a))
    return ", ".join(parts)


def install_wrappers(target: Any, ops: tuple[str, ...], decisions: dict[str, Callable[..., Any]],
                     bus: EventBus) -> Callable[[], None]:
    """Put wrapped versions of ``target``'s ``ops`` (bracketed) and ``decisions`` (emitting after
    the call) into the instance's ``__dict__``; return the function that takes them out."""
    names = []
    for name in ops:
        if hasattr(type(target), name):
            setattr(target, name, _bracket(bus, getattr(target, name), name))
            names.append(name)
    for name, emit in decisions.items():
        if hasattr(type(target), name):
            setattr(target, name, _after(bus, getattr(target, name), emit))
            names.append(name)

    def remove() -> None:
        for name in names:
            target.__dict__.pop(name, None)

    return remove


def make_bus(targets: list[tuple[Any, tuple[str, ...], dict[str, Callable[..., Any]]]]) -> LensBus:
    """A :class:`LensBus` that wraps each ``(instance, ops, decisions)`` while anyone listens."""
    removers: list[Callable[[], None]] = []

    def install() -> None:
        for target, ops, decisions in targets:
            removers.append(install_wrappers(target, ops, decisions, bus))

    def uninstall() -> None:
        while removers:
            removers.pop()()

    bus = LensBus(install, uninstall)
    return bus


def ensure_bus(cache: Any, tables: Callable[[Any], list[tuple[Any, tuple[str, ...], dict]]]) -> LensBus:
    """The cache's :class:`LensBus`, made (with the generation's hook ``tables``) on first use."""
    bus = cache.__dict__.get("events")
    if not isinstance(bus, LensBus):
        bus = make_bus(tables(cache))
        cache.events = bus
    return bus


__all__ = ["LensBus", "ensure_bus", "make_bus", "nid", "stop_reason_0511", "stop_reason_unified"]
