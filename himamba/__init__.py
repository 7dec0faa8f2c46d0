"""himamba: the tiered radix prefix cache of hybrid Mamba/attention LLM servers, on real memory.

Start here::

    import himamba as hm
    cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu"))
"""

from himamba.cache.config import CacheConfig
from himamba.cache.hi_mamba import HiMambaRadixCache
from himamba.cache.integrity import check_integrity
from himamba.cache.invariants import Violation, check_invariants
from himamba.cache.legacy import LEGACY_BUGS, LEGACY_PROFILES
from himamba.cache.mamba import MambaRadixCache
from himamba.cache.restore import restore
from himamba.cache.results import InsertResult, MatchResult, Request
from himamba.core.key import RadixKey
from himamba.core.node import TreeNode
from himamba.errors import (
    AllocationFailure,
    CacheAssertionError,
    ConcurrentUseError,
    HiMambaError,
    InvalidInputError,
    LockError,
    PoolError,
    TransferFailure,
    UpstreamFailure,
)
from himamba.lens.remote import UpstreamUnavailable
from himamba.lens.replay import replay_on
from himamba.memory.model import ModelSpec
from himamba.observe.events import Event, EventKind
from himamba.observe.recorder import Recorder, Step
from himamba.observe.snapshot import Snapshot, diff, take
from himamba.sim.engine import Engine
from himamba.sim.ops import serve
from himamba.viz import (
    Playground,
    Stepper,
    compare,
    counters_table,
    diff_table,
    lru_table,
    node_table,
    render,
    text,
    to_svg,
)

__version__ = "0.1.0"

__all__ = [
    "AllocationFailure",
    "TransferFailure",
    "LEGACY_BUGS",
    "LEGACY_PROFILES",
    "CacheAssertionError",
    "CacheConfig",
    "ConcurrentUseError",
    "Engine",
    "Event",
    "EventKind",
    "HiMambaError",
    "HiMambaRadixCache",
    "InsertResult",
    "InvalidInputError",
    "LockError",
    "MambaRadixCache",
    "MatchResult",
    "ModelSpec",
    "PoolError",
    "UpstreamFailure",
    "UpstreamUnavailable",
    "RadixKey",
    "Recorder",
    "Request",
    "Playground",
    "Snapshot",
    "Step",
    "Stepper",
    "TreeNode",
    "Violation",
    "check_integrity",
    "check_invariants",
    "compare",
    "counters_table",
    "diff",
    "diff_table",
    "lru_table",
    "replay_on",
    "node_table",
    "render",
    "restore",
    "serve",
    "take",
    "text",
    "to_svg",
    "__version__",
]
