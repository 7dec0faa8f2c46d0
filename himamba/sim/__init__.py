"""Floor 4: driving a cache — the request engine, workloads, metrics, sweeps and the fuzzer.

``sweep`` imports dask only when called, and the plot helpers import matplotlib only when
called, so importing this package stays light.
"""

from himamba.sim.engine import Engine, EngineStall
from himamba.sim.fuzz import FuzzFailure, FuzzReport, fuzz, generate_ops, replay, shrink
from himamba.sim.metrics import (
    STEP_COLUMNS,
    SimMetrics,
    plot_evictions,
    plot_hits,
    plot_occupancy,
    plot_sweep,
    plot_transfers,
)
from himamba.sim.probe import EvictionProbe
from himamba.sim.request import PackedWorkload, SimRequest, describe, pack
from himamba.sim.sweep import expand_grid, sweep
from himamba.sim.trace_io import TraceFormatError, load_jsonl, save_jsonl
from himamba.sim.workload import (
    agentic_tool_loops,
    multi_turn_chat,
    random_requests,
    shared_system_prompts,
)

__all__ = [
    "STEP_COLUMNS",
    "Engine",
    "EngineStall",
    "EvictionProbe",
    "FuzzFailure",
    "FuzzReport",
    "PackedWorkload",
    "SimMetrics",
    "SimRequest",
    "TraceFormatError",
    "agentic_tool_loops",
    "describe",
    "expand_grid",
    "fuzz",
    "generate_ops",
    "load_jsonl",
    "multi_turn_chat",
    "pack",
    "plot_evictions",
    "plot_hits",
    "plot_occupancy",
    "plot_sweep",
    "plot_transfers",
    "random_requests",
    "replay",
    "save_jsonl",
    "shared_system_prompts",
    "shrink",
    "sweep",
]
