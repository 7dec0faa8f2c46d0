"""The ``himamba`` command line: demo, fuzz, replay and bench.

    himamba demo OUT_DIR            B1 scenario on and off, side by side: OUT_DIR/index.html
    himamba fuzz --legacy B1        random operations until an invariant breaks; prints the
                                    shrunk script; exit 1 on a failure, 0 on a clean run
    himamba replay SCRIPT.json      run a saved script again, printing its steps
                                    (--on sglang-0.5.11|sglang-0.5.23: on SGLang's own cache)
    himamba trace stats --format mooncake FILE
                                    sizes and reuse ceilings of a trace, one JSON line
    himamba differential --seqs N   the same scripts on himamba and on SGLang 0.5.11, compared
                                    after every operation; exit 1 on a divergence
    himamba bench replay|policies|transfer|render|fuzz|sweep [ARGS...]
                                    (replay and policies ship with the package; the others
                                    run from a source checkout's bench/ folder)

Errors in what you pass print one line (``himamba: error: ...``; a file's faults name its file
and line) and exit with status 2. Ctrl-C ends a command with status 130 and one line on stderr;
``fuzz`` first prints its report of the episodes that finished (its workers ignore the interrupt
and are stopped). Output files are never written through a symbolic link.

Size: over 300 lines because one argument parser for every command, whose help texts are the
commands' documentation, and one small function per command.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import runpy
import sys
import tempfile
from pathlib import Path

from himamba.cache.legacy import LEGACY_BUGS, normalize_legacy
from himamba.errors import HiMambaError
from himamba.sim.fuzz import DEFAULT_EPISODE
from himamba.validate import prepare_output_dir, prepare_output_file, write_text_no_follow

BENCHES = ("replay", "policies", "transfer", "render", "fuzz", "sweep")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="himamba", description="Explore SGLang's tiered Mamba radix cache.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="replay bug B1 with the switch on and off; write one offline HTML page",
                          description="Run the B1 scenario (reference section 5) with the legacy switch on and off and "
                                      "write OUT_DIR/index.html: one self-contained page showing both recordings side "
                                      "by side from the first step where they differ (arrow keys step).")
    demo.add_argument("out_dir", type=Path, help="folder to write (created if missing; refused if not empty)")
    demo.add_argument("--force", action="store_true", help="write into a folder that is not empty (files replaced)")

    fuzz = sub.add_parser("fuzz", help="random operations with every check; shrink the first failure",
                          description="Run random operations against a cache (tiered by default) in episodes, each "
                                      "on a fresh cache, checking every invariant after every operation. On the first "
                                      "failure, shrink it, print the shrunk script as JSON and exit 1; exit 0 when the "
                                      "run was clean.")
    fuzz.add_argument("--legacy", action="append", default=[], metavar="NAME",
                      help="turn a legacy bug back on (id or alias; repeatable): " + ", ".join(LEGACY_BUGS))
    fuzz.add_argument("--ops", type=int, default=10_000, help="operations to run (default 10000)")
    fuzz.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fuzz.add_argument("--policy", default=None,
                      help="write policy (default: write_through, or what the single legacy switch needs)")
    fuzz.add_argument("--page-size", type=int, default=1, help="page size (default 1)")
    fuzz.add_argument("--cache", choices=("tiered", "device"), default="tiered", help="which cache (default tiered)")
    fuzz.add_argument("--copy-engine", choices=("auto", "sync", "deferred"), default="auto",
                      help="how transfers move bytes on the CPU: sync (at once) or deferred (CUDA's timing: "
                           "bytes land at completion, poison until then); default auto = sync on the CPU")
    fuzz.add_argument("--faults", default=None, metavar="RATE",
                      help="inject copy and allocation faults at this rate (or 'kind=rate,...': copy_issue, "
                           "copy_land, alloc_raise, alloc_short; see himamba/memory/faults.py); tiered cache")
    fuzz.add_argument("--episode", type=int, default=None, metavar="N",
                      help="operations per episode: each starts a fresh cache with its own pool sizes "
                           f"(default {DEFAULT_EPISODE}, or what the single legacy switch needs)")
    fuzz.add_argument("--scale", type=int, default=1,
                      help="multiply every pool (bigger trees: about 12 nodes at 1, about 100 at 14; default 1)")
    fuzz.add_argument("--integrity-every", type=int, default=1, metavar="K",
                      help="also check every stored byte after every K-th operation (default 1; invariants are "
                           "checked after every operation regardless)")
    fuzz.add_argument("--jobs", type=int, default=1,
                      help="processes running episodes side by side: this one and N-1 workers (default 1; the result is the same)")
    fuzz.add_argument("--out", type=Path, default=None, help="also write the shrunk script to this file")
    fuzz.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    fuzz.add_argument("--no-progress", action="store_true", help="no progress bar")

    replay = sub.add_parser("replay", help="run a saved script again and print its steps",
                            description="Run a script written by `himamba fuzz --out` (or by hand) and print each "
                                        "recorded step; exit 1 if it fails.")
    replay.add_argument("script", type=Path, help="JSON script file")
    replay.add_argument("--svg", type=Path, default=None, metavar="DIR",
                        help="write an SVG of every step into this folder (refused if not empty)")
    replay.add_argument("--force", action="store_true", help="write into a --svg folder that is not empty")
    replay.add_argument("--on", default=None, choices=("himamba", "sglang-0.5.11", "sglang-0.5.23"),
                        help="run on himamba's model or on SGLang's own cache (0.5.23 in its own environment)")
    replay.add_argument("--core", default="python", choices=("python", "rust"), help="SGLang 0.5.23's tree core")
    replay.add_argument("--html", type=Path, default=None, metavar="OUT", help="write the steps to one offline page")

    diff = sub.add_parser("differential", help="compare himamba with SGLang 0.5.11 operation by operation",
                          description="Apply the same seeded operation scripts to himamba and to SGLang 0.5.11's own "
                                      "caches (installed by `make differential`), compare the result and the whole state "
                                      "after every operation, shrink each divergence to a minimal script and name the "
                                      "switches that explain it. Prints `agree K/N ops`; exits 1 on a divergence.")
    diff.add_argument("--seqs", type=int, default=60, help="sequences (scripts) to run (default 60)")
    diff.add_argument("--ops", type=int, default=100, help="operations per sequence (default 100)")
    diff.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    diff.add_argument("--cache", choices=("device", "tiered", "both"), default="both",
                      help="which cache (default both: even sequences device, odd ones tiered)")
    diff.add_argument("--legacy", action="append", default=[], metavar="NAME",
                      help="himamba's legacy switches or profile (repeatable), e.g. sglang-0.5.11 (agreement is "
                           "expected) or none (the defaults: divergences name their switch)")
    diff.add_argument("--no-shrink", action="store_true", help="report divergences unshrunk (faster)")
    diff.add_argument("--out", type=Path, default=None,
                      help="write the (shrunk) divergent scripts to this JSON file (a link there is not followed)")
    diff.add_argument("--force", action="store_true", help="replace the --out file if it exists")
    diff.add_argument("--no-progress", action="store_true", help="no progress bar")

    trace = sub.add_parser("trace", help="look at a trace file",
                           description="Figures about a trace file without replaying it.")
    trace_sub = trace.add_subparsers(dest="trace_command", required=True, metavar="WHAT")
    stats = trace_sub.add_parser("stats", help="requests, prompt blocks and the reuse ceilings as one JSON line",
                                 description="Read a Mooncake trace (block mode) and print one JSON line: requests, "
                                             "prompt_blocks, prompt_tokens and the reuse ceilings of an unbounded "
                                             "cache (ceiling_attention, ceiling_sequence_end, ceiling_page_aligned, "
                                             "ceiling_branch_point; *_tokens: weighted by tokens).")
    stats.add_argument("--format", choices=("mooncake",), default="mooncake", help="the trace format (mooncake)")
    stats.add_argument("file", type=Path, help="JSON-lines trace")

    bench = sub.add_parser("bench", help="run a benchmark",
                           description="Run one of the benchmarks (replay and policies ship with the package; the others run "
                                       "from the repository's bench/ folder); arguments after the name go to it.")
    bench.add_argument("name", choices=BENCHES, help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (see its --help)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        status = {"demo": _demo, "fuzz": _fuzz, "replay": _replay, "trace": _trace, "differential": _differential,
                  "bench": _bench}[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return status
    except BrokenPipeError:
        # whoever read the output stopped reading (`| head`): end quietly, as a program that
        # was sent SIGPIPE does (status 128 + 13), and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # Ctrl-C: one line, status 128 + SIGINT, as a shell reports it
        print("himamba: interrupted", file=sys.stderr)
        return 130
    except (HiMambaError, ValueError, OSError) as exc:
        print(f"himamba: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """An error's text on one line (a message quoting user input may hold line breaks)."""
    return " ".join(str(exc).split("\n")) or type(exc).__name__


