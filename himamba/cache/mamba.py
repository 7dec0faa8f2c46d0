"""MambaRadixCache: the single-tier (device only) radix cache for hybrid Mamba/attention models.

Every node owns the device KV of its edge; a node may also own one device mamba state, the
state after its last token. A cached prefix is usable only up to the deepest node holding a
state. See the mixins for each concern:

* :mod:`himamba.cache.tree_base` — pools, counters, leaf set, locks;
* :mod:`himamba.cache.lookup` — match_prefix, split, insert;
* :mod:`himamba.cache.device_eviction` — evict, evict_mamba, the tombstone cascade;
* :mod:`himamba.cache.request_flow` — cache_finished_req, cache_unfinished_req.
"""

from __future__ import annotations

from himamba.cache.device_eviction import DeviceEvictionMixin
from himamba.cache.lookup import LookupMixin
from himamba.cache.request_flow import RequestFlowMixin


class MambaRadixCache(RequestFlowMixin, LookupMixin, DeviceEvictionMixin):
    """Device-tier radix cache over real KV and state pools (``kv_pool``, ``mamba_pool``).

    >>> import himamba as hm
    >>> cache = hm.MambaRadixCache(hm.CacheConfig(device="cpu"))
    >>> kv, state = cache.kv_pool.alloc(3), cache.mamba_pool.alloc(1)
    >>> cache.insert([1, 2, 3], kv, state).prefix_len
    0
    >>> cache.match_prefix([1, 2, 3, 4]).prefix_len
    3
    """

    tiered = False
