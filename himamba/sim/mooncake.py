"""Mooncake traces in block mode: the reader, the checkpoint policies' keys, and hit-rate ceilings.

A Mooncake trace (FAST'25 release) has one JSON object per line: ``timestamp`` (ms since the
first request), ``input_length`` and ``output_length`` (tokens) and ``hash_ids``, one id per
block of :data:`BLOCK_TOKENS` prompt tokens (equal ids: the same reusable block; the last block is
partial when ``input_length % 512 != 0``). No token content is included, and expanded to token ids
the traces do not fit in memory, so they are replayed in **block mode**: one key element per block
(its hash id), page size 1, capacities counted in blocks.

Two state-checkpoint policies decide what a request inserts and where its one state sits:

* ``sequence_end`` — the whole prompt key, one state at its end;
* ``page_aligned`` — only the full blocks, ``hash_ids[:input_length // 512]``, one state at their
  end; nothing when there is no full block.

:func:`ceilings` counts, for an unbounded cache and requests in file order, the share of prompt
blocks (and of prompt tokens) that could be reused: by an attention-only model (any earlier
prefix) and by a hybrid model under each policy (only prefixes that end where a state was kept).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from himamba.errors import InvalidInputError
from himamba.sim.request import SimRequest
from himamba.sim.trace_io import TraceFormatError, json_lines
from himamba.validate import MAX_TOKEN_ID

BLOCK_TOKENS = 512
CHECKPOINTS = ("sequence_end", "page_aligned")
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True, slots=True)
class MooncakeRequest:
    """One line of a Mooncake trace. ``timestamp`` in ms; lengths in tokens; one hash id per
    block (``len(hash_ids) == ceil(input_length / block_tokens)``)."""

    timestamp: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]
    block_tokens: int = BLOCK_TOKENS

    @property
    def full_blocks(self) -> int:
        """Blocks that hold ``block_tokens`` tokens each (the last one may be partial)."""
        return self.input_length // self.block_tokens

    def key(self, checkpoint: str) -> tuple[int, ...]:
        """What the request inserts under ``checkpoint`` (see the module docstring)."""
        if checkpoint == "sequence_end":
            return self.hash_ids
        if checkpoint == "page_aligned":
            return self.hash_ids[: self.full_blocks]
        raise InvalidInputError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")

    def tokens_in(self, blocks: int) -> int:
        """Prompt tokens in the first ``blocks`` blocks."""
        return min(blocks * self.block_tokens, self.input_length)


def to_requests(trace: Iterable[MooncakeRequest]) -> list[SimRequest]:
    """The trace as engine requests in block mode: the prompt is the hash ids (one element per
    block), no output (the trace has no hashes for output tokens), ``arrival_ms`` the timestamp and
    ``aligned_len`` the full blocks; numbered 0, 1, ... in file order."""
    return [SimRequest(r.hash_ids, (), None, i, float(r.timestamp), r.full_blocks) for i, r in enumerate(trace)]


def check_checkpoint(checkpoint: str) -> str:
    """``checkpoint`` when it is a known policy, else InvalidInputError naming the choices."""
    if checkpoint not in CHECKPOINTS:
        raise InvalidInputError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    return checkpoint


def load_mooncake(path: str | Path, *, limit: int | None = None, block_tokens: int = BLOCK_TOKENS) -> list[MooncakeRequest]:
    """Read a Mooncake trace (the first ``limit`` requests when given). Blank lines are skipped;
    a malformed line raises :class:`TraceFormatError` naming the file and line: not JSON, not an
    object, a missing field, a length or timestamp that is not a non-negative number, a hash id
    that is not an int in ``0 .. 2**63 - 1`` (a key element), or a ``hash_ids`` list whose length is not
    ``ceil(input_length / block_tokens)``. Nothing is allocated from a field's value: lengths
    only count, so a huge ``output_length`` costs nothing."""
    if type(block_tokens) is not int or block_tokens < 1:
        raise InvalidInputError(f"block_tokens must be a positive int, got {block_tokens!r}")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise InvalidInputError(f"limit must be a positive int or None, got {limit!r}")
    out: list[MooncakeRequest] = []
    for where, rec in json_lines(path):
        out.append(parse_record(rec, where, block_tokens))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise TraceFormatError(f"{path}: no requests in the file")
    return out


def parse_record(rec: object, where: str, block_tokens: int = BLOCK_TOKENS) -> MooncakeRequest:
    """One parsed trace line as a :class:`MooncakeRequest` (``where`` prefixes every error)."""
    if not isinstance(rec, dict):
        raise TraceFormatError(f"{where}: a request line must be a JSON object, got {type(rec).__name__}")
    missing = [f for f in FIELDS if f not in rec]
    if missing:
        raise TraceFormatError(f"{where}: Mooncake record lacks {missing} (it needs {list(FIELDS)})")
    ts = rec["timestamp"]
    if type(ts) not in (int, float) or not 0 <= ts < float("inf"):
        raise TraceFormatError(f"{where}: timestamp must be a non-negative number of ms, got {ts!r}")
    lengths = []
    for name in ("input_length", "output_length"):
        v = rec[name]
        if type(v) is not int or v < 0:
            raise TraceFormatError(f"{where}: {name} must be a non-negative int, got {v!r}")
        lengths.append(v)
    ids = rec["hash_ids"]
    if not isinstance(ids, list):
        raise TraceFormatError(f"{where}: hash_ids must be a list of ints, got {type(ids).__name__}")
    if set(map(type, ids)) - {int} or (ids and (min(ids) < 0 or max(ids) > MAX_TOKEN_ID)):
        bad = next(i for i, h in enumerate(ids) if type(h) is not int or not 0 <= h <= MAX_TOKEN_ID)
        raise TraceFormatError(f"{where}: hash_ids[{bad}] is {ids[bad]!r}: hash ids must be ints in 0..2**63-1")
    n_in = lengths[0]
    if len(ids) != -(-n_in // block_tokens) or n_in == 0:
        raise TraceFormatError(
            f"{where}: input_length {n_in} needs {-(-n_in // block_tokens)} hash ids of {block_tokens}-token "
            f"blocks (at least one), got {len(ids)}")
    return MooncakeRequest(ts, n_in, lengths[1], tuple(ids), block_tokens)


# -- ceilings ---------------------------------------------------------------------------------------
def ceilings(requests: Iterable[MooncakeRequest]) -> dict[str, float | int]:
    """Reuse ceilings of an unbounded cache, requests in file order, as shares of all prompt blocks
    (and, ``*_tokens``, of all prompt tokens):

    * ``ceiling_attention`` — per request the longest ``k`` such that ``hash_ids[:k]`` is a prefix
      of an earlier request's ``hash_ids``;
    * ``ceiling_sequence_end`` — the longest ``k`` such that ``hash_ids[:k]`` equals an earlier
      request's whole ``hash_ids``;
    * ``ceiling_page_aligned`` — the same against earlier requests' page-aligned keys;
    * ``ceiling_branch_point`` — the same against the ends of earlier requests and their branch
      points: where an earlier request's ``hash_ids`` left every request before it (Marconi's
      admission, :mod:`himamba.sim.admission`).

    Also returns ``requests``, ``prompt_blocks`` and ``prompt_tokens``. The trie of every prefix
    seen is kept as one dict ``(parent node, hash id) -> node``.
    """
    children: dict[tuple[int, int], int] = {}
    ends = {"sequence_end": set(), "page_aligned": set(), "branch_point": set()}
    blocks = {"attention": 0, "sequence_end": 0, "page_aligned": 0, "branch_point": 0}
    tokens = dict.fromkeys(blocks, 0)
    n = total_blocks = total_tokens = 0
    for r in requests:
        n += 1
        total_blocks += len(r.hash_ids)
        total_tokens += r.input_length
        node, best = 0, dict.fromkeys(blocks, 0)
        path = []
        for depth, h in enumerate(r.hash_ids, 1):
            nxt = children.get((node, h))
            if nxt is None:
                break
            node = nxt
            path.append(node)
            best["attention"] = depth
            for policy, marks in ends.items():
                if node in marks:
                    best[policy] = depth
        branch = len(path)
        for depth in range(len(path), len(r.hash_ids)):  # grow the trie by the unseen rest
            node = children.setdefault((node, r.hash_ids[depth]), len(children) + 1)
            path.append(node)
        ends["sequence_end"].add(path[-1])
        ends["branch_point"].add(path[-1])
        if 0 < branch < len(path):
            ends["branch_point"].add(path[branch - 1])
        if r.full_blocks:
            ends["page_aligned"].add(path[r.full_blocks - 1])
        for policy, k in best.items():
            blocks[policy] += k
            tokens[policy] += r.tokens_in(k)
    out: dict[str, float | int] = {"requests": n, "prompt_blocks": total_blocks, "prompt_tokens": total_tokens}
    for policy in blocks:
        out[f"ceiling_{policy}"] = round(blocks[policy] / total_blocks, 6) if total_blocks else 0.0
        out[f"ceiling_{policy}_tokens"] = round(tokens[policy] / total_tokens, 6) if total_tokens else 0.0
    return out


def stats(requests: Sequence[MooncakeRequest]) -> dict[str, float | int]:
    """What ``himamba trace stats --format mooncake`` prints: sizes, the span of arrivals and
    :func:`ceilings`."""
    out = ceilings(requests)
    out["output_tokens"] = sum(r.output_length for r in requests)
    out["full_blocks"] = sum(r.full_blocks for r in requests)
    out["duration_s"] = round((max(r.timestamp for r in requests) - min(r.timestamp for r in requests)) / 1000, 3)
    return out


def find_trace(name: str = "synthetic_trace.jsonl") -> Path | None:
    """Where a published trace file lies, or ``None``: ``$HIMAMBA_TRACES/name``, then
    ``shared/traces/name`` beside the checkout himamba runs from, then beside the working
    directory and its parents. The traces are not shipped with the package."""
    import os

    here = Path(__file__).resolve().parents[2]  # the checkout's parent when run from a source tree
    roots = [Path(os.environ["HIMAMBA_TRACES"])] if os.environ.get("HIMAMBA_TRACES") else []
    roots += [p / "shared" / "traces" for p in (here.parent, *Path.cwd().resolve().parents, Path.cwd())]
    for root in roots:
        if (root / name).is_file():
            return root / name
    return None


# -- a generated trace in the same format ----------------------------------------------------------
def generate(n_requests: int = 1000, *, seed: int = 0, n_system: int = 8, system_blocks: tuple[int, int] = (2, 12),
             turn_blocks: tuple[int, int] = (1, 6), new_conversation: float = 0.3, repeat: float = 0.05,
             mean_gap_ms: float = 250.0, block_tokens: int = BLOCK_TOKENS) -> list[MooncakeRequest]:
    """A seeded trace shaped like the Mooncake ones, for when they are absent: conversations that
    start from one of ``n_system`` shared system prompts (Zipf popularity) and grow by a few
    blocks a turn (the next turn's prompt extends the previous one's full blocks; its tail block is
    partial), a share ``repeat`` of requests sent again unchanged (a retry), Poisson arrivals with ``mean_gap_ms`` between requests. Same arguments, same trace."""
    import random

    if type(n_requests) is not int or n_requests < 1:
        raise InvalidInputError(f"n_requests must be a positive int, got {n_requests!r}")
    rng = random.Random(seed)
    fresh = iter(range(10**12))
    systems = [[next(fresh) for _ in range(rng.randint(*system_blocks))] for _ in range(n_system)]
    weights = [1 / (i + 1) for i in range(n_system)]
    live: list[list[int]] = []  # full blocks of each open conversation
    out, now = [], 0.0
    for _ in range(n_requests):
        if out and rng.random() < repeat:
            again = rng.choice(out)
            out.append(MooncakeRequest(round(now), again.input_length, again.output_length, again.hash_ids, block_tokens))
            now += rng.expovariate(1 / mean_gap_ms)
            continue
        if not live or rng.random() < new_conversation:
            live.append(list(rng.choices(systems, weights)[0]))
        conv = rng.choice(live)
        conv.extend(next(fresh) for _ in range(rng.randint(*turn_blocks)))
        tail = rng.randint(1, block_tokens)  # the partial last block: a fresh id, never reused
        ids = (*conv, next(fresh))
        out.append(MooncakeRequest(round(now), len(conv) * block_tokens + tail, rng.randint(1, 512), ids, block_tokens))
        now += rng.expovariate(1 / mean_gap_ms)
        if len(live) > 32:
            live.pop(0)
    return out


def save(requests: Iterable[MooncakeRequest], path: str | Path) -> Path:
    """Write ``requests`` in the Mooncake line format; returns the path."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as fh:
        for r in requests:
            fh.write(json.dumps({"timestamp": r.timestamp, "input_length": r.input_length,
                                 "output_length": r.output_length, "hash_ids": list(r.hash_ids)}) + "\n")
    return path
