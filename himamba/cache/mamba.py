"""MambaRadixCache: the single-tier (device only) radix cache for hybrid Mamba/attention models.

Every node owns the device KV of its edge; a node may also own one device mamba state, the
state after its last token. A cached prefix is usable only up to the deepest node holding a
state. The class is the facade of :mod:`himamba.cache.facade` over a tree and a device tier;
:mod:`himamba.cache.build` says which parts and policies it is made of.
"""

from __future__ import annotations

from himamba.cache.facade import RadixCacheBase


class MambaRadixCache(RadixCacheBase):
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
