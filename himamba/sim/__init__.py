"""Floor 4: driving a cache — the randomized fuzzer (and, later, workloads and metrics)."""

from himamba.sim.fuzz import FuzzFailure, FuzzReport, fuzz, generate_ops, replay, shrink

__all__ = ["FuzzFailure", "FuzzReport", "fuzz", "generate_ops", "replay", "shrink"]
