"""The fuzzer: random operation scripts, checked after every step, shrunk when they fail.

``fuzz(seed=..., ops=N, legacy=...)`` runs N random operations (see :mod:`himamba.sim.ops`) over
small caches, with ``check_invariants`` (and, every ``integrity_every`` steps,
``check_integrity``) after each operation. The N operations are cut into *episodes*: each episode
starts a fresh cache, with pool sizes and operations drawn from its own seed. Restarts are a
classic fuzzing device; here they matter because most legacy bugs need a young tree with little
state pinned (a long run settles into states where they no longer fire), while long episodes
reach deep states. On the first failure the failing episode's script is shrunk to a minimal one
that still fails the same way (delta debugging). Scripts are plain JSON that :func:`replay` runs
again.

The package is split by job: :mod:`~himamba.sim.fuzz.generate` makes scripts,
:mod:`~himamba.sim.fuzz.run` runs and checks them, :mod:`~himamba.sim.fuzz.shrink` reduces a
failing one, and :mod:`~himamba.sim.fuzz.parallel` cuts a run into episodes and shares them
between processes.
"""

from himamba.sim.fuzz.generate import (
    DEFAULT_EPISODE,
    STRESS_WEIGHTS,
    TARGET_PROFILES,
    default_config,
    episode_length,
    episode_seed,
    generate_ops,
    make_script,
)
from himamba.sim.fuzz.parallel import fuzz
from himamba.sim.fuzz.run import (
    FuzzFailure,
    FuzzReport,
    check_script,
    make_cache,
    replay,
    run_ops_recorded,
    run_script,
)
from himamba.sim.fuzz.shrink import shrink

__all__ = [
    "DEFAULT_EPISODE", "STRESS_WEIGHTS", "TARGET_PROFILES", "FuzzFailure", "FuzzReport", "check_script", "default_config",
    "episode_length", "episode_seed", "fuzz", "generate_ops", "make_cache", "make_script", "replay",
    "run_ops_recorded", "run_script", "shrink",
]
