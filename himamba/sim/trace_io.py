"""JSON-lines import and export of workloads, including the shared trace format.

Two line formats, told apart per line:

* **trace** (``../shared/bench/multiturn_trace.py``): ``{"prompt_len": int, "tokens": [...]}``
  where ``tokens`` is prompt + output and ``1 <= prompt_len <= len(tokens)``;
* **native**: ``{"prompt": [...], "output": [...] | "output_len": int, "session": int?,
  "rid": int?}`` (``output_len`` draws the output tokens deterministically).

:func:`load_jsonl` rejects the first malformed line with a :class:`TraceFormatError` (a
``ValueError``) whose message names the file and line and says what is wrong: not JSON (nested
too deeply, or holding a number too long to read), not UTF-8 text, not an object, a missing
key, a token that is not a non-negative int (bools and floats included), a ``prompt_len`` out of
range. Blank lines are skipped; a file without requests is an error. :func:`read_json_file`
reads one JSON document (a script) with the same care.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from himamba.errors import InvalidInputError
from himamba.sim.request import SimRequest, drawn_output
from himamba.validate import MAX_REQUEST_TOKENS, check_token_ids

FORMATS = ("native", "trace")


class TraceFormatError(InvalidInputError):
    """A workload file has a malformed line (the message names the file and the line)."""


def json_lines(path: str | Path) -> Iterator[tuple[str, object]]:
    """``("file:line", parsed JSON)`` for every non-blank line of a JSON-lines file; a line that
    is not JSON, or not UTF-8 text, raises :class:`TraceFormatError` naming the file and line."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                yield where, parse_json(line, where)
        except UnicodeDecodeError:
            raise TraceFormatError(f"{path}:{lineno + 1}: not UTF-8 text (is it a JSON-lines file?)") from None


def parse_json(text: str, where: str, first_line: int | None = None) -> object:
    """``text`` parsed as JSON, or :class:`TraceFormatError` starting with ``where`` ("file:line"):
    not JSON, nested too deeply for the parser (no :class:`RecursionError` escapes), or an
    integer too long for Python to read (more than 4300 digits). With ``first_line`` (``text``
    is a whole file whose first line has that number), ``where`` is a file name and the message
    adds the line of the fault where it is known."""
    def at(line: int | None) -> str:
        return where if first_line is None or line is None else f"{where}:{first_line + line - 1}"

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{at(exc.lineno)}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise TraceFormatError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as exc:  # an int literal past sys.get_int_max_str_digits()
        digits = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
        line = text.count("\n", 0, digits.start()) + 1 if digits else None
        raise TraceFormatError(f"{at(line)}: a number too long to read ({str(exc).split(':')[0]})") from None


def read_json_file(path: str | Path, what: str = "JSON file") -> object:
    """The JSON document in file ``path``; :class:`TraceFormatError` naming the file (and the
    line, where known) when it is not UTF-8 text (a pickle, say), not JSON, nested too deeply or
    holds a number too long to read. ``what`` names the file's role in the message."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TraceFormatError(f"{path}:{line}: not UTF-8 text (byte {exc.start}): a {what} is JSON text") from None
    return parse_json(text, str(path), first_line=1)


def load_jsonl(path: str | Path) -> list[SimRequest]:
    """Read a workload written in either line format; requests are numbered by line order."""
    out: list[SimRequest] = []
    for where, rec in json_lines(path):
        out.append(_parse(rec, where, len(out)))
    if not out:
        raise TraceFormatError(f"{path}: no requests in the file")
    return out


def load_token_trace(path: str | Path) -> list[tuple[int, list[int]]]:
    """Read the shared trace format as ``(prompt_len, tokens)`` pairs (the replay protocol's input;
    lighter than :func:`load_jsonl`, which builds requests). Same checks and messages."""
    out: list[tuple[int, list[int]]] = []
    for where, rec in json_lines(path):
        if not isinstance(rec, dict) or not ("prompt_len" in rec or "tokens" in rec):
            raise TraceFormatError(f"{where}: not a trace record (prompt_len, tokens)")
        req = _parse_trace(rec, where, len(out))
        out.append((req.prompt_len, req.tokens))
    if not out:
        raise TraceFormatError(f"{path}: no requests in the file")
    return out


def save_jsonl(requests: Iterable[SimRequest], path: str | Path, format: str = "native") -> Path:
    """Write ``requests`` one per line, in ``"native"`` (keeps sessions and ids) or ``"trace"``
    format (the shared one: ``prompt_len`` and ``tokens`` only). Returns the path."""
    if format not in FORMATS:
        raise InvalidInputError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for r in requests:
            if format == "trace":
                if r.prompt_len == 0:
                    raise InvalidInputError(f"request {r.rid} has an empty prompt: the trace format needs prompt_len >= 1")
                rec = {"prompt_len": r.prompt_len, "tokens": r.tokens}
            else:
                rec = {"prompt": list(r.prompt), "output": list(r.output), "rid": r.rid}
                if r.session is not None:
                    rec["session"] = r.session
            fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
    return path


def _parse(rec: object, where: str, index: int) -> SimRequest:
    if not isinstance(rec, dict):
        raise TraceFormatError(f"{where}: a request line must be a JSON object, got {type(rec).__name__}")
    if "prompt_len" in rec or "tokens" in rec:
        return _parse_trace(rec, where, index)
    if "prompt" in rec:
        return _parse_native(rec, where, index)
    raise TraceFormatError(f"{where}: neither a trace record (prompt_len, tokens) nor a native one (prompt, output)")


def _parse_trace(rec: dict, where: str, index: int) -> SimRequest:
    for key in ("prompt_len", "tokens"):
        if key not in rec:
            raise TraceFormatError(f"{where}: trace record lacks {key!r}")
    tokens = _tokens(rec["tokens"], "tokens", where)
    plen = rec["prompt_len"]
    if type(plen) is not int:
        raise TraceFormatError(f"{where}: prompt_len must be an int, got {plen!r}")
    if not 1 <= plen <= len(tokens):
        raise TraceFormatError(f"{where}: prompt_len {plen} is out of range 1..{len(tokens)} (the number of tokens)")
    return SimRequest(tuple(tokens[:plen]), tuple(tokens[plen:]), None, index)


def _parse_native(rec: dict, where: str, index: int) -> SimRequest:
    prompt = _tokens(rec["prompt"], "prompt", where)
    session = rec.get("session")
    if session is not None and type(session) is not int:
        raise TraceFormatError(f"{where}: session must be an int or null, got {session!r}")
    rid = rec.get("rid", index)
    if type(rid) is not int:
        raise TraceFormatError(f"{where}: rid must be an int, got {rid!r}")
    if "output" in rec:
        return SimRequest(tuple(prompt), tuple(_tokens(rec["output"], "output", where)), session, rid)
    n = rec.get("output_len", 0)
    if type(n) is not int or not 0 <= n <= MAX_REQUEST_TOKENS:
        raise TraceFormatError(f"{where}: output_len must be a non-negative int, at most {MAX_REQUEST_TOKENS}, got {n!r}")
    return SimRequest(tuple(prompt), drawn_output(rid, len(prompt), n), session, rid)


def _tokens(value: object, key: str, where: str) -> list[int]:
    if not isinstance(value, list):
        raise TraceFormatError(f"{where}: {key!r} must be a list of token ids, got {type(value).__name__}")
    return check_token_ids(value, f"{where}: {key}", TraceFormatError)
