"""Ready-made scenarios, for the CLI's demo and for quick experiments.

:func:`b1_replay` builds the reference's B1 trigger (section 5): a backed-up, stateless node ``P``
pinned by a storage backup in flight loses its only child. It records the removal with a
:class:`~himamba.observe.recorder.Recorder`, then releases the pin and calls ``evict_host`` once
more. With ``legacy=True`` the old cascade deletes ``P`` and the last call fails with
``parent does not have child key``; with the fix the cascade stops at the pin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from himamba.cache.config import CacheConfig
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.errors import CacheAssertionError
from himamba.observe.recorder import Recorder
from himamba.sim.ops import serve


@dataclass
class ScenarioRun:
    """A recorded scenario: the cache, its steps, the error it ended with (if any) and the
    names the reference gives its nodes (``{id: "P"}``)."""

    cache: HiMambaRadixCache
    recorder: Recorder
    error: Exception | None
    names: dict[int, str] = field(default_factory=dict)


def b1_replay(legacy: bool) -> ScenarioRun:
    """Run the B1 trigger with the legacy switch on (``legacy=True``) or off."""
    cfg = CacheConfig(device="cpu", device_kv_tokens=32, host_kv_tokens=64, device_mamba_slots=4,
                      host_mamba_slots=8, write_policy="write_through", enable_storage=True,
                      legacy={"B1"} if legacy else frozenset())
    cache = HiMambaRadixCache(cfg, manual_acks=True)
    serve(cache, [1, 2, 3, 4])
    cache.cache_controller.complete()
    cache.writing_check()
    cache.storage.complete()
    cache.check_storage_progress()
    rec = Recorder(cache, skip={"lock", "unlock"})
    error = None
    with rec:
        cache.match_prefix([1, 2])  # lookup split: P = [1, 2] (no state) over C = [3, 4]
        p = cache.node_at([1, 2])
        names = {p.id: "P", next(iter(p.children.values())).id: "C"}
        cache.write_backup_storage(p)  # archive P: pinned until the storage ack
        cache.evict(4)  # C, then P, demoted to host
        cache.evict_host(2)  # C deleted: the cascade meets pinned P
        cache.storage.complete()
        cache.check_storage_progress()  # the archive finishes: P's pin is released
        try:
            cache.evict_host(2)
        except CacheAssertionError as exc:
            error = exc
    return ScenarioRun(cache, rec, error, names)
