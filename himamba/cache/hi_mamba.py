"""HiMambaRadixCache: the tiered (device + host) radix cache for hybrid Mamba/attention models.

Each node's KV and state can live on the device, the host, or both. Concerns by file:

* :mod:`himamba.cache.hi_base` — host pools, transfer controller, host LRU, host leaves, pins;
* :mod:`himamba.cache.hi_lookup` — match_prefix with host hits, splits, insert with unevict;
* :mod:`himamba.cache.hi_eviction` — demotion, evict_host, evict_mamba_host, the cascade;
* :mod:`himamba.cache.backup` — write_backup and policies, ack processing, load-back;
* :mod:`himamba.cache.storage` — storage backup and prefetch (host pins).
"""

from __future__ import annotations

from himamba.cache.backup import BackupMixin
from himamba.cache.hi_eviction import HiEvictionMixin
from himamba.cache.hi_lookup import HiLookupMixin
from himamba.cache.request_flow import RequestFlowMixin
from himamba.cache.storage import StorageMixin


class HiMambaRadixCache(StorageMixin, BackupMixin, HiEvictionMixin, HiLookupMixin, RequestFlowMixin):
    """Tiered radix cache over real device and host pools.

    ``HiMambaRadixCache(config, manual_acks=True)`` keeps every transfer in flight until
    ``cache.cache_controller.complete(...)`` (or ``cache.storage.complete(...)``) releases it.
    """

    tiered = True
