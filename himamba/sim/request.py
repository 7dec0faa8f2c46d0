"""SimRequest and PackedWorkload: what a simulated client sends, in plain and in compact form.

A :class:`SimRequest` is one request of a workload: the prompt tokens, the output tokens the
model will generate (decode appends them one batch at a time), an optional ``session`` (requests
of one session — the turns of a chat, the steps of an agent loop — run one at a time, in order)
and an id. Workload generators return ``list[SimRequest]``.

A :class:`PackedWorkload` stores the same requests in three numpy arrays (all tokens back to back,
request offsets, prompt lengths, sessions): a 2,000-request trace of 2.3 M tokens takes ~9 MB
instead of ~80 MB of Python ints, so it is cheap to ship to sweep workers once. Indexing it
builds the :class:`SimRequest` on demand.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from himamba.errors import InvalidInputError
from himamba.validate import check_request_length, check_token_ids


@dataclass(frozen=True, slots=True)
class SimRequest:
    """One request: ``prompt`` tokens, the ``output`` tokens it will generate, its ``session``
    (``None``: independent) and ``rid`` (the generators number requests 0, 1, ...).

    Two fields traces fill in: ``arrival_ms`` (when the client sent it; the engine admits it no
    earlier when it runs on a clock) and ``aligned_len`` (the prompt elements that form whole
    blocks, for a block-mode prompt whose last block is partial: what the ``page_aligned``
    checkpoint inserts). ``None``: not given."""

    prompt: tuple[int, ...]
    output: tuple[int, ...] = ()
    session: int | None = None
    rid: int = 0
    arrival_ms: float | None = None
    aligned_len: int | None = None

    @classmethod
    def make(cls, prompt: Sequence[int], output: int | Sequence[int] = 0, session: int | None = None,
             rid: int = 0, vocab: int = 32000) -> SimRequest:
        """Build a request; ``output`` may be a token list or a length, in which case the tokens
        are drawn deterministically from ``(rid, prompt length, output length)``."""
        prompt = tuple(check_token_ids(prompt, "prompt"))
        if isinstance(output, int) and not isinstance(output, bool):
            output = drawn_output(rid, len(prompt), check_request_length(output), vocab)
        else:
            output = tuple(check_token_ids(output, "output"))
        return cls(prompt, output, session, rid)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt)

    @property
    def tokens(self) -> list[int]:
        """Prompt followed by output (what the shared trace format calls ``tokens``)."""
        return [*self.prompt, *self.output]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)


def drawn_output(rid: int, prompt_len: int, n: int, vocab: int = 32000) -> tuple[int, ...]:
    """``n`` output tokens in ``1 .. vocab - 1``, drawn deterministically from ``(rid,
    prompt_len, n)``: a request given only its output length decodes the same tokens every run."""
    rng = random.Random(hash((rid, prompt_len, n)))
    return tuple(rng.randrange(1, vocab) for _ in range(n))


class PackedWorkload(Sequence[SimRequest]):
    """Requests stored compactly (numpy arrays); a read-only sequence of :class:`SimRequest`.

    ``tokens`` (int32, all requests back to back), ``starts`` (int64, ``len + 1`` offsets),
    ``prompt_lens`` (int32) and ``sessions`` (int64, ``-1`` for none); optionally ``arrivals``
    (float64 ms, NaN for none) and ``aligned_lens`` (int32, ``-1`` for none). Picklable and small.
    """

    __slots__ = ("aligned_lens", "arrivals", "prompt_lens", "sessions", "starts", "tokens")

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, prompt_lens: np.ndarray, sessions: np.ndarray,
                 arrivals: np.ndarray | None = None, aligned_lens: np.ndarray | None = None) -> None:
        if len(starts) != len(prompt_lens) + 1 or len(sessions) != len(prompt_lens) or any(
                a is not None and len(a) != len(prompt_lens) for a in (arrivals, aligned_lens)):
            raise InvalidInputError("packed workload arrays have inconsistent lengths")
        self.tokens, self.starts, self.prompt_lens, self.sessions = tokens, starts, prompt_lens, sessions
        self.arrivals, self.aligned_lens = arrivals, aligned_lens

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"request {i} out of range ({len(self)} requests)")
        s, e, p = int(self.starts[i]), int(self.starts[i + 1]), int(self.prompt_lens[i])
        seq = self.tokens[s:e].tolist()
        session = int(self.sessions[i])
        arrival = None if self.arrivals is None or np.isnan(self.arrivals[i]) else float(self.arrivals[i])
        aligned = None if self.aligned_lens is None or self.aligned_lens[i] < 0 else int(self.aligned_lens[i])
        return SimRequest(tuple(seq[:p]), tuple(seq[p:]), None if session < 0 else session, i, arrival, aligned)

    def __iter__(self) -> Iterator[SimRequest]:
        for i in range(len(self)):
            yield self[i]

    @property
    def total_tokens(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.tokens, self.starts, self.prompt_lens, self.sessions, self.arrivals,
                                      self.aligned_lens) if a is not None)

    def __repr__(self) -> str:
        return f"PackedWorkload({len(self)} requests, {self.total_tokens} tokens, {self.nbytes / 2**20:.1f} MiB)"


def pack(requests: Iterable[SimRequest]) -> PackedWorkload:
    """The compact form of ``requests`` (a PackedWorkload is returned as is). Token ids must fit
    in int32."""
    if isinstance(requests, PackedWorkload):
        return requests
    reqs = list(requests)
    lengths = np.fromiter((len(r) for r in reqs), dtype=np.int64, count=len(reqs))
    starts = np.zeros(len(reqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    tokens = np.empty(int(starts[-1]), dtype=np.int32)
    for r, s in zip(reqs, starts[:-1].tolist(), strict=True):
        seq = r.tokens
        if seq and max(seq) > np.iinfo(np.int32).max:
            raise InvalidInputError(f"request {r.rid}: token ids above 2**31-1 cannot be packed")
        tokens[s : s + len(seq)] = seq
    prompt_lens = np.fromiter((r.prompt_len for r in reqs), dtype=np.int32, count=len(reqs))
    sessions = np.fromiter((-1 if r.session is None else r.session for r in reqs), dtype=np.int64, count=len(reqs))
    arrivals = aligned = None
    if any(r.arrival_ms is not None for r in reqs):
        arrivals = np.array([np.nan if r.arrival_ms is None else r.arrival_ms for r in reqs], dtype=np.float64)
    if any(r.aligned_len is not None for r in reqs):
        aligned = np.array([-1 if r.aligned_len is None else r.aligned_len for r in reqs], dtype=np.int32)
    return PackedWorkload(tokens, starts, prompt_lens, sessions, arrivals, aligned)


def describe(requests: Iterable[SimRequest]) -> dict[str, int]:
    """Size figures of a workload: requests, prompt / output / total tokens, distinct sessions,
    longest request."""
    n = prompt = output = longest = 0
    sessions: set[int] = set()
    for r in requests:
        n += 1
        prompt += r.prompt_len
        output += len(r.output)
        longest = max(longest, len(r))
        if r.session is not None:
            sessions.add(r.session)
    return {"requests": n, "prompt_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output,
            "sessions": len(sessions), "longest": longest}