# -- demo ----------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> int:
    from himamba.sim.scenarios import b1_replay
    from himamba.viz.compare import compare

    out = prepare_output_dir(args.out_dir, args.force)
    runs = {}
    for legacy in (True, False):
        run = runs[legacy] = b1_replay(legacy)
        title = "B1 switch on (old code)" if legacy else "B1 fixed (default)"
        ending = f"ended with {run.error!r}" if run.error else "ended cleanly"
        print(f"{title}: {len(run.recorder.steps)} steps, {ending}")
    on, off = runs[True], runs[False]
    cmp = compare(on.recorder, off.recorder, labels=("B1 switch on (old code)", "B1 fixed (default)"),
                  names={**on.names, **off.names})
    crash = f" at aligned step {cmp.failures[0][0] + 1}, where this page opens (◀ prev steps back)" if cmp.failures else ""
    ending = (f"<p>With the switch on the run fails{crash}: <code>{html.escape(repr(on.error))}</code>; "
              f"with the fix it ends cleanly. Nodes are named as in the reference: P = [1, 2] "
              f"(backed up, no state, pinned by its storage backup), C = [3, 4], its only child.</p>")
    with tempfile.TemporaryDirectory() as scratch:  # the page is written where no link can be planted
        draft = cmp.to_html(Path(scratch) / "index.html", title="Bug B1: the tombstone cascade and a host-pinned node",
                            open_at_failure=True)
        text = draft.read_text(encoding="utf-8")
    text = text.replace("<div class=\"hm-controls\">", ending + "<div class=\"hm-controls\">", 1)
    page = write_text_no_follow(out / "index.html", text)
    print(f"wrote {page} ({len(cmp.rows())} aligned steps from the first difference)")
    return 0


