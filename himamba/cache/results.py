"""Plain records passed in and out of the caches: MatchResult, InsertResult, Request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from himamba.core.node import TreeNode


@dataclass(slots=True)
class MatchResult:
    """What ``match_prefix`` found.

    ``device_indices``: device KV slots of the usable prefix (ends at ``best_match_node``'s
    deepest ancestor-or-self holding a state). ``last_device_node``: the deepest node of that
    prefix whose KV is on the device. ``last_host_node``: the deepest backed-up node of it (the
    device node on a single-tier cache). ``host_hit_length``: tokens that could be loaded back
    from host (1 = only a host state). ``mamba_branching_seqlen``: where the scheduler should
    checkpoint a state so the matched-but-unusable tail becomes reusable (or ``None``).
    """

    device_indices: torch.Tensor
    last_device_node: TreeNode
    last_host_node: TreeNode
    best_match_node: TreeNode
    host_hit_length: int = 0
    mamba_branching_seqlen: int | None = None

    @property
    def prefix_len(self) -> int:
        return int(self.device_indices.numel())


@dataclass(slots=True)
class InsertResult:
    """What ``insert`` did. ``prefix_len``: tokens of the key already on device before the call.
    ``mamba_exist``: the final node already had a device state, so the caller keeps (and must
    free) its state slot."""

    prefix_len: int
    mamba_exist: bool


@dataclass
class Request:
    """The part of a serving request the cache looks at (SGLang's ``Req``, reduced).

    ``token_ids``: prompt + generated tokens so far. ``kv_indices``: device KV slot of each of
    them whose KV exists (SGLang's ``req_to_token`` row). ``mamba_pool_idx``: the request's
    running state slot (1-element tensor). In extra-buffer mode (page size > 1) the request also
    keeps a track slot, ``mamba_track_idx``, holding the state at ``mamba_last_track_seqlen``.
    ``last_node`` is locked by the request; ``cache_protected_len`` tokens of ``kv_indices`` are
    owned by the tree.
    """

    token_ids: list[int]
    kv_indices: torch.Tensor
    mamba_pool_idx: torch.Tensor | None = None
    extra_key: object | None = None
    fill_len: int | None = None  # tokens prefilled so far (chunked prefill); None = all
    last_node: TreeNode | None = None
    cache_protected_len: int = 0
    prefix_indices: torch.Tensor | None = None
    mamba_track_idx: torch.Tensor | None = None
    mamba_last_track_seqlen: int | None = None
    rid: str = field(default="req")

    @property
    def fill_ids(self) -> list[int]:
        """Tokens whose KV has been computed (prefill may be chunked)."""
        return self.token_ids if self.fill_len is None else self.token_ids[: self.fill_len]
