"""The hook tables: which methods of a live SGLang cache the lens wraps while someone records, and
what event each decision becomes (see :mod:`himamba.lens.recording`).

Each decision emitter is called after the wrapped method returned, as ``emit(args, result,
before)`` (``before``: what its optional ``before(*args)`` read first), and yields
``(EventKind, sentence, node ids)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from himamba.lens.recording import (
    OPS_0511,
    OPS_UNIFIED,
    K,
    nid,
    stop_reason_0511,
    stop_reason_unified,
)

Emitted = Iterator[tuple[K, str, tuple]]


def _one(kind: K, sentence: Callable[[Any, Any], str]) -> Callable[..., Emitted]:
    """An emitter for a method whose first argument is the node it decides about."""

    def emit(args: tuple, result: Any, before: Any) -> Emitted:
        yield kind, sentence(args[0], result), (nid(args[0]),)

    return emit


# -- SGLang 0.5.11 -----------------------------------------------------------------------------------
def tables_0511(cache: Any) -> list[tuple[Any, tuple[str, ...], dict[str, Callable[..., Any]]]]:
    """What to wrap on a 0.5.11 ``MambaRadixCache`` / ``HiMambaRadixCache``."""
    tiered = hasattr(cache, "evictable_full_host_leaves")

    def split(args: tuple, new: Any, before: Any) -> Emitted:
        _key, child, at = args
        yield K.SPLIT, f"split #{child.id} after {at} tokens: new parent #{new.id}", (new.id, child.id)

    def cascade_step(args: tuple, result: Any, before: Any) -> Emitted:
        node = args[0]
        yield K.CASCADE, f"cascade: #{node.id} deleted (childless, no state), go on to #{node.parent.id}", \
            (node.id, node.parent.id)

    def cascade_end(args: tuple, result: Any, before: Any) -> Emitted:
        survivor = result[0].parent
        reason = stop_reason_0511(survivor, cache.root_node, tiered)
        yield K.CASCADE, f"cascade stops at #{survivor.id}: {reason}", (survivor.id,)

    decisions = {
        "_split_node": split,
        "_evict_leaf_node": _one(K.LEAF_EVICTED, lambda n, r: f"leaf #{n.id} evicted"),
        "_evict_regular": _one(K.LEAF_EVICTED, lambda n, r: f"leaf #{n.id} evicted (KV and state freed)"),
        "_evict_to_host": _one(K.DEMOTED, lambda n, r: f"#{n.id} demoted to host"),
        "_evict_host_leaf": _one(K.HOST_LEAF_EVICTED, lambda n, r: f"host leaf #{n.id} deleted"),
        "_tombstone_internal_node": _one(K.TOMBSTONE, lambda n, r: f"#{n.id} lost its device state"),
        "_free_device_mamba": _one(K.TOMBSTONE, lambda n, r: f"#{n.id}: device state freed"),
        "_delete_tombstone_leaf": cascade_step,
        "_iteratively_delete_tombstone_leaf": cascade_end,
    }
    return [(cache, OPS_0511, decisions)]


# -- SGLang 0.5.23, unified tree ---------------------------------------------------------------------
def tables_unified(cache: Any) -> list[tuple[Any, tuple[str, ...], dict[str, Callable[..., Any]]]]:
    """What to wrap on a 0.5.23 ``UnifiedRadixCache`` and its tree core."""
    core = cache.tree_core
    if type(core).__name__.startswith("Rust"):
        return [(cache, OPS_UNIFIED, {"_apply_cache_action": _action}), (core, (), _rust_decisions())]
    cascade: dict[str, Any] = {"depth": 0, "last": None}

    def split(args: tuple, result: Any, before: Any) -> Emitted:
        _key, child, at = args
        new = result[0]
        yield K.SPLIT, f"split #{child.id} after {at} tokens: new parent #{new.id}", (new.id, child.id)

    def created(args: tuple, node: Any, before: Any) -> Emitted:
        yield K.NODE_CREATED, f"#{node.id} created under #{args[0].id}", (node.id, args[0].id)

    def removed(args: tuple, result: Any, before: Any) -> Emitted:
        node = args[0]
        if cascade["depth"]:
            cascade["last"] = node
            yield K.CASCADE, (f"cascade: #{node.id} deleted (no FULL value on either tier), go on to "
                              f"#{node.parent.id}"), (node.id, node.parent.id)
        else:
            yield K.NODE_DELETED, f"#{node.id} left the tree", (node.id,)

    class Ancestors:
        """The cascade walk: note where it starts, then name where it stopped and why."""

        def before(self, cur: Any, *rest: Any) -> Any:
            cascade["depth"] += 1
            cascade["last"] = None
            return cur

        def __call__(self, args: tuple, result: Any, start: Any) -> Emitted:
            cascade["depth"] -= 1
            survivor = start if cascade["last"] is None else cascade["last"].parent
            yield K.CASCADE, f"cascade stops at #{survivor.id}: {stop_reason_unified(survivor, core.root_node)}", \
                (survivor.id,)

    def component_evicted(args: tuple, result: Any, before: Any) -> Emitted:
        node, comp = args[0], args[1]
        target = next((a for a in args[2:] if type(a).__name__ == "EvictLayer"), None)
        name = getattr(comp.component_type, "name", str(comp.component_type))
        layer = "host" if target is not None and int(target) == 2 else "device"
        kind = K.TOMBSTONE if name != "FULL" and layer == "device" else (
            K.HOST_STATE_DROPPED if layer == "host" else K.LEAF_EVICTED)
        yield kind, f"#{node.id}: {name} {layer} value freed", (node.id,)

    decisions = {
        "_split_node": split, "_add_new_node": created, "_remove_leaf_from_parent": removed,
        "_iteratively_delete_tombstone_ancestors": Ancestors(),
        "_evict_component_and_detach_lru": component_evicted,
        "_demote": _one(K.DEMOTED, lambda n, r: f"#{n.id} demoted to host"),
        "_evict_host_leaf": _one(K.HOST_LEAF_EVICTED, lambda n, r: f"host leaf #{n.id} deleted"),
    }
    return [(cache, OPS_UNIFIED, {}), (core, (), decisions)]


def _action(args: tuple, result: Any, before: Any) -> Emitted:
    """A cache action upstream carried out (the Rust core's decisions, seen from Python)."""
    action = args[0]
    name = type(action).__name__
    comp = getattr(getattr(action, "component_type", None), "name", "FULL")
    slots = sum(len(t) for t in getattr(action, "indices", getattr(action, "host_indices", [])) or [])
    if comp == "FULL" and name == "FreeComponentDeviceSlot":
        return  # the KV of a leaf the core evicted: its evict_device_leaf step already said so
    kind = {"FreeDeviceKV": K.LEAF_EVICTED, "FreeDeviceKVFullOnly": K.LEAF_EVICTED,
            "FreeComponentHostSlot": K.HOST_STATE_DROPPED}.get(name, K.TOMBSTONE if comp == "MAMBA" else K.STORAGE)
    yield kind, f"action {name} ({comp}): {slots} slot(s) freed", ()


def _rust_decisions() -> dict[str, Callable[..., Any]]:
    """The adapter's calls on the Rust core (the victim each eviction picks shows in its step)."""
    return {
        "evict_device_leaf": _one(K.LEAF_EVICTED, lambda n, r: f"leaf #{n} evicted (the cascade runs in the core)"),
        "demote": _one(K.DEMOTED, lambda n, r: f"#{n} demoted to host"),
        "finish_mamba_state_eviction": _one(K.TOMBSTONE, lambda n, r: f"#{n}: MAMBA device state freed"),
        "drop_subtree_no_host": _one(K.NODE_DELETED, lambda n, r: f"subtree at #{n} dropped"),
    }
