"""Workload generators: seeded lists of requests shaped like the traffic a prefix cache serves.

Every generator takes ``n_requests``, a ``seed`` and a ``vocab`` size, draws token ids in
``1 .. vocab-1`` with ``random.Random(seed)``, and returns ``list[SimRequest]`` numbered
0, 1, ... (same arguments, same list). Length arguments are inclusive ``(low, high)`` ranges.

* :func:`shared_system_prompts` — a few system prompts with Zipf popularity, each request one of
  them plus its own user message (prefix sharing across users).
* :func:`multi_turn_chat` — conversations over several turns: turn k's prompt is turn k-1's
  prompt and output plus a new user message (the shape of ``multiturn_trace.py``).
* :func:`agentic_tool_loops` — agent loops over one long shared context: each step's prompt is
  the previous prompt, the model's tool call and the tool's result.
* :func:`random_requests` — unrelated prompts (almost nothing to reuse).

JSON-lines import and export (both our format and the shared trace format) come from
:mod:`himamba.sim.trace_io` and are re-exported here.
"""

from __future__ import annotations

import random

from himamba.errors import InvalidInputError
from himamba.sim.request import PackedWorkload, SimRequest, describe, pack
from himamba.sim.trace_io import TraceFormatError, load_jsonl, save_jsonl

__all__ = [
    "PackedWorkload", "SimRequest", "TraceFormatError", "agentic_tool_loops", "describe",
    "load_jsonl", "multi_turn_chat", "pack", "random_requests", "save_jsonl", "shared_system_prompts",
]

Range = tuple[int, int]


def shared_system_prompts(
    n_requests: int = 1000, *, n_prompts: int = 16, prompt_len: Range = (256, 1024),
    user_len: Range = (16, 256), output_len: Range = (16, 256), zipf: float = 1.1,
    seed: int = 0, vocab: int = 32000,
) -> list[SimRequest]:
    """Each request: system prompt ``i`` (chosen with weight ``1 / (i + 1) ** zipf``) followed by
    a fresh user message; independent requests (no sessions)."""
    _check(n_requests, vocab, prompt_len=prompt_len, user_len=user_len, output_len=output_len)
    if n_prompts < 1:
        raise InvalidInputError(f"n_prompts must be >= 1, got {n_prompts}")
    rng = random.Random(seed)
    systems = [_draw(rng, prompt_len, vocab) for _ in range(n_prompts)]
    weights = [1.0 / (i + 1) ** zipf for i in range(n_prompts)]
    out = []
    for rid in range(n_requests):
        system = systems[rng.choices(range(n_prompts), weights)[0]]
        out.append(SimRequest((*system, *_draw(rng, user_len, vocab)), tuple(_draw(rng, output_len, vocab)), None, rid))
    return out


def multi_turn_chat(
    n_requests: int = 1000, *, n_system: int = 8, system_len: Range = (64, 512),
    user_len: Range = (16, 256), output_len: Range = (16, 256), max_len: int = 4096,
    active: int = 32, new_conversation: float = 0.25, zipf: float = 1.0,
    seed: int = 0, vocab: int = 32000,
) -> list[SimRequest]:
    """Conversations (``session`` = conversation id) over Zipf-popular system prompts.

    Each request continues a random one of the open conversations (a new one opens while fewer
    than ``active`` are open, or with probability ``new_conversation``): prompt = the
    conversation so far + a user message; the conversation then grows by prompt and output. A
    conversation whose next request would pass ``max_len`` tokens is closed.
    """
    _check(n_requests, vocab, system_len=system_len, user_len=user_len, output_len=output_len)
    if n_system < 1 or active < 1:
        raise InvalidInputError(f"n_system and active must be >= 1, got {n_system}, {active}")
    if max_len < system_len[1] + user_len[1] + output_len[1]:
        raise InvalidInputError(f"max_len {max_len} cannot hold one turn (system + user + output maxima)")
    rng = random.Random(seed)
    systems = [_draw(rng, system_len, vocab) for _ in range(n_system)]
    weights = [1.0 / (i + 1) ** zipf for i in range(n_system)]
    convs: list[tuple[int, list[int]]] = []
    next_session = 0
    out: list[SimRequest] = []
    while len(out) < n_requests:
        if len(convs) < active or rng.random() < new_conversation:
            convs.append((next_session, list(systems[rng.choices(range(n_system), weights)[0]])))
            next_session += 1
        i = rng.randrange(len(convs))
        session, history = convs[i]
        prompt = history + _draw(rng, user_len, vocab)
        output = _draw(rng, output_len, vocab)
        if len(prompt) + len(output) > max_len:
            convs.pop(i)
            continue
        out.append(SimRequest(tuple(prompt), tuple(output), session, len(out)))
        convs[i] = (session, prompt + output)
    return out


