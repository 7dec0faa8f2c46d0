"""Events: the fine-grained steps the cache algorithms announce while they work.

The cache owns one :class:`EventBus`. Algorithms guard every emission with ``if bus.active:``,
so with no listener an event costs one attribute read and nothing is built. Listeners receive
:class:`Event` records synchronously, in order, while the cache is mid-operation: they may read
the cache but must not change it.

Public operations are bracketed by ``OP_BEGIN`` / ``OP_END`` events (``OP_FAILED`` instead of
``OP_END`` when the operation raises: emitted once, by the innermost operation the exception
leaves, before it propagates unchanged); ``Event.depth`` tells how
deeply the event is nested (an ``evict_mamba`` that falls back to a leaf eviction has depth 1
inside it), so a recorder can group steps by the public call that caused them. An operation
called from inside a listener, or from a second thread while one runs, is refused with
:class:`~himamba.errors.ConcurrentUseError` before it changes anything.

Size: the event kinds, the bus and the operation bracket stay in one file because the bracket's
refusals and its held listener exceptions read the bus's own state (who is in a listener, what is
held); split apart, each half would reach into the other's private fields.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import torch

from himamba.errors import ConcurrentUseError
from himamba.memory import slot_ids


class EventKind(str, Enum):
    """What happened. The values are stable strings (they appear in exported step logs)."""

    OP_BEGIN = "op_begin"  # a public operation starts
    OP_END = "op_end"  # ... and returns
    OP_FAILED = "op_failed"  # ... or raises: the exception type and message (the state as it left it)
    NODE_CREATED = "node_created"  # a new leaf hung under a parent
    SPLIT = "split"  # an edge split in two
    LRU_REFRESH = "lru_refresh"  # nodes moved to the MRU end / retimed
    STATE_ATTACHED = "state_attached"  # a device state given to an existing node
    DUPLICATE_FREED = "duplicate_freed"  # insert freed request slots the tree already had
    LOCK = "lock"  # inc_lock_ref
    UNLOCK = "unlock"  # dec_lock_ref
    TOMBSTONE = "tombstone"  # an internal node lost its device state
    LEAF_EVICTED = "leaf_evicted"  # a device leaf deleted (KV and state freed)
    CASCADE = "cascade"  # one iteration of the tombstone cascade (continue or stop)
    NODE_DELETED = "node_deleted"  # a node left the tree
    UNEVICTED = "unevicted"  # a host-only node got device KV again from an insert
    DEMOTED = "demoted"  # a device leaf's KV (and state) left the device; host copy kept
    WRITE_ISSUED = "write_issued"  # device -> host copy issued (node counts as backed up)
    WRITE_ACKED = "write_acked"  # ... and acknowledged
    LOAD_ISSUED = "load_issued"  # host -> device load queued (nodes marked on device)
    LOAD_ACKED = "load_acked"  # ... and acknowledged
    HOST_LEAF_EVICTED = "host_leaf_evicted"  # a host-only leaf deleted (host KV and state freed)
    HOST_STATE_DROPPED = "host_state_dropped"  # an internal node lost its host state
    PIN = "pin"  # host_ref_counter / host_mamba_ref_counter taken
    UNPIN = "unpin"  # ... released
    STORAGE = "storage"  # storage backup or prefetch issued / completed


@dataclass(frozen=True, slots=True)
class Event:
    """One step. ``nodes`` lists the ids the step is about (first = the main one)."""

    kind: EventKind
    text: str
    nodes: tuple[int, ...] = ()
    depth: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{'  ' * self.depth}{self.kind.value}: {self.text}"


Listener = Callable[[Event], None]


class EventBus:
    """Fan-out of events to listeners. ``active`` is true while at least one listens.

    ``owner``: the object whose :func:`operation` methods are bracketed while anyone listens
    (held weakly: the bus keeps no cache alive)."""

    __slots__ = ("_listeners", "active", "depth", "_owner", "_failed", "in_listener", "_deferred")

    def __init__(self, owner: Any = None) -> None:
        self._failed: BaseException | None = None  # the exception an OP_FAILED event reported last
        self.in_listener: int | None = None  # the thread running a listener: its operation calls are refused
        self._deferred: BaseException | None = None  # a listener's exception, raised when the operation ends
        self._listeners: list[Listener] = []
        self.active = False
        self.depth = 0
        self._owner = None if owner is None else weakref.ref(owner)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Start delivering events to ``listener``; returns a function that stops it."""
        self._listeners.append(listener)
        self._set_active(True)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
            self._set_active(bool(self._listeners))

        return unsubscribe

    def _set_active(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            owner = None if self._owner is None else self._owner()
            if owner is not None:
                trace_operations(owner, active)

    def emit(self, kind: EventKind, text: str, nodes: tuple[int, ...] = (), **data: Any) -> None:
        """Deliver one event. Callers check ``active`` first so that nothing is built in vain.

        Listeners run in the middle of a change, so an exception a listener raises (a
        ``KeyboardInterrupt`` too) is held until the outermost operation has finished its change,
        then raised; every listener still sees every event. A listener that calls an operation of
        the cache gets :class:`~himamba.errors.ConcurrentUseError` (held the same way)."""
        event = Event(kind, text, nodes, self.depth, data)
        for listener in tuple(self._listeners):
            self.in_listener = threading.get_ident()
            try:
                listener(event)
            except BaseException as exc:  # noqa: BLE001 -- held, raised when the change is complete
                if self._deferred is None:
                    self._deferred = exc
            finally:
                self.in_listener = None
        if self.depth == 0 and kind is not EventKind.OP_BEGIN:
            self.raise_deferred()

    def raise_deferred(self) -> None:
        """Raise (once) what a listener raised during the operation that just ended."""
        exc, self._deferred = self._deferred, None
        if exc is not None:
            raise exc


class CacheListener:
    """Base of the objects that follow one cache's events while attached (the recorder, the
    eviction probe): :meth:`attach` subscribes :meth:`_on_event` to ``self.cache.events``,
    :meth:`detach` ends it, and ``with`` does both. Attaching twice or detaching twice is
    harmless. Subclasses set ``self.cache``, define ``_on_event`` and may define
    ``_on_attach`` (runs just before subscribing, e.g. to take a baseline)."""

    cache: Any
    _unsubscribe: Callable[[], None] | None = None

    def attach(self):
        if self._unsubscribe is None:
            self._on_attach()
            self._unsubscribe = self.cache.events.subscribe(self._on_event)
        return self

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _on_attach(self) -> None:
        """Runs when the listener attaches, before the first event."""

    def _on_event(self, event: Event) -> None:
        raise NotImplementedError


F = TypeVar("F", bound=Callable[..., Any])


_OPERATION = "_himamba_operation"  # the mark operation() leaves on a method: its name


def operation(name: str) -> Callable[[F], F]:
    """Mark a public cache method as the operation ``name``: while anyone listens to the
    object's :class:`EventBus` (built with the object as ``owner``), its calls are bracketed
    by OP_BEGIN/OP_END events (:func:`trace_operations`). Always, one thread at a time may run
    the object's operations (its ``_operation_lock``, a re-entrant lock): a call from a second
    thread while one runs raises :class:`~himamba.errors.ConcurrentUseError`, nothing changed;
    the same thread may nest operations."""

    def mark(fn: F) -> F:
        @functools.wraps(fn)
        def one_caller(self: Any, *args: Any, **kwargs: Any) -> Any:
            lock = self._operation_lock
            if not lock.acquire(False):  # re-entrant: fails only while another thread holds it
                raise ConcurrentUseError(_second_thread(name))
            try:
                return fn(self, *args, **kwargs)
            finally:
                lock.release()

        setattr(one_caller, _OPERATION, name)
        return one_caller  # type: ignore[return-value]

    return mark


def trace_operations(obj: Any, on: bool) -> None:
    """Bracket the :func:`operation` methods of ``obj`` (which has ``events``) by OP_BEGIN and
    OP_END events (``on``), or give it back its plain methods. The bracketed ones are bound
    methods in the instance's ``__dict__``, so calls through ``self`` inside an operation are
    bracketed too (one level deeper); a call through ``super()`` is not."""
    methods = _operations(type(obj))
    if on:
        for attr, (fn, name) in methods.items():
            setattr(obj, attr, types.MethodType(_bracketed(fn, name), obj))
    else:
        for attr in methods:
            obj.__dict__.pop(attr, None)


@functools.cache
def _operations(cls: type) -> dict[str, tuple[Callable[..., Any], str]]:
    """The :func:`operation` methods of ``cls`` by attribute, as its instances resolve them."""
    found: dict[str, tuple[Callable[..., Any], str]] = {}
    for klass in reversed(cls.__mro__):
        for attr, fn in vars(klass).items():
            name = getattr(fn, _OPERATION, None)
            if name is not None:
                found[attr] = (fn, name)
            elif attr in found:
                del found[attr]  # overridden by a plain method
    return found


def _bracketed(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def bracketed(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self._operation_lock
        if not lock.acquire(False):  # refused before OP_BEGIN: a second thread announces nothing
            raise ConcurrentUseError(_second_thread(name))
        try:
            return _run_bracketed(self, args, kwargs)
        finally:
            lock.release()

    def _run_bracketed(self: Any, args: tuple, kwargs: dict) -> Any:
        bus: EventBus = self.events
        if bus.in_listener == threading.get_ident():
            raise ConcurrentUseError(f"{name} was called from inside an event listener: listeners may read the cache "
                                     "but not change it (nothing was changed)")
        bus.emit(EventKind.OP_BEGIN, f"{name}({_describe_args(args, kwargs)})", op=name)
        if bus.depth == 0 and bus._deferred is not None:  # a listener refused OP_BEGIN: nothing started
            bus.raise_deferred()
        bus.depth += 1
        try:
            result = fn(self, *args, **kwargs)
        except BaseException as exc:
            bus.depth -= 1
            if bus.active and bus._failed is not exc:
                bus._failed = exc  # the operations around this one re-raise it without a second event
                bus.emit(EventKind.OP_FAILED, f"{name} raised {type(exc).__name__}: {_short_error(exc)}", op=name,
                         error=type(exc).__name__, message=str(exc))
            if bus.depth == 0:
                bus._failed = None  # keep no exception (and its frames) alive after the outermost call
                bus._deferred = None  # the operation's own failure wins over a listener's
            raise
        bus.depth -= 1
        if bus.depth == 0:
            bus._failed = None
        bus.emit(EventKind.OP_END, f"{name} -> {_short(result)}", op=name)  # raises a listener's held exception
        return result

    return bracketed


def _second_thread(name: str) -> str:
    return (f"{name} was called while another thread runs an operation on this cache: a cache serves one thread "
            "at a time (nothing was changed)")


def _describe_args(args: tuple, kwargs: dict) -> str:
    parts = [_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def _short_error(exc: BaseException, limit: int = 300) -> str:
    """The exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(f"{f.name}={_short(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__name__}({fields})"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    node_id = getattr(value, "id", None)
    if node_id is not None and hasattr(value, "children"):
        return f"node #{node_id}"
    if hasattr(value, "token_ids"):
        ids = value.token_ids
        return repr(ids) if len(ids) <= 8 else f"[{len(ids)} tokens]"
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} tokens]"
    if hasattr(value, "numel") and hasattr(value, "tolist"):
        if value.numel() > 8:
            return f"<{value.numel()} indices>"
        ids = slot_ids.mirrored(value) if isinstance(value, torch.Tensor) else None  # no read on a GPU
        return repr((value if ids is None else ids).tolist())
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
