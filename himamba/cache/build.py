"""Where a cache is put together: every part, every policy, and every legacy switch's variant.

A cache is a radix tree, a device tier (and, tiered, a host tier with its in-flight record and
transfer controller), a few operation objects (lookup, insert, eviction with its cascade, request
flow; tiered: backup, load-back, storage) and policy objects (cascade rule, write policy,
load-back rule, eviction policy). Each legacy switch of :mod:`himamba.cache.legacy` is read here
and nowhere else in the tree's algorithms: it picks a policy or sets one named variant flag of the
part whose one function it changes (the legacy table's ``where`` column names it).
"""

from __future__ import annotations

import weakref

from himamba.cache.backup import Backup
from himamba.cache.cascade import Cascade
from himamba.cache.config import CacheConfig
from himamba.cache.device_tier import DeviceTier
from himamba.cache.eviction import DEVICE_LOCKED_LEAF, TIERED_LOCKED_LEAF, Eviction
from himamba.cache.eviction_policies import make_eviction_policy
from himamba.cache.host_tier import HostTier
from himamba.cache.in_flight import InFlight
from himamba.cache.insert import Insert
from himamba.cache.load_back import LoadBack
from himamba.cache.lookup import Lookup
from himamba.cache.policies import (
    DeviceCascadeRule,
    LoadBackRule,
    NoHostTier,
    TieredCascadeRule,
    UnifiedCascadeRule,
    WriteBack,
    WriteThrough,
)
from himamba.cache.request_flow import RequestFlow
from himamba.cache.storage import StorageOps, StorageTier
from himamba.cache.tree import RadixTree
from himamba.memory.faults import FaultyEngine, FaultyPool, parse_faults
from himamba.memory.pools import KVPool, MambaPool
from himamba.memory.transfer import TransferController, make_engine


def device_tier(config: CacheConfig, device, events, tiered: bool) -> DeviceTier:
    """The device tier: pools on ``device``; legacy B10, B18 and (device cache only) B21 as variants."""
    return DeviceTier(
        KVPool(config.model, config.device_kv_tokens, config.page_size, device),
        MambaPool(config.model, config.device_mamba_slots, device),
        events,
        guard_lock_release=not config.has_legacy("B10"),
        strict_release=not tiered and config.has_legacy("B21"),
        tolerant_unlist=config.has_legacy("B18"),
    )


def cascade_rule(config: CacheConfig, tiered: bool) -> DeviceCascadeRule:
    """The single-tier rule on a device cache (``cascade_rule`` applies to tiered caches)."""
    if not tiered:
        return DeviceCascadeRule()
    honour_pins = not config.has_legacy("B1")
    return UnifiedCascadeRule(honour_pins) if config.cascade_rule == "unified" else TieredCascadeRule(honour_pins)


def write_policy(config: CacheConfig, tiered: bool) -> NoHostTier:
    if not tiered:
        return NoHostTier()
    if config.write_policy == "write_back":
        return WriteBack(demote_failed=config.has_legacy("B7"))
    return WriteThrough(config.write_policy, 1 if config.write_policy == "write_through" else 2)


def eviction_policy(config: CacheConfig):
    """The eviction policy ``config.eviction`` names (:mod:`himamba.cache.eviction_policies`)."""
    return make_eviction_policy(config.eviction)