def agentic_tool_loops(
    n_requests: int = 500, *, context_len: int = 4096, n_contexts: int = 1, task_len: Range = (32, 128),
    call_len: Range = (16, 64), result_len: Range = (64, 512), steps: Range = (3, 12), active: int = 8,
    seed: int = 0, vocab: int = 32000,
) -> list[SimRequest]:
    """Agent loops (``session`` = loop id) over ``n_contexts`` long shared contexts (tool
    definitions, a repository, ...) of ``context_len`` tokens.

    A loop starts with context + task; each step is one request whose output is a tool call;
    the next step's prompt appends that call and the tool's result. A loop ends after a number
    of steps drawn from ``steps``; ``active`` loops run interleaved.
    """
    _check(n_requests, vocab, task_len=task_len, call_len=call_len, result_len=result_len, steps=steps)
    if context_len < 0 or n_contexts < 1 or active < 1 or steps[0] < 1:
        raise InvalidInputError("context_len must be >= 0 and n_contexts, active, steps >= 1")
    rng = random.Random(seed)
    contexts = [_draw(rng, (context_len, context_len), vocab) for _ in range(n_contexts)]
    loops: list[list] = []  # [session, history, steps left]
    next_session = 0
    out: list[SimRequest] = []
    while len(out) < n_requests:
        while len(loops) < active:
            task = _draw(rng, task_len, vocab)
            loops.append([next_session, contexts[rng.randrange(n_contexts)] + task, rng.randint(*steps)])
            next_session += 1
        i = rng.randrange(len(loops))
        session, history, left = loops[i]
        call = _draw(rng, call_len, vocab)
        out.append(SimRequest(tuple(history), tuple(call), session, len(out)))
        if left <= 1:
            loops.pop(i)
        else:
            loops[i] = [session, history + call + _draw(rng, result_len, vocab), left - 1]
    return out


def random_requests(
    n_requests: int = 1000, *, prompt_len: Range = (64, 1024), output_len: Range = (16, 256),
    seed: int = 0, vocab: int = 32000,
) -> list[SimRequest]:
    """Independent random prompts and outputs: the no-reuse baseline."""
    _check(n_requests, vocab, prompt_len=prompt_len, output_len=output_len)
    rng = random.Random(seed)
    return [SimRequest(tuple(_draw(rng, prompt_len, vocab)), tuple(_draw(rng, output_len, vocab)), None, rid)
            for rid in range(n_requests)]


# -- helpers ----------------------------------------------------------------------------------------
def _draw(rng: random.Random, length: Range, vocab: int) -> list[int]:
    return [rng.randrange(1, vocab) for _ in range(rng.randint(*length))]


def _check(n_requests: int, vocab: int, **ranges: Range) -> None:
    if not isinstance(n_requests, int) or n_requests < 0:
        raise InvalidInputError(f"n_requests must be a non-negative int, got {n_requests!r}")
    if not isinstance(vocab, int) or vocab < 2:
        raise InvalidInputError(f"vocab must be an int >= 2, got {vocab!r}")
    for name, r in ranges.items():
        if (not isinstance(r, (tuple, list)) or len(r) != 2 or not all(isinstance(x, int) for x in r)
                or not 0 <= r[0] <= r[1]):
            raise InvalidInputError(f"{name} must be an inclusive (low, high) range of ints with 0 <= low <= high, got {r!r}")
