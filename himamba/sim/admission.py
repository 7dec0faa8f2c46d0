"""Admission (checkpoint) policies: where a request keeps mamba states, and their reuse ceilings.

A hybrid model can reuse a cached prefix only where a state was kept at its end. An admission
policy decides, for one request, the depths (in key elements: blocks in block mode, tokens in
token mode) at which its prefill keeps a state; the request inserts its key up to the last of
them, one state at each. The policies, by name:

* ``sequence_end`` — one state at the end of the whole key;
* ``page_aligned`` — one state at the end of the full blocks (nothing without one). In token
  mode every element is whole, so it is ``sequence_end``;
* ``branch_point`` — Marconi's (Pan et al., MLSys 2025): ``sequence_end`` plus, when the key
  branches off the cached tree inside it, a state at the branch point. The branch point is the
  longest prefix of the key the live tree holds, found by :func:`branch_point` before the insert
  (a dry-run match that changes nothing, so the prefill can checkpoint it);
* ``every_n:N`` — a state every N elements within the full blocks (vLLM's ``all`` mode is
  ``every_n:1``; TensorRT-LLM's ``periodic_snapshot_interval`` is N tokens), inserting the full
  blocks up to the last multiple of N.

Only depths past what the request matched are admitted: the prefill starts at the match, so it
cannot checkpoint a state before it. :func:`ceilings` replays these rules on an unbounded tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from himamba.errors import InvalidInputError

NAMES = ("sequence_end", "page_aligned", "branch_point", "every_n:N")
#: Items the policies read: (key, prompt_len, full_len, prompt_tokens). ``key`` is what the
#: request can insert (block mode: its hash ids; token mode: prompt + output tokens), the match
#: reads ``key[:prompt_len]``, ``full_len`` counts its whole blocks (token mode: ``len(key)``) and
#: ``prompt_tokens`` weighs matched blocks in tokens (``None`` in token mode).
PolicyItem = tuple[list[int], int, int, "int | None"]


@dataclass(frozen=True, slots=True)
class Admission:
    """One admission policy: ``kind`` is a name of :data:`NAMES` without ``:N``, ``every`` the N
    of ``every_n`` (0 otherwise). Build it with :func:`parse_admission`."""

    kind: str
    every: int = 0

    @property
    def name(self) -> str:
        """The name it is written by (``"every_n:4"``)."""
        return f"every_n:{self.every}" if self.kind == "every_n" else self.kind

    @property
    def needs_branch(self) -> bool:
        """Whether :meth:`ends` reads the branch point (so the replay must look it up)."""
        return self.kind == "branch_point"

    def ends(self, length: int, full: int, matched: int, branch: int = 0) -> list[int]:
        """Depths (ascending, each past ``matched``) where a request of ``length`` elements, ``full``
        of them whole, keeps a state, having matched ``matched``; ``branch`` is its branch point.
        Empty: the request inserts nothing."""
        kind = self.kind
        if kind == "sequence_end":
            return [length] if length > matched else []
        if kind == "page_aligned":
            return [full] if full > matched else []
        if kind == "branch_point":
            if matched < branch < length:
                return [branch, length]
            return [length] if length > matched else []
        n = self.every
        return list(range((matched // n + 1) * n, full + 1, n))


def parse_admission(name: str | Admission) -> Admission:
    """The policy called ``name`` (see the module docstring); InvalidInputError names the choices."""
    if isinstance(name, Admission):
        return name
    if name in ("sequence_end", "page_aligned", "branch_point"):
        return Admission(name)
    if isinstance(name, str) and name.startswith("every_n:"):
        n = name[len("every_n:"):]
        if n.isdigit() and int(n) >= 1 and n == str(int(n)):
            return Admission("every_n", int(n))
    raise InvalidInputError(f"admission must be one of {NAMES} (N a positive int), got {name!r}")


def branch_point(root, key: Sequence[int]) -> int:
    """How many leading elements of ``key`` the tree under ``root`` holds (on any tier): the
    point where the key branches off it. A read-only walk over public node fields (``children``
    filed by each edge's first element, ``key.token_ids``): nothing is split, retimed or moved.
    Page size 1 and no extra key, as the replays use."""
    node, pos, n = root, 0, len(key)
    while pos < n:
        child = node.children.get(key[pos])
        if child is None:
            return pos
        edge = child.key.token_ids
        m = len(edge)
        if key[pos:pos + m] == edge:
            pos += m
            node = child
            continue
        k = 1  # the first element matched: that is how the child was found
        while k < m and pos + k < n and edge[k] == key[pos + k]:
            k += 1
        return pos + k
    return pos


def ceilings(items: Iterable[PolicyItem], admissions: Iterable[str | Admission],
             block_tokens: int = 512) -> dict[str, float]:
    """Reuse ceilings of an unbounded cache, items in order: for each policy the share of prompt
    elements (``ceiling_<name>``) and of prompt tokens (``ceiling_<name>_tokens``; in token mode
    the same) a replay with pools larger than the trace reaches. Each policy keeps its own trie
    of what it inserted, one dict ``(parent node, element) -> node``, and the set of nodes with
    a state; a request reuses its deepest prefix ending on a state, then admits :meth:`Admission.ends`
    (the branch point: its longest prefix in the trie) and grows the trie to the last of them."""
    policies = [parse_admission(a) for a in admissions]
    tries = [{} for _ in policies]
    marks: list[set[int]] = [set() for _ in policies]
    hits, hit_tokens = [0] * len(policies), [0] * len(policies)
    total = total_tokens = 0
    for key, plen, full, weight in items:
        total += plen
        total_tokens += plen if weight is None else weight
        for j, policy in enumerate(policies):
            children, states = tries[j], marks[j]
            node, depth, best, path = 0, 0, 0, []
            for h in key:
                nxt = children.get((node, h))
                if nxt is None:
                    break
                node = nxt
                depth += 1
                path.append(node)
                if node in states and depth <= plen:
                    best = depth
            ends = policy.ends(len(key), full, best, depth)
            hits[j] += best
            hit_tokens[j] += best if weight is None else min(best * block_tokens, weight)
            if ends:
                for d in range(len(path), ends[-1]):
                    node = children.setdefault((node, key[d]), len(children) + 1)
                    path.append(node)
                states.update(path[e - 1] for e in ends)
    out: dict[str, float] = {}
    for j, policy in enumerate(policies):
        out[f"ceiling_{policy.name}"] = round(hits[j] / total, 6) if total else 0.0
        out[f"ceiling_{policy.name}_tokens"] = round(hit_tokens[j] / total_tokens, 6) if total_tokens else 0.0
    return out