def assemble(cache, host: HostTier | None = None, controller: TransferController | None = None) -> None:
    """Build and attach the parts of ``cache`` (a facade with ``config``, ``events``,
    ``device_tier`` and ``empty_indices`` set). ``host``: the host tier of a tiered cache.

    The parts reach the facade through a weak proxy: a cache holds its parts, never the reverse,
    so a cache nobody holds is freed at once (no cycle for the collector to find)."""
    owner = cache
    cache = weakref.proxy(owner)
    config = owner.config
    legacy = config.has_legacy
    tiered = host is not None
    hosts = (host,) if tiered else ()
    device = cache.device_tier
    tree = owner.tree = RadixTree(config.page_size, cache.empty_indices)
    owner.policy_objects = policies = {
        "cascade": cascade_rule(config, tiered),
        "write": write_policy(config, tiered),
        "eviction": eviction_policy(config),
    }
    owner.write_policy_object = policies["write"]
    policies["eviction"].bind(cache)
    consumed_only = policies["eviction"].consumed_only
    device.split_moves_state = not consumed_only
    owner.lookup = Lookup(cache, tree, device, hosts, raise_like_upstream=legacy("B19"), consumed_only=consumed_only,
                          load_back_from_last_host=legacy("B23"))
    owner.inserter = Insert(cache, tree, device, cache.lookup)
    cascade = Cascade(tree, device, hosts, policies["cascade"], cache.events, cache.lookup.refresh)
    owner.eviction = Eviction(
        cache, tree, device, hosts, cascade, policies["eviction"],
        queue_parent=tiered and legacy("B16"), take_locked_leaf=legacy("B8"),
        strict_leaf=not tiered and legacy("B21"),
        locked_leaf_words=TIERED_LOCKED_LEAF if tiered else DEVICE_LOCKED_LEAF,
        old_host_rule=legacy("B5"),
    )
    owner.release_lock_on_failed_eviction = not legacy("B22")
    owner.request_flow = RequestFlow(cache, forward_chunked=not legacy("B2"), raise_like_upstream=legacy("B19"))
    if not tiered:
        return
    owner.release_deleted_pins = legacy("B1")  # a pin on a node the B1 cascade deleted is released as upstream does
    in_flight = owner.in_flight = InFlight()
    owner.backup = Backup(cache, device, host, controller, in_flight, contiguous=not legacy("B4"),
                          lock_while_making_room=not legacy("B18"), drain_unlocks=not legacy("B15"),
                          strict_load_acks=legacy("B20"))
    owner.load_back_rule = LoadBackRule(config.load_back_threshold, quota_ignored_with_restore=legacy("B13"))
    owner.loader = LoadBack(cache, device, host, controller, in_flight, cache.load_back_rule,
                            pin_sources=not legacy("B14"), at_mru=legacy("B17"), request_slot_first=legacy("B19"))
    storage = StorageTier(config.model, config.page_size, controller.manual_acks) if config.enable_storage else None
    owner.storage = storage
    owner.storage_ops = StorageOps(cache, storage, tree, device, host, in_flight, cache.lookup, cache.inserter,
                                   skip_full_lru=legacy("B3"), hang_under_unbacked=legacy("B6"),
                                   old_pin_rule=legacy("B5"), faults=controller.faults) if storage is not None else None


def host_parts(cache, manual_acks: bool) -> tuple[HostTier, TransferController]:
    """The host tier and transfer controller of a tiered cache (host pools pinned on a GPU)."""
    config, device = cache.config, cache.device
    pin = device.type == "cuda"
    cache = weakref.proxy(cache)
    host = HostTier(
        KVPool(config.model, config.host_kv_tokens, config.page_size, "cpu", pin_memory=pin),
        MambaPool(config.model, config.host_mamba_slots, "cpu", pin_memory=pin),
        cache.events, old_leaf_rule=config.has_legacy("B5"),
    )
    engine = make_engine(config.copy_engine, device)
    pools = (cache.kv_pool, cache.mamba_pool, host.host_kv_pool, host.host_mamba_pool)
    faults = parse_faults(config.faults)
    if faults is not None:  # the controller sees pools whose allocations may fail, through an engine that may
        engine = FaultyEngine(engine, faults)
        pools = tuple(FaultyPool(p, faults) for p in pools)
    controller = TransferController(
        *pools,
        manual_acks=manual_acks,
        # looked up at each call, so that they are bracketed while anyone listens
        evict_host_states=lambda n: cache.evict_mamba_host(n),
        evict_device_states=lambda n: cache.evict_mamba(n),
        engine=engine,
    )
    controller.faults = faults
    return host, controller
