#!/usr/bin/env python3
"""Run the bad-input catalogue (tests/bad_inputs.py) and print what each class of input gets.

    python bench/bad_input.py [--timeout 5] [--json]

For every case, one outcome:

* ``ok`` — a clear project error (a ValueError with a sentence), the whole state unchanged,
  invariants and integrity clean; for the command line, one ``himamba: error:`` line naming what
  the case asks (a file and line, say), or status 130 after a Ctrl-C with a partial report; for a
  fault or a hostile output (``tests/fault_cases.py``), the error and the state the case names
  (as before the operation, or the named state a fault leaves), invariants and integrity clean;
* ``unclear`` — some other exception, a project error without a sentence, or a command-line
  message that misses what it must name;
* ``silent`` — accepted: no error;
* ``corrupt`` — invariants or integrity fail afterwards, or an error was raised after the state
  had changed (a change half done);
* ``crash`` — the command line ended in a traceback (an exception escaped it);
* ``insecure`` — a file outside the output folder was written (a link was followed);
* ``hang`` — still running after ``--timeout`` seconds; ``setup failed`` — the code measured
  lacks what the case sets up.

With ``PYTHONPATH`` pointing at another checkout it measures that code with the same cases (the
figures before a change: ``git archive`` a commit into a folder and point ``PYTHONPATH`` there).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

OUTCOMES = ("ok", "unclear", "silent", "corrupt", "crash", "insecure", "hang", "setup failed")


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout


def classify(case, timeout: float) -> tuple[str, str]:
    """(outcome, the error's text) of one case."""
    from bad_inputs import Crash, Insecure
    from fingerprint import fingerprint

    import himamba as hm

    with tempfile.TemporaryDirectory() as tmp:
        try:
            cache, call, requests, *rest = case.build(Path(tmp))
        except Exception as exc:  # the old code may lack what a case sets up
            return "setup failed", f"{type(exc).__name__}: {exc}"
        after = rest[0] if rest else None
        named = rest[1] if len(rest) > 1 else None  # the state a fault or a hostile output must leave
        before = fingerprint(cache, *requests) if cache is not None else None
        signal.setitimer(signal.ITIMER_REAL, timeout)
        error: BaseException | None = None
        try:
            call()
        except _Timeout:
            return "hang", ""
        except BaseException as exc:  # noqa: BLE001 - what the call raised is the measurement
            error = exc
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        unchanged = corrupted = False
        if cache is not None:
            try:
                corrupted = bool(hm.check_invariants(cache) or hm.check_integrity(cache))
            except Exception:  # the checks themselves cannot read the state any more
                corrupted = True
            unchanged = fingerprint(cache, *requests) == before
        if after is not None:
            try:
                after()
                unchanged = True
            except Insecure:
                return "insecure", f"{type(error).__name__}: {error}" if error else ""
            except AssertionError:
                corrupted = True
        elif cache is None:
            unchanged = True
        text = "" if error is None else f"{type(error).__name__}: {error}"
        if corrupted:
            return "corrupt", text
        if named is not None:
            from fault_cases import WrongError

            try:
                named(error)
            except WrongError as exc:
                return "unclear", f"{text} ({exc})".strip()
            except AssertionError as exc:
                return "corrupt", f"{text} ({exc})".strip()
            return "ok", text
        if isinstance(error, Crash):
            return "crash", text
        if error is None or (isinstance(error, SystemExit) and not error.code):
            return "silent", text
        if not unchanged:
            return "corrupt", text
        if isinstance(error, hm.HiMambaError) and isinstance(error, ValueError) and len(str(error)) >= 15:
            return "ok", text
        return "unclear", text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds before a call counts as a hang")
    ap.add_argument("--json", action="store_true", help="print every case's outcome as JSON lines too")
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    import contextlib
    import io

    from bad_inputs import CASES

    table: dict[str, Counter] = {}
    for case in CASES:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            outcome, text = classify(case, args.timeout)
        table.setdefault(case.klass, Counter())[outcome] += 1
        if args.json:
            print(json.dumps({"class": case.klass, "case": case.name, "outcome": outcome, "error": text[:200]}))
    import himamba

    print(f"himamba from {Path(himamba.__file__).parent}")
    width = {o: max(8, len(o)) for o in OUTCOMES}
    print(f"{'class':16} {'inputs':>6} " + " ".join(f"{o:>{width[o]}}" for o in OUTCOMES))
    total = Counter()
    for klass, counts in table.items():
        total.update(counts)
        print(f"{klass:16} {sum(counts.values()):6d} " + " ".join(f"{counts[o]:{width[o]}d}" for o in OUTCOMES))
    print(f"{'all':16} {sum(total.values()):6d} " + " ".join(f"{total[o]:{width[o]}d}" for o in OUTCOMES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