def _injected(report) -> str:
    counts = report.extras.get("faults", {})
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none injected"


def _progress_bar(enabled: bool, total: int, unit: str):
    """A progress bar on stderr (tqdm), or ``None`` when not ``enabled``."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, leave=False)


# -- fuzz ----------------------------------------------------------------------------------------
def _fuzz(args: argparse.Namespace) -> int:
    from himamba.sim.fuzz import fuzz

    for flag, value in (("--ops", args.ops), ("--page-size", args.page_size), ("--scale", args.scale),
                        ("--jobs", args.jobs), ("--integrity-every", args.integrity_every), ("--episode", args.episode)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    legacy = normalize_legacy(args.legacy)
    if args.out is not None:
        prepare_output_file(args.out, args.force)  # refused before the run, not after it
    bar = _progress_bar(not args.no_progress, args.ops, "op")
    progress = None if bar is None else (lambda i: bar.update(i + 1 - bar.n))
    try:
        report = fuzz(seed=args.seed, ops=args.ops, page_size=args.page_size, write_policy=args.policy,
                      legacy=legacy, cache=args.cache, integrity_every=args.integrity_every, episode=args.episode,
                      scale=args.scale, jobs=args.jobs, progress=progress, copy_engine=args.copy_engine,
                      faults=args.faults)
    finally:
        if bar is not None:
            bar.close()
    x = report.extras
    print(f"{report.ops_run} operations in {report.seconds:.1f} s: {report.ops_per_s:,.0f} ops/s with invariants "
          f"checked after every operation and integrity after every {args.integrity_every}"
          + (f" ({args.jobs} jobs)" if args.jobs > 1 else ""))
    config = report.script["config"] if report.script is not None else {}  # None: no episode finished
    print(f"{x['episodes']} episode(s) of up to {x['episode_length']} operations; trees of {x['nodes']:.0f} nodes on "
          f"average; legacy={sorted(legacy) or 'none'}, policy={config.get('write_policy', args.policy or 'default')}, "
          f"copy engine={config.get('copy_engine', args.copy_engine)}"
          + (f", faults={args.faults} ({_injected(report)})" if args.faults else ""))
    stopped = 130 if report.interrupted else None  # Ctrl-C: the partial report, then status 130
    if report.failure is None:
        if stopped:
            print("interrupted: no invariant violation, no integrity error in the episodes that finished")
            print("himamba: interrupted; partial report above", file=sys.stderr)
            return stopped
        print("clean: no invariant violation, no integrity error")
        return 0
    f = report.failure
    print(f"FAILED after {report.ops_run} operations (episode {x['episode']}, its operation {f.step + 1}): "
          f"{f.kind}: {f.message}")
    shrunk = report.shrunk
    if shrunk is None:  # interrupted while shrinking: the failing episode's whole script
        shrunk = report.script
        print(f"not shrunk (interrupted); the failing script, {len(shrunk['ops'])} operations:")
    else:
        print(f"shrunk to {len(shrunk['ops'])} operations:")
    print(json.dumps(shrunk, indent=1))
    if args.out is not None:
        write_text_no_follow(args.out, json.dumps(shrunk, indent=1))
        print(f"wrote {args.out}")
    if stopped:
        print("himamba: interrupted; partial report above", file=sys.stderr)
        return stopped
    return 1


# -- differential --------------------------------------------------------------------------------
def _differential(args: argparse.Namespace) -> int:
    for flag, value in (("--seqs", args.seqs), ("--ops", args.ops)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    legacy = normalize_legacy([name for name in args.legacy if name != "none"])
    if args.out is not None:
        prepare_output_file(args.out, args.force)  # refused before the run (and SGLang's import), not after
    from himamba.differential import run_differential

    bar = _progress_bar(not args.no_progress, args.seqs, "seq")
    progress = None if bar is None else (lambda: bar.update(1))
    try:
        report = run_differential(seqs=args.seqs, ops=args.ops, seed=args.seed, cache=args.cache, legacy=legacy,
                                  do_shrink=not args.no_shrink, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    for divergence in report.divergences:
        print(divergence.describe())
        if divergence.shrunk is not None:
            print(f"  shrunk to {len(divergence.shrunk['ops'])} operations: {json.dumps(divergence.shrunk['ops'])}")
    print(f"legacy={sorted(legacy) or 'none'}")
    print(report.summary())
    if args.out is not None:
        scripts = [d.shrunk or d.script for d in report.divergences]
        write_text_no_follow(args.out, json.dumps(scripts, indent=1))
        print(f"wrote {args.out}")
    return 1 if report.divergences else 0


# -- replay --------------------------------------------------------------------------------------
def _replay(args: argparse.Namespace) -> int:
    from himamba.observe.recorder import Recorder
    from himamba.sim.fuzz import check_script, make_cache, run_ops_recorded
    from himamba.sim.trace_io import read_json_file

    if args.on is not None or args.html is not None:  # the lens: one script, three trees
        from himamba.lens.command import replay_command

        return replay_command(args.script, args.on or "himamba", args.core, args.html, args.force)
    script = read_json_file(args.script, "script")
    check_script(script)
    if args.svg is not None:
        prepare_output_dir(args.svg, args.force)
    cache = make_cache(script)
    rec = Recorder(cache, skip={"lock", "unlock", "op_begin", "op_end"})
    failure = run_ops_recorded(cache, script["ops"], rec)
    for step in rec.steps:
        print(f"[{step.index}] op {step.op_index} {step.op}: {step.text}")
    if args.svg is not None:
        from himamba.viz.graph import to_svg

        for step in rec.steps:
            write_text_no_follow(args.svg / f"step_{step.index:03d}.svg", to_svg(step))
        print(f"wrote {len(rec.steps)} SVG files to {args.svg}")
    if failure is None:
        print(f"replayed {len(script['ops'])} operations: clean")
        return 0
    print(f"FAILED at operation {failure.step + 1}: {failure.kind}: {failure.message}")
    return 1


# -- trace ---------------------------------------------------------------------------------------
def _trace(args: argparse.Namespace) -> int:
    from himamba.sim.mooncake import load_mooncake, stats

    print(json.dumps(stats(load_mooncake(args.file))))
    return 0


# -- bench ---------------------------------------------------------------------------------------
def _bench(args: argparse.Namespace) -> int:
    if args.name in ("replay", "policies"):
        from himamba.sim import bench_policies, bench_replay

        try:
            return (bench_replay if args.name == "replay" else bench_policies).main(args.args)
        except SystemExit as exc:  # argparse's own --help / usage errors
            return int(exc.code or 0)
    path = Path(__file__).resolve().parents[1] / "bench" / f"{args.name}.py"
    if not path.exists():
        raise ValueError(f"benchmark {path} not found (run from a source checkout of himamba)")
    sys.argv = [str(path), *args.args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
