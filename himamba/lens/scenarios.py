"""The scripts of notebook 10 (three trees, one script), for :func:`himamba.lens.replay.replay_on`.

* :func:`seed_script` — the seed's scenario: a lookup splits ``[1, 2, 3, 4]`` into a stateless
  parent P = ``[1, 2]`` over C = ``[3, 4]``; P is pinned (host pin on the tiered caches, the
  unified tree's own host lock), C is evicted, and the cascade meets P. With ``b1=True`` himamba
  runs with bug B1 switched back on (the cascade deletes the pinned P; the release then fails).
* :func:`b3_script` — two requests on the tiered cache, for B3 (the completing storage prefetch's
  ``_insert_helper_host`` is then called on the live 0.5.11 cache: see the notebook).
* :func:`refresh_script` — PR #31643: a match consumes the state of ``[1, 2, 3, 4]``; 0.5.11
  refreshes the states on the whole matched path, 0.5.23 only the one it consumed.
"""

from __future__ import annotations

CONFIG = {"device": "cpu", "device_kv_tokens": 32, "host_kv_tokens": 64, "device_mamba_slots": 6,
          "host_mamba_slots": 8, "write_policy": "write_through"}
NAMES = {(1, 2): "P", (3, 4): "C"}


def seed_script(b1: bool = False) -> dict:
    """The cascade meets a parent pinned by an in-flight host operation (B1 on with ``b1``)."""
    pin = {"op": "pin", "tokens": [1, 2], "exact": True}
    ops = [{"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "events"}, {"op": "match", "tokens": [1, 2]},
           pin, {"op": "evict", "n": 2}, {"op": "unpin", "k": 0}, {"op": "evict", "n": 2},
           pin, {"op": "evict_host", "n": 2}, {"op": "unpin", "k": 0}, {"op": "evict_host", "n": 2}]
    return {"cache": "tiered", "config": {**CONFIG, "legacy": ["B1"] if b1 else []}, "ops": ops}


def b3_script() -> dict:
    """Two requests; the second is newer than the first."""
    return {"cache": "tiered", "config": CONFIG,
            "ops": [{"op": "request", "tokens": [1, 2, 3, 4]}, {"op": "events"},
                    {"op": "request", "tokens": [5, 6]}, {"op": "events"}]}


def refresh_script() -> dict:
    """States at ``[1, 2]``, ``[1, 2, 3, 4]`` and ``[7, 8]``, then a match of ``[1, 2, 3, 4]``."""
    return {"cache": "device", "config": CONFIG,
            "ops": [{"op": "request", "tokens": [1, 2]}, {"op": "request", "tokens": [1, 2, 3, 4]},
                    {"op": "request", "tokens": [7, 8]}, {"op": "match", "tokens": [1, 2, 3, 4]}]}


def names_in(snapshot) -> dict[int, str]:
    """``{node id: "P" | "C"}`` for the nodes of :data:`NAMES` in a snapshot (by their keys)."""
    return {v.id: NAMES[v.key] for v in snapshot.nodes if v.key in NAMES}
