"""CacheConfig: sizes, page size, model shapes, write policy, cascade rule and legacy switches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from himamba.cache.eviction_policies import parse_eviction
from himamba.cache.legacy import normalize_legacy
from himamba.errors import InvalidInputError
from himamba.memory.faults import parse_faults
from himamba.memory.model import ModelSpec
from himamba.validate import check_bool, check_choice, check_int

WRITE_POLICIES = ("write_through", "write_through_selective", "write_back")
CASCADE_RULES = ("himamba", "unified")
COPY_ENGINES = ("auto", "sync", "deferred", "cuda")


@dataclass(frozen=True)
class CacheConfig:
    """Everything a cache needs to be built. Checked on creation; invalid values raise
    :class:`~himamba.errors.InvalidInputError` with a sentence saying what is wrong.

    Sizes are in tokens (KV) and slots (states). ``page_size > 1`` implies SGLang's "mamba extra
    buffer" mode (keys and values are whole pages). ``legacy`` takes bug ids or aliases from
    :mod:`himamba.cache.legacy` and stores the ids.
    """

    device: str = "auto"
    page_size: int = 1
    device_kv_tokens: int = 64
    host_kv_tokens: int = 256
    device_mamba_slots: int = 8
    host_mamba_slots: int = 32
    model: ModelSpec = field(default_factory=ModelSpec.tiny)
    write_policy: str = "write_through"
    cascade_rule: str = "himamba"
    legacy: frozenset[str] = frozenset()
    mamba_cache_chunk_size: int = 64
    load_back_threshold: int = 10
    enable_storage: bool = False
    copy_engine: str = "auto"  # auto: "cuda" on a GPU, "sync" on the CPU; "deferred": CPU with CUDA's timing
    faults: str | float | None = None  # injected copy and allocation faults: a rate or "kind=rate,..." (memory/faults.py)
    eviction: str = "lru"  # lru | lru_consumed | flop_aware[:alpha] | farthest_next_use (cache/eviction_policies.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "legacy", normalize_legacy(self.legacy))
        for name, low in (("page_size", 1), ("device_kv_tokens", None), ("host_kv_tokens", None),
                          ("device_mamba_slots", None), ("host_mamba_slots", None)):
            object.__setattr__(self, name, check_int(getattr(self, name), name, low))  # numpy ints become ints
        for name in ("device_mamba_slots", "host_mamba_slots"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        ps = self.page_size
        for name in ("device_kv_tokens", "host_kv_tokens"):
            size = getattr(self, name)
            if size < ps:
                raise InvalidInputError(f"{name}={size!r} is smaller than one page ({ps} tokens)")
            if size % ps:
                raise InvalidInputError(f"{name}={size} is not a multiple of the page size {ps}")
        check_choice(self.write_policy, "write_policy", WRITE_POLICIES)
        check_choice(self.cascade_rule, "cascade_rule", CASCADE_RULES)
        check_choice(self.copy_engine, "copy_engine", COPY_ENGINES)
        parse_eviction(self.eviction)
        parse_faults(self.faults)
        if not isinstance(self.model, ModelSpec):
            raise InvalidInputError(f"model must be a ModelSpec, got {type(self.model).__name__}")
        check_int(self.mamba_cache_chunk_size, "mamba_cache_chunk_size", 1)
        check_int(self.load_back_threshold, "load_back_threshold", 0)
        check_bool(self.enable_storage, "enable_storage")

    def device_bytes(self) -> int:
        """Bytes the device pools of a cache built from this config take."""
        m = self.model
        return self.device_kv_tokens * m.kv_bytes_per_token + self.device_mamba_slots * m.state_bytes_per_slot

    def host_bytes(self) -> int:
        """Bytes the host pools of a tiered cache built from this config take."""
        m = self.model
        return self.host_kv_tokens * m.kv_bytes_per_token + self.host_mamba_slots * m.state_bytes_per_slot

    @property
    def extra_buffer(self) -> bool:
        """SGLang's mamba extra-buffer mode; required (and implied) by ``page_size > 1``."""
        return self.page_size > 1

    def has_legacy(self, bug_id: str) -> bool:
        return bug_id in self.legacy

    def replace(self, *, legacy: Iterable[str] | None = None, **changes: object) -> CacheConfig:
        """A copy with some fields changed (``legacy`` accepts ids or aliases)."""
        if legacy is not None:
            changes["legacy"] = frozenset(legacy)
        return dataclasses.replace(self, **changes)
