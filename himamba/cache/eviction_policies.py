"""Eviction policies: which leaf leaves first and which states go, chosen by
``CacheConfig(eviction=...)`` (``--eviction`` on the command line).

A policy answers, for :mod:`himamba.cache.eviction` (device and host evictions alike):

* ``order(leaves)`` — the evictable leaves' sort keys, smallest goes first; ``requeue_key(node,
  leaves)`` the key of a leaf queued during the loop (a parent that became a leaf);
* ``drain_states(lru, budget, take)`` — offer state holders to ``take`` until ``budget`` states
  are freed (``take`` returns how many it freed; a holder with children only loses its state);
* ``describe(node)`` — why ``node`` came where it did, for the step texts;

and, for the lookup and insert, ``consumed_only``: whether only the state a match consumed is
refreshed in the mamba list (the lists' time order then holds for the full list alone).

=====================  =====================================================================
name                   rule
=====================  =====================================================================
``lru``                SGLang 0.5.11, the default: leaves by last access; states from the LRU
                       end of their list; a match refreshes the matched node and its ancestors
``lru_consumed``       SGLang #31643/#31648 (July 2026): a match refreshes only the state it
                       consumed; inserts and splits no longer move states in the mamba list
``flop_aware[:alpha]`` Marconi (Pan et al., MLSys 2025): utility = recency + alpha x FLOP
                       efficiency (prefill FLOPs a node saves over its parent per byte it holds),
                       both min-max normalised over the candidates; lowest goes. ``alpha``
                       defaults to 1.0 and may be set later (the policy replay tunes it)
``farthest_next_use``  offline reference: evicts what the trace needs latest (never: first),
                       given the future (:meth:`FarthestNextUse.set_future`); a reference bound,
                       not a proven optimum with two pools of unequal sizes
=====================  =====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from himamba.cache.node_ends import NodeEnds
from himamba.cache.tree import depth
from himamba.core.lru import LRUList
from himamba.core.node import TreeNode
from himamba.errors import InvalidInputError
from himamba.memory.model import ModelSpec

EVICTION_POLICIES = ("lru", "lru_consumed", "flop_aware", "farthest_next_use")


class LRU:
    """Least recently used: leaves by ``last_access_time`` (ties by id), states from the LRU end
    of their list, passing locked ones."""

    name = "lru"
    consumed_only = False
    rule = "oldest evictable leaf"  # how a step text names the policy's choice
    state_rule = "least recently used unlocked state"

    def bind(self, cache) -> None:
        """Called once the cache is built (policies that read the tree keep a reference)."""

    def leaf_key(self, node: TreeNode) -> tuple:
        return (node.last_access_time, node.id)

    def order(self, leaves: Iterable[TreeNode]) -> list[tuple]:
        """``(key, node)`` for each leaf: the heap the leaf loop starts from."""
        key = self.leaf_key
        return [(key(n), n) for n in leaves]

    def requeue_key(self, node: TreeNode, leaves: set[TreeNode]) -> tuple:
        return self.leaf_key(node)

    def drain_states(self, lru: LRUList, budget: int, take: Callable[[TreeNode], int]) -> int:
        return lru.drain(budget, take)

    def describe(self, node: TreeNode) -> str:
        return f"t={node.last_access_time:g}"


class LRUConsumed(LRU):
    """LRU whose match refreshes only the consumed state (SGLang #31643/#31648)."""

    name = "lru_consumed"
    consumed_only = True
    state_rule = "least recently consumed unlocked state"


class _ScoredStates(LRU):
    """A policy that ranks state holders itself: the unlocked ones in score order, then any left
    in LRU order (so a shortage is met whenever LRU would meet it)."""

    def state_score(self, candidates: list[TreeNode]) -> Callable[[TreeNode], tuple]:
        raise NotImplementedError

    def drain_states(self, lru: LRUList, budget: int, take: Callable[[TreeNode], int]) -> int:
        candidates = [n for n in lru.nodes() if n.mamba_lock_ref == 0]
        if not candidates:
            return 0
        key = self.state_score(candidates)
        taken = 0
        for node in sorted(candidates, key=key):
            if taken >= budget:
                return taken
            if lru.in_list(node) and node.mamba_lock_ref == 0:
                taken += take(node)
        return taken + (lru.drain(budget - taken, take) if taken < budget else 0)


class FlopAware(_ScoredStates):
    """Marconi's utility. ``model`` prices FLOPs and bytes (default: the cache's model when it
    names its widths, else Marconi's Attention-Mamba2-7B); ``unit_tokens`` is how many tokens one
    key element stands for (a block-mode replay sets its block size)."""

    name = "flop_aware"
    rule = "lowest utility (recency + alpha x FLOPs saved per byte)"
    state_rule = "lowest-utility unlocked state"

    def __init__(self, alpha: float = 1.0, model: ModelSpec | None = None) -> None:
        self.alpha = alpha
        self.model = model
        self.unit_tokens = 1
        self.cache = None
        self.node_ends: NodeEnds | None = None  # each node's end, kept across evictions (bound policies)

    def bind(self, cache) -> None:
        self.cache = cache
        self.node_ends = NodeEnds(cache.tree)
        if self.model is None:
            own = cache.config.model
            self.model = own if own.has_flops else ModelSpec.attention_mamba2_7b()

    _prices: tuple | None = None  # (model, a, b, KV bytes a token, state bytes), read from the model once

    def _model_prices(self) -> tuple:
        """The model's FLOP coefficients and byte sizes, computed once per model (the model may be
        set after :meth:`bind`, so they are keyed by it)."""
        m = self.model
        if self._prices is None or self._prices[0] is not m:
            a, b = m.flop_coefficients()
            self._prices = (m, a, b, m.kv_bytes_per_token, m.state_bytes_per_slot)
        return self._prices

    def _efficiencies(self, nodes: list[TreeNode]) -> list[float]:
        """Prefill FLOPs each node saves over its parent, per byte it holds, in the order of ``nodes``."""
        _, a, b, kv_bytes, state_bytes = self._model_prices()
        u = self.unit_tokens
        ends = self.node_ends.current() if self.node_ends is not None else {}
        out = []
        for node in nodes:
            own = len(node.key.token_ids) * u
            end = ends.get(node.id)
            if end is None:
                end = ends[node.id] = depth(node)
            end *= u
            start = end - own
            saved = a * own + b * (end * end - start * start)  # prefill_flops(end) - prefill_flops(start)
            held = own * kv_bytes
            if node.mamba_value is not None or node.mamba_host_value is not None:
                held += state_bytes
            out.append(saved / held if held else 0.0)
        return out

    def _utilities(self, nodes: list[TreeNode]) -> list[float]:
        """Each node's utility, in the order of ``nodes``: recency and efficiency, each min-max
        normalised over ``nodes`` (0 for all when they are equal), as ``r + alpha * e``. At alpha
        0 that is ``r`` itself (``r + 0.0``), so the efficiencies are not computed."""
        now = self.cache.tree.clock if self.cache is not None else 0.0
        r = _scaled([1.0 / max(now - n.last_access_time, 1e-9) for n in nodes])
        alpha = self.alpha
        if alpha == 0:
            return r
        e = _scaled(self._efficiencies(nodes))
        return [ri + alpha * ei for ri, ei in zip(r, e, strict=True)]

    def order(self, leaves: Iterable[TreeNode]) -> list[tuple]:
        leaves = list(leaves)
        if not leaves:
            return []
        return [((u, n.last_access_time, n.id), n) for u, n in zip(self._utilities(leaves), leaves, strict=True)]

    def requeue_key(self, node: TreeNode, leaves: set[TreeNode]) -> tuple:
        """Scored against the current evictable leaves (normalisation is over the candidates)."""
        nodes = [node, *(x for x in leaves if x is not node)]
        return (self._utilities(nodes)[0], node.last_access_time, node.id)

    def state_score(self, candidates: list[TreeNode]) -> Callable[[TreeNode], tuple]:
        # Marconi's candidates have at most one child; the rest come after them
        if self.alpha == 0:
            # the utility is then the scaled recency: a non-decreasing function of the time (each
            # step, now - t, 1 / x, max and the scaling, is monotone in floats), so ranking by the
            # time itself gives the same order, ties included (they fall to the time, then the id)
            return lambda n: (len(n.children) > 1, n.last_access_time, n.id)
        utility = dict(zip(candidates, self._utilities(candidates), strict=True))
        return lambda n: (len(n.children) > 1, utility[n], n.last_access_time, n.id)

    def describe(self, node: TreeNode) -> str:
        return f"t={node.last_access_time:g}, alpha={self.alpha:g}"


class FarthestNextUse(_ScoredStates):
    """Offline: the leaf the future needs latest goes first. ``future(path_tokens) -> request
    index`` (``math.inf``: never) is set by the replay that knows the trace; without one every
    node ties and LRU decides."""

    name = "farthest_next_use"
    rule = "evictable leaf needed latest"
    state_rule = "unlocked state needed latest"

    def __init__(self) -> None:
        self.future: Callable[[list[int]], float] | None = None
        self.cache = None

    def bind(self, cache) -> None:
        self.cache = cache

    def set_future(self, future: Callable[[list[int]], float] | None) -> None:
        """``future(path_tokens)``: the index of the next request that needs the node ending
        after ``path_tokens`` (``math.inf``: none)."""
        self.future = future

    def next_use(self, node: TreeNode) -> float:
        if self.future is None or self.cache is None:
            return math.inf
        return self.future(self.cache.tree.path_tokens(node))

    def leaf_key(self, node: TreeNode) -> tuple:
        return (-self.next_use(node), node.last_access_time, node.id)

    def state_score(self, candidates: list[TreeNode]) -> Callable[[TreeNode], tuple]:
        return lambda n: (-self.next_use(n), n.last_access_time, n.id)

    def describe(self, node: TreeNode) -> str:
        use = self.next_use(node)
        return "never needed again" if use == math.inf else f"next needed by request {use:g}"


def _scaled(values: list[float]) -> list[float]:
    """``values`` min-max normalised to 0..1 (all 0 when they are equal)."""
    lo, hi = min(values), max(values)
    if hi > lo:
        span = hi - lo
        return [(v - lo) / span for v in values]
    return [0.0] * len(values)


def parse_eviction(name: object) -> tuple[str, float | None]:
    """``(policy, alpha)`` from ``"lru"``, ``"flop_aware:0.5"`` ...; InvalidInputError otherwise."""
    if not isinstance(name, str):
        raise InvalidInputError(f"eviction must be a policy name, got {name!r}")
    base, _, arg = name.partition(":")
    if base not in EVICTION_POLICIES:
        raise InvalidInputError(f"eviction must be one of {', '.join(EVICTION_POLICIES)} (flop_aware:ALPHA), got {name!r}")
    if not arg:
        if _:
            raise InvalidInputError(f"eviction {name!r}: give alpha after the colon, e.g. flop_aware:0.5")
        return base, None
    if base != "flop_aware":
        raise InvalidInputError(f"eviction {name!r}: only flop_aware takes a parameter (alpha)")
    try:
        alpha = float(arg)
    except ValueError:
        raise InvalidInputError(f"eviction {name!r}: alpha must be a number, got {arg!r}") from None
    if not math.isfinite(alpha) or alpha < 0:
        raise InvalidInputError(f"eviction {name!r}: alpha must be a finite number >= 0")
    return base, alpha


def make_eviction_policy(name: str):
    """The policy object for a checked name."""
    base, alpha = parse_eviction(name)
    if base == "lru":
        return LRU()
    if base == "lru_consumed":
        return LRUConsumed()
    if base == "flop_aware":
        return FlopAware(1.0 if alpha is None else alpha)
    return FarthestNextUse()
