"""Differential testing against SGLang 0.5.11 itself.

``make differential`` installs SGLang 0.5.11 (``--no-deps``, plus the pinned CPU set in
``requirements/sglang-0.5.11-cpu.txt``); :func:`run_differential` (``himamba differential`` on
the command line) then drives upstream's own ``MambaRadixCache`` and ``HiMambaRadixCache``,
unmodified, next to himamba's, and compares them after every operation.

* :mod:`~himamba.differential.standins` — the stand-ins upstream needs on a CPU (each says so);
* :mod:`~himamba.differential.upstream` — building upstream's caches over small pools;
* :mod:`~himamba.differential.sides` — one interface over both caches and a neutral snapshot;
* :mod:`~himamba.differential.runner` — scripts, comparison, shrinking, explanation.

Importing this package imports nothing of SGLang; :func:`upstream_available` says whether it is
installed.
"""

from himamba.differential.runner import (
           DifferentialReport,
           Divergence,
           compare_script,
           run_differential,
)
from himamba.differential.upstream import SGLANG_VERSION, UpstreamUnavailable, upstream_available

__all__ = ["SGLANG_VERSION", "DifferentialReport", "Divergence", "UpstreamUnavailable", "compare_script",
           "run_differential", "upstream_available"]
