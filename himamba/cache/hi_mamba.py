"""HiMambaRadixCache: the tiered (device + host) radix cache for hybrid Mamba/attention models.

Each node's KV and state can live on the device, the host, or both. Concerns by file:

* :mod:`himamba.cache.hi_base` — host pools, transfer controller, host LRU, host leaves, pins;
* :mod:`himamba.cache.hi_lookup` — match_prefix with host hits, splits, insert with unevict;
* :mod:`himamba.cache.hi_eviction` — demotion, evict_host, evict_mamba_host;
* :mod:`himamba.cache.cascade` — the tombstone cascade and its two stop rules;
* :mod:`himamba.cache.backup` — write_backup and policies, ack processing, load-back;
* :mod:`himamba.cache.storage` — storage backup and prefetch (host pins).

Hook map: the shared algorithms live in the device tree's mixins and call hooks that the
tiered mixins override (base method -> hook it calls -> tiered override):

==========================================  ==============================  ===========================
base method (device tree)                   hook                            tiered override in
==========================================  ==============================  ===========================
``match_prefix`` (lookup)                   ``_match_result``               hi_lookup (host hit fields)
``_split_node`` (lookup)                    ``_after_split``                hi_lookup (splits host KV)
``insert`` / ``_insert_helper`` (lookup)    ``_take_matched_segment``       hi_lookup (unevicts host nodes)
``insert`` / ``_insert_helper`` (lookup)    ``_inc_hit_count``              hi_lookup (write-through backup)
``evict`` / ``evict_mamba`` (device_evic.)  ``_evict_device_leaf``          hi_eviction (demote / write back)
``_evict_regular`` (device_eviction)        ``_release_leaf_extras``        hi_eviction (frees host state)
``_iteratively_delete_tombstone_leaf``      ``_cascade_stop_reason``        cascade.HiCascadeMixin
``_iteratively_delete_tombstone_leaf``      ``_delete_tombstone_leaf``      cascade.HiCascadeMixin
every structural change (tree_base)         ``_refresh_leaf_status``        hi_base (adds host leaves)
``reset`` (tree_base)                       ``_free_node_memory``,          hi_base (host pools)
                                            ``_lru_lists``
==========================================  ==============================  ===========================
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
