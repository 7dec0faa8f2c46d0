"""A fuzzing run: episodes of fresh caches, in order, in this process or shared with workers."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from himamba.errors import InvalidInputError
from himamba.sim.fuzz.generate import episode_length, episode_seed, make_script
from himamba.sim.fuzz.run import FuzzReport, run_script
from himamba.sim.fuzz.shrink import shrink


def fuzz(seed: int = 0, ops: int = 10_000, *, page_size: int = 1, write_policy: str | None = None,
         legacy: Iterable[str] = (), manual_acks: bool = True, cache: str = "tiered",
         integrity_every: int = 1, do_shrink: bool = True, count_events: bool = False,
         episode: int | None = None, scale: int = 1, jobs: int = 1,
         progress: Callable[[int], None] | None = None, copy_engine: str = "auto",
         faults: str | float | None = None) -> FuzzReport:
    """Run ``ops`` random operations in episodes (see the module docstring); stop at the first
    failure and, with ``do_shrink``, shrink it (``report.shrunk``).

    ``report.script`` is the last episode's script (the failing one, when one failed) and
    ``report.failure.step`` indexes into it; ``report.ops_run`` counts the operations of every
    episode up to the failure, so it is the number of operations until the first failure.
    ``report.seconds`` is wall time (script generation and, with jobs, process start-up
    included). ``report.extras`` gives ``episodes`` (how many ran), ``episode`` (the last one's
    number), ``episode_length``, ``nodes`` (mean tree size, sampled every 64 operations) and,
    with ``count_events``, ``events``. ``scale`` multiplies the pools (see
    :func:`default_config`); a legacy profile's pool sizes are not scaled.

    ``jobs > 1`` runs episodes in that many worker processes. The result does not depend on it:
    episodes are independent, and the first failing episode *in episode order* is reported.
    ``progress(i)`` is called with the number of operations done so far, minus one (per
    operation with one job, per episode with several). ``copy_engine`` is passed to every
    script (:func:`make_script`).

    A ``KeyboardInterrupt`` (Ctrl-C) ends the run early instead of propagating: the report has
    ``interrupted`` set and counts the episodes that finished (a failure found before it stays;
    shrinking it is skipped or cut short, leaving ``shrunk`` ``None``). Workers ignore the
    interrupt, so they print nothing; they are stopped with the pool."""
    if ops < 1:
        raise InvalidInputError(f"ops must be at least 1, got {ops}")
    if jobs < 1:
        raise InvalidInputError(f"jobs must be at least 1, got {jobs}")
    length = episode_length(legacy, episode)
    task = _EpisodeTask(seed, page_size, write_policy, tuple(sorted(legacy)), manual_acks, cache, integrity_every,
                        count_events, scale, copy_engine, faults)
    plan = [(number, min(length, ops - start)) for number, start in enumerate(range(0, ops, length))]
    start_time = time.perf_counter()
    total = FuzzReport(0, 0.0, {})
    events: dict[str, int] = {}
    injected: dict[str, int] = {}
    node_samples: list[float] = []
    total.extras["episode"] = -1
    try:
        with contextlib.closing(_episode_reports(task, plan, jobs, progress)) as reports:
            for report in reports:
                total.ops_run += report.ops_run
                for kind, n in report.counts.items():
                    total.counts[kind] = total.counts.get(kind, 0) + n
                for kind, n in report.extras.get("events", {}).items():
                    events[kind] = events.get(kind, 0) + n
                for kind, n in report.extras.get("faults", {}).items():
                    injected[kind] = injected.get(kind, 0) + n
                node_samples.append(report.extras["nodes"] * report.ops_run)
                total.script, total.failure = report.script, report.failure
                total.extras["episode"] = report.extras["episode"]
                if progress is not None and jobs > 1:
                    progress(total.ops_run - 1)
                if report.failure is not None:
                    break
    except KeyboardInterrupt:  # Ctrl-C: what ran so far (whole episodes) is the report
        total.interrupted = True
    total.seconds = time.perf_counter() - start_time
    total.extras.update(episodes=total.extras["episode"] + 1, episode_length=length,
                        nodes=sum(node_samples) / max(1, total.ops_run))
    if count_events:
        total.extras["events"] = events
    if faults:
        total.extras["faults"] = injected
    if total.failure is not None and do_shrink and not total.interrupted:
        try:
            total.shrunk = shrink(total.script, total.failure)
        except KeyboardInterrupt:  # the failure stands; its script stays unshrunk
            total.interrupted = True
    return total


@dataclass(frozen=True)
class _EpisodeTask:
    """Everything an episode needs besides its number and length (picklable, for workers)."""

    seed: int
    page_size: int
    write_policy: str | None
    legacy: tuple[str, ...]
    manual_acks: bool
    cache: str
    integrity_every: int
    count_events: bool
    scale: int
    copy_engine: str = "auto"
    faults: str | float | None = None

    def script(self, number: int, n: int) -> dict:
        script = make_script(episode_seed(self.seed, number), n, page_size=self.page_size,
                             write_policy=self.write_policy, legacy=self.legacy, manual_acks=self.manual_acks,
                             cache=self.cache, scale=self.scale, copy_engine=self.copy_engine)
        if self.faults:
            script["config"]["faults"] = f"{self.faults},seed={number}" if "=" not in str(self.faults) else self.faults
        script["episode"] = number
        return script

    def __call__(self, item: tuple[int, int], progress: Callable[[int], None] | None = None) -> FuzzReport:
        number, n = item
        report = run_script(self.script(number, n), self.integrity_every, progress, count_events=self.count_events,
                            sample_nodes=64)
        report.extras["episode"] = number
        return report


def _episode_reports(task: _EpisodeTask, plan: list[tuple[int, int]], jobs: int,
                     progress: Callable[[int], None] | None):
    """The episodes' reports in episode order; the caller stops at the first failure.

    With several jobs, ``jobs - 1`` worker processes and this one share the episodes: each
    worker has one episode queued behind the one it runs (so it never waits for this process),
    and this process runs the next unstarted episode whenever the one due next is not finished.
    Any episode may run anywhere; only the order of the reports is fixed."""
    if jobs == 1 or len(plan) == 1:
        done = 0
        for item in plan:
            step = None if progress is None else (lambda i, done=done: progress(done + i))
            report = task(item, step)
            done += report.ops_run
            yield report
        return
    import multiprocessing

    # spawn, not fork: a forked copy of a process that already ran torch may hang in its thread pool
    with _workers_ignoring_interrupts(jobs - 1) as pool:
        remote: dict[int, multiprocessing.pool.AsyncResult] = {}
        finished: dict[int, FuzzReport] = {}
        started = 0
        for due in range(len(plan)):
            while due not in finished:
                while started < len(plan) and sum(not r.ready() for r in remote.values()) < 2 * (jobs - 1):
                    remote[started] = pool.apply_async(_run_remote, (task, plan[started]))
                    started += 1
                if due in remote and (remote[due].ready() or started == len(plan)):
                    report = remote.pop(due).get()
                    if report.script is None and due == len(plan) - 1:  # made again, not sent
                        report.script = task.script(*plan[due])
                    finished[due] = report
                elif started < len(plan):
                    finished[started] = task(plan[started])
                    started += 1
            yield finished.pop(due)


def _run_remote(task: _EpisodeTask, item: tuple[int, int]) -> FuzzReport:
    """Run one episode in a worker. Only a failing episode's script is sent back: the caller can
    make a clean one again from its seed when it needs it (the last episode's)."""
    report = task(item)
    if report.failure is None:
        report.script = None
    return report


@contextlib.contextmanager
def _workers_ignoring_interrupts(n: int):
    """A spawn pool of ``n`` workers that ignore SIGINT: a Ctrl-C reaches the whole process
    group, and only this process handles it. The workers are started while SIGINT is ignored
    here (a new Python keeps an ignored SIGINT ignored, so a worker still importing prints no
    traceback); a Ctrl-C in the few milliseconds that takes is ignored too."""
    import multiprocessing

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        pool = multiprocessing.get_context("spawn").Pool(n, initializer=_init_worker)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    with pool:
        yield pool


def _init_worker() -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)

