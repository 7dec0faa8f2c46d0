"""SGLang 0.5.23's ``UnifiedRadixCache`` with its HiCache host tier, driven on a CPU.

:class:`UnifiedHostSide` drives such a cache like :class:`~himamba.lens.unified_side.UnifiedSide`
(built with ``host=True``, which runs upstream's own ``init_hicache`` with the CPU stand-ins of
:mod:`himamba.lens.host_standins`), with the tiered operations (``events``, ``load``,
``evict_host``, ``evict_mamba_host``; ``pin`` only with ``"exact": true``, as the tree's host
lock); :func:`replay_with_host` replays a script on it, through the 0.5.23 environment where
needed. Host pool sizes follow upstream's ``hicache_ratio`` (the config's ``host_kv_tokens /
device_kv_tokens``), for the state pool too.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from himamba.lens.unified_side import UnifiedSide
from himamba.lens.unified_trees import remember_tokens


# -- the side ----------------------------------------------------------------------------------------
class UnifiedHostSide(UnifiedSide):
    """The unified tree with its host tier behind the differential runner's side interface."""

    tiered = True

    def __init__(self, config: Any, core: str = "python") -> None:
        super().__init__(config, core, host=True)
        self.name = f"sglang-0.5.23 ({core} core, host tier)"

    def match(self, tokens: list[int], req: Any = None) -> SimpleNamespace:
        m = self.cache.match_prefix(self.P.MatchPrefixParams(key=self.key(list(tokens))))
        indices = self.cache.path_device_indices(m.last_device_node)
        return SimpleNamespace(indices=indices, device_node=m.last_device_node, host_node=m.last_host_node,
                               host_hit=m.host_hit_length, load_node=m.best_match_node)

    def pin(self, node: int, mamba: bool = False) -> None:
        """Take the tree's host lock on ``node`` (the replay's ``exact`` pins; ``mamba`` is
        ignored: the unified tree's host lock covers every component)."""
        super().pin(node)

    def unpin(self, node: int, mamba: bool = False) -> None:
        super().unpin(node)

    def events(self) -> None:
        """One scheduler step's HiCache polling: start queued loads, then reap finished copies."""
        self.cache.ready_to_load_host_cache()
        self.cache.check_hicache_events()

    def load_back(self, node: int, quota: int | None, req: Any = None) -> tuple[torch.Tensor, int]:
        """Load ``node``'s path back to the device (upstream's ``load_back``); (the device KV
        indices of the path, the node)."""
        tokens = list(self.path(node))
        self.cache.load_back(node, quota)
        self.cache.ready_to_load_host_cache()
        indices = self.cache.path_device_indices(node)
        if len(indices) == len(tokens):
            remember_tokens(self.cache, [int(s) for s in indices.tolist()], tokens)
        return indices, node

    def evict_host(self, n: int) -> None:
        self.cache.evict_host(n)

    def evict_mamba_host(self, n: int) -> int:
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

        return self.cache.evict_host(n, ComponentType.MAMBA)


def replay_with_host(script: dict, core: str = "python", skip: tuple[str, ...] = ("lock", "unlock"),
                     timeout: float = 120.0) -> Any:
    """:func:`himamba.lens.replay.replay_on` on 0.5.23 with its host tier (:class:`UnifiedHostSide`),
    in this process where SGLang 0.5.23 is installed, else through its environment."""
    from himamba.lens import remote
    from himamba.lens.replay import Replay, drive, script_config
    from himamba.sim.fuzz import check_script

    check_script(script)
    if remote.unified_here():
        return drive(UnifiedHostSide(script_config(script), core), script, "sglang-0.5.23", skip)
    return Replay.from_dict(remote.replay_remote(script, core, skip, timeout, host=True))
