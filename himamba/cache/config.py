"""CacheConfig: sizes, page size, model shapes, write policy, cascade rule and legacy switches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from himamba.cache.legacy import normalize_legacy
from himamba.errors import InvalidInputError
from himamba.memory.model import ModelSpec

WRITE_POLICIES = ("write_through", "write_through_selective", "write_back")
CASCADE_RULES = ("himamba", "unified")


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "legacy", normalize_legacy(self.legacy))
        ps = self.page_size
        if not isinstance(ps, int) or ps < 1:
            raise InvalidInputError(f"page_size must be a positive int, got {ps!r}")
        for name in ("device_kv_tokens", "host_kv_tokens"):
            size = getattr(self, name)
            if not isinstance(size, int) or size < ps:
                raise InvalidInputError(f"{name}={size!r} is smaller than one page ({ps} tokens)")
            if size % ps:
                raise InvalidInputError(f"{name}={size} is not a multiple of the page size {ps}")
        for name in ("device_mamba_slots", "host_mamba_slots"):
            size = getattr(self, name)
            if not isinstance(size, int) or size < 1:
                raise InvalidInputError(f"{name} must be at least 1, got {size!r}")
        if self.write_policy not in WRITE_POLICIES:
            raise InvalidInputError(f"write_policy {self.write_policy!r} is not one of {WRITE_POLICIES}")
        if self.cascade_rule not in CASCADE_RULES:
            raise InvalidInputError(f"cascade_rule {self.cascade_rule!r} is not one of {CASCADE_RULES}")
        if not isinstance(self.model, ModelSpec):
            raise InvalidInputError(f"model must be a ModelSpec, got {type(self.model).__name__}")
        if self.mamba_cache_chunk_size < 1:
            raise InvalidInputError(f"mamba_cache_chunk_size must be >= 1, got {self.mamba_cache_chunk_size}")

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
