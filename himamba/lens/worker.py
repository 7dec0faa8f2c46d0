"""The worker that runs in SGLang 0.5.23's environment: one JSON request on standard input, one
JSON line on standard output (see :mod:`himamba.lens.remote`).

Requests (``{"what": "batch", "requests": [...]}`` answers several at once, ``"answers"``):
``{"what": "probe"}`` → ``{"ok": true, "version": ..., "cores": [...]}``;
``{"what": "replay", "script": ..., "core": ..., "skip": [...]}`` → ``{"ok": true, "replay": ...}``
(with ``"host": true``, on the cache with its host tier: :mod:`himamba.lens.unified_host`).
Errors answer ``{"ok": false, "kind": "unavailable" | "failure", "message": ...}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def _answer(request: dict) -> dict:
    from himamba.lens.remote import VERSION, unified_here

    if not unified_here():
        return {"ok": False, "kind": "unavailable", "message": f"sglang=={VERSION} is not installed in {sys.prefix}"}
    try:
        from himamba.differential.standins import install_import_standins

        install_import_standins()
        import sglang.srt.mem_cache.unified_radix_cache  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - reported as unavailable, with Python's own words
        return {"ok": False, "kind": "unavailable", "message": f"import failed: {type(exc).__name__}: {exc}"}
    if request.get("what") == "probe":
        from himamba.cache.config import CacheConfig
        from himamba.lens.unified_side import CORES, build_unified

        cores = []
        for core in CORES:
            with contextlib.suppress(Exception):
                build_unified(CacheConfig(device="cpu"), core)
                cores.append(core)
        return {"ok": True, "version": VERSION, "cores": cores}
    if request.get("what") == "replay":
        from himamba.lens.replay import replay_on
        from himamba.lens.unified_host import replay_with_host

        core, skip = request.get("core", "python"), tuple(request.get("skip", ("lock", "unlock")))
        if request.get("host"):  # the cache with its host tier
            rep = replay_with_host(request["script"], core, skip)
        else:
            rep = replay_on(request["script"], "sglang-0.5.23", core, skip)
        return {"ok": True, "replay": rep.to_dict()}
    if request.get("what") == "batch":  # several requests, one start-up
        return {"ok": True, "answers": [_answer(r) for r in request.get("requests", [])]}
    if request.get("what") == "damage":
        return {"ok": True, "found": _damaged(request.get("core", "python"))}
    return {"ok": False, "kind": "failure", "message": f"unknown request {request.get('what')!r}"}


def _damaged(core: str) -> dict[str, list[str]]:
    """The rules ``check_invariants`` names on a healthy unified tree and after each damage (a
    lock counter, a leaf set, an LRU list, a parent link), for the tests."""
    from himamba.cache.config import CacheConfig
    from himamba.cache.invariants import check_invariants
    from himamba.lens.replay import drive
    from himamba.lens.unified_side import UnifiedSide

    side = UnifiedSide(CacheConfig(device="cpu"), core)
    drive(side, {"ops": [{"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "request", "tokens": [1, 2, 5, 6]}]},
          "sglang-0.5.23")
    found = {"healthy": sorted({v.invariant for v in check_invariants(side.cache)})}
    if core != "python":
        return found
    tc = side.cache.tree_core
    leaf = next(iter(tc.evictable_device_leaves))
    mid = leaf.parent

    def rules() -> list[str]:
        return sorted({v.invariant for v in check_invariants(side.cache)})

    leaf.component_data[0].lock_ref += 1
    found["lock"] = rules()
    leaf.component_data[0].lock_ref -= 1
    tc.evictable_device_leaves.discard(leaf)
    found["leaf"] = rules()
    tc.evictable_device_leaves.add(leaf)
    mamba = tc.lru_lists[side.cache.tree_core.component_types[-1]]
    mamba.remove_node(leaf)
    found["lru"] = rules()
    mamba.insert_mru(leaf)
    leaf.parent = tc.root_node
    found["parent"] = rules()
    leaf.parent = mid
    found["healed"] = rules()
    return found


def main() -> int:
    request = json.loads(sys.stdin.read())
    noise = io.StringIO()
    try:
        with contextlib.redirect_stdout(noise):
            answer = _answer(request)
    except Exception as exc:  # noqa: BLE001 - every upstream exception becomes an answer
        answer = {"ok": False, "kind": "failure", "message": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
