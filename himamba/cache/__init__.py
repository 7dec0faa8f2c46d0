"""Floor 3: the cache algorithms on top of the pools."""

from himamba.cache.config import CacheConfig
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.cache.legacy import LEGACY_BUGS
from himamba.cache.mamba import MambaRadixCache
from himamba.cache.results import InsertResult, MatchResult, Request

__all__ = ["LEGACY_BUGS", "CacheConfig",
    "HiMambaRadixCache", "InsertResult", "MambaRadixCache", "MatchResult", "Request"]
