"""What a policy replay hands the cache's eviction policy before and while it runs.

* ``flop_aware``: the model that prices FLOPs and bytes and how many tokens one key element
  stands for (a block in block mode); and, when the name gives no α, α tuned as Marconi does
  (:func:`tune_alpha`): at the first eviction a bootstrap window of 5x the requests seen so far
  is set; when the replay reaches it, each α of :data:`ALPHA_GRID` replays those requests from an
  empty cache and the α that saved the largest share of prefill FLOPs is kept (the smallest
  such α on a tie), once.
* ``farthest_next_use``: the future, :class:`NextUse` over the trace (which request needs a node
  next), moved along as the replay goes.

The policy object is the cache's ``policy_objects["eviction"]``; caches without one (or an LRU)
need nothing.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence

ALPHA_GRID = tuple(round(0.1 * k, 1) for k in range(21))  # 0, 0.1, ..., 2.0, as Marconi
BOOTSTRAP_FACTOR = 5


def eviction_policy(cache):
    """The cache's eviction policy object, or ``None`` (a cache without the seam)."""
    return getattr(cache, "policy_objects", {}).get("eviction")


class NextUse:
    """The future of a trace for ``farthest_next_use``: called with a node's path (its key
    elements from the root), the index of the first request after :attr:`now` whose matched
    prompt runs through that whole path (``math.inf``: none). Built once as a trie of every
    prompt, each node keeping the sorted indices of the requests through it."""

    def __init__(self, items: Sequence) -> None:
        children: dict[tuple[int, int], int] = {}
        uses: list[list[int]] = [[]]
        for j, (key, plen, _, _) in enumerate(items):
            node = 0
            for h in key[:plen]:
                nxt = children.get((node, h))
                if nxt is None:
                    nxt = children[(node, h)] = len(uses)
                    uses.append([])
                node = nxt
                uses[node].append(j)
        self.children, self.uses = children, uses
        self.now = -1  # the request being replayed: uses after it count

    def __call__(self, path: Sequence[int]) -> float:
        node, children = 0, self.children
        for h in path:
            node = children.get((node, h))
            if node is None:
                return math.inf
        if node == 0:
            return math.inf
        later = self.uses[node]
        k = bisect_right(later, self.now)
        return later[k] if k < len(later) else math.inf


def prepare(cache, items: Sequence, model, block_tokens: int) -> tuple[NextUse | None, bool]:
    """Hand the policy what it needs before the replay; returns (the :class:`NextUse` to move
    along, or ``None``; whether α is to be tuned)."""
    policy = eviction_policy(cache)
    name = getattr(policy, "name", "lru")
    if name == "flop_aware":
        policy.model = model
        policy.unit_tokens = block_tokens
        return None, ":" not in cache.config.eviction
    if name == "farthest_next_use":
        future = NextUse(items)
        policy.set_future(future)
        return future, False
    return None, False


def tune_alpha(cache, items: Sequence, window: int, run: Callable[[object, Sequence], dict],
               known: dict[float, float] | None = None) -> tuple[float, dict]:
    """Marconi's α: ``run(fresh cache, items[:window])`` for each α of :data:`ALPHA_GRID` on a cache
    built like ``cache`` with ``flop_aware:α``; returns (the α whose run saved the largest share of
    prefill FLOPs, every α's share). ``known``: shares already measured by such a run (the
    replay that reached the window at α = 1 passes its own), which are not run again."""
    saved = {a: share for a, share in (known or {}).items() if a in ALPHA_GRID}
    for alpha in ALPHA_GRID:
        if alpha in saved:
            continue
        fresh = type(cache)(cache.config.replace(eviction=f"flop_aware:{alpha}"))
        saved[alpha] = run(fresh, items[:window])["flops_saved"]
        del fresh
    best = max(ALPHA_GRID, key=lambda a: (saved[a], -a))
    return best, {a: saved[a] for a in ALPHA_GRID}
