"""The lens: SGLang's own caches, live, as first-class subjects of himamba's views.

Importing this package registers, in :mod:`himamba.observe.subjects`, how to snapshot, record and
check SGLang 0.5.11's ``MambaRadixCache`` / ``HiMambaRadixCache`` and SGLang 0.5.23's
``UnifiedRadixCache`` (FULL + MAMBA, Python or Rust tree core), so that ``hm.take``,
``hm.render``, ``hm.node_table``, ``hm.lru_table``, ``hm.counters_table``, ``hm.Recorder`` and
``hm.check_invariants`` accept them as they accept himamba's caches. It imports nothing of SGLang:
the classes are recognised by module and name.

* :mod:`~himamba.lens.legacy_trees`, :mod:`~himamba.lens.unified_trees` — live cache to Snapshot;
* :mod:`~himamba.lens.recording`, :mod:`~himamba.lens.hooks` — recording by wrapping one instance;
* :mod:`~himamba.lens.rules` — the invariants each generation keeps;
* :mod:`~himamba.lens.unified_side`, :mod:`~himamba.lens.replay` — one script on three trees;
* :mod:`~himamba.lens.remote` — SGLang 0.5.23 in its own environment, through a subprocess.
"""

from typing import Any

from himamba.lens.hooks import tables_0511, tables_unified
from himamba.lens.legacy_trees import is_0511_cache, snapshot_0511
from himamba.lens.recording import ensure_bus
from himamba.lens.rules import check_upstream
from himamba.lens.unified_trees import is_unified_cache, snapshot_unified
from himamba.observe import subjects
from himamba.observe.snapshot import Snapshot


def take_0511(cache: Any) -> Snapshot:
    """Snapshot a live 0.5.11 cache (and give it its event bus, so a Recorder can follow it)."""
    return ensure_bus(cache, tables_0511).snapshot(lambda: snapshot_0511(cache))


def take_unified(cache: Any) -> Snapshot:
    """Snapshot a live 0.5.23 unified cache (and give it its event bus)."""
    return ensure_bus(cache, tables_unified).snapshot(lambda: snapshot_unified(cache))


subjects.register(is_0511_cache, snapshot=take_0511, invariants=check_upstream)
subjects.register(is_unified_cache, snapshot=take_unified, invariants=check_upstream)

__all__ = ["check_upstream", "snapshot_0511", "snapshot_unified", "take_0511", "take_unified"]
