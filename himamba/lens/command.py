"""``himamba replay SCRIPT --on himamba|sglang-0.5.11|sglang-0.5.23 [--core python|rust]
[--html OUT]``: one script on the tree named, its steps printed, optionally one offline page."""

from __future__ import annotations

from pathlib import Path

from himamba.lens.replay import TREES, replay_on

QUIET = ("lock", "unlock", "op_begin", "op_end")


def replay_command(script_path: Path, tree: str, core: str = "python", html: Path | None = None,
                   force: bool = False) -> int:
    """Run the script at ``script_path`` on ``tree`` (one of :data:`TREES`), print each recorded
    step, write the steps to ``html`` when given; 0 when the run ended cleanly, else 1."""
    from himamba.sim.trace_io import read_json_file
    from himamba.validate import prepare_output_file

    script = read_json_file(script_path, "script")
    out = prepare_output_file(html, force) if html is not None else None
    rep = replay_on(script, tree, core=core)
    steps = [s for s in rep.recorder.steps if s.kind not in QUIET]
    for step in steps:
        print(f"[{step.index}] op {step.op_index} {step.op}: {step.text}")
    if out is not None:
        title = f"himamba replay on {tree}" + (f" ({core} core)" if tree == "sglang-0.5.23" else "")
        rep.recorder.to_html(out, title=title)
        print(f"wrote {out}")
    if rep.failure is None:
        print(f"replayed {len(script['ops'])} operations on {tree}: clean")
        return 0
    print(f"FAILED on {tree}: {rep.failure}")
    return 1


__all__ = ["TREES", "replay_command"]
