"""Legacy switches: each known bug of the reference (section 5) as a behaviour you can turn back on.

``CacheConfig(legacy={"B1"})`` (or the alias, ``{"cascade_ignores_host_pins"}``) restores the old
code path exactly, so a notebook can show the symptom next to the fix. Switches are read only where
the cache is built (:mod:`himamba.cache.build`): each picks a policy object or sets one named variant
flag of a part, and each entry's ``where`` names that variant and the function it changes. By default every switch is
off: the cache behaves as current upstream *and* also fixes the bugs upstream left open
(B3, B6, B7, B8, B10, B13) and adds the guards B14-B22.

====  ==================================  ===========================================================  ==================
id    alias                               symptom with the switch on                                   fixed upstream?
====  ==================================  ===========================================================  ==================
B1    cascade_ignores_host_pins           the tombstone cascade deletes a host-pinned node; a later    yes (#23696)
                                          ``evict_host`` fails: ``parent does not have child key``
B2    chunked_not_forwarded               ``cache_unfinished_req`` drops ``chunked``: every prefill    yes (#23696)
                                          chunk counts a hit and is written to host
B3    host_insert_skips_full_lru          ``_insert_helper_host`` retimes device nodes without         no (open)
                                          moving them in the full LRU: list order != time order
B4    backup_ignores_contiguity           ``write_backup`` backs up a child of a non-backed-up         yes (#22062)
                                          parent; evicting the parent asserts ``non-leaf``
B5    old_host_leaf_rule                  host leaf = "no evicted+backed-up child", only ``hr``        yes (unconfirmed PR)
                                          counted, ``evict_mamba_host`` skips pinned nodes
B6    host_insert_under_unbacked_parent   prefetch hangs host children under a device node that is     no (inferred)
                                          not backed up; evicting it asserts ``non-leaf``
B7    write_back_ignores_failed_backup    write-back demotes a leaf whose backup failed: assertion     no (inferred)
                                          ``not backuped``
B8    evict_mamba_takes_locked_leaf       ``evict_mamba`` picks a childless, full-locked leaf:         no (#21406 closed)
                                          ``evict device leaf: full_lock_ref mismatch``
B10   lock_release_drops_state_lock     a lock taken on a tombstone, released after a state was     no (#27147)
                                          attached, unlocks that state: it can be evicted while a
                                          load into it is still queued
B13   quota_ignored_with_restore          load-back ignores threshold and ``mem_quota`` whenever a     no (maybe intended)
                                          state is restored
B14   load_back_unpinned                  load-back does not pin the host copies it reads while        no (open in 0.5.11)
                                          device room is made (the unpin no longer moves the host
                                          state to the MRU end)
B15   write_back_drain_keeps_locks        a blocking write-back drain leaks the locks of the           no (open in 0.5.11)
                                          write-through writes it consumes
B16   evict_pushes_parent                 after a cascade, eviction queues ``x.parent`` (maybe         no (open in 0.5.11)
                                          deleted), not the deepest surviving ancestor
B17   loaded_nodes_at_mru                 loaded-back nodes enter the full/mamba lists at the MRU end  no (open in 0.5.11)
B18   backup_host_room_unlocked           ``write_backup``'s ``evict_host`` retry runs with the node   no (open in 0.5.11)
                                          unlocked; the cascade may delete it
B19   upstream_failure_paths              no state slot for a request raises as upstream (``Runtime    no (open in 0.5.11)
                                          Error``/assertion); load-back takes that slot before the KV
B20   load_ack_pops_strictly              ``loading_check`` of a node loaded twice: ``KeyError``       no (open in 0.5.11)
B21   device_tree_strict_asserts          device tree: evicting a childless tombstone, releasing a     no (open in 0.5.11)
                                          lock taken on a tombstone, assert
B22   cow_lock_leak                       a failure inside copy-on-write's eviction leaves the lock    no (open in 0.5.11)
B23   load_back_from_last_host            ``init_load_back`` starts at ``last_host_node``: a prefix    no (fixed after
                                          on device but not backed up reloads an ancestor's host-only  0.5.11: #25088)
                                          state and hands the ancestor back as the request's node
====  ==================================  ===========================================================  ==================

B14-B22 are the guards and clean errors himamba adds beyond SGLang 0.5.11; each entry's
``why_default`` says why the default differs. Their "fixed upstream?" entries are ours, found by
running SGLang 0.5.11 side by side (:mod:`himamba.differential`); the reference predates them.

B23 onwards are mechanisms reported against the real code in 2026 (the issue or PR number is in
the entry); each is proven on SGLang 0.5.11 itself by the differential runner.

The profile ``legacy="sglang-0.5.11"`` (:data:`LEGACY_PROFILES`) turns on every switch whose
"fixed upstream?" is "no": the cache then behaves as SGLang 0.5.11, failure paths included
(:class:`~himamba.errors.UpstreamFailure` or :class:`~himamba.errors.CacheAssertionError` with
upstream's message). Profiles combine with switches: ``legacy={"sglang-0.5.11", "B1"}``.

B9, B11 and B12 are hazards without a single old code path (see the reference); they are shown in
notebooks but have no switch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from himamba.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class LegacyBug:
    """One known bug: id, descriptive alias, what goes wrong, and whether upstream fixed it."""

    id: str
    alias: str
    symptom: str
    fixed_upstream: str
    why_default: str = ""  # for a guard beyond upstream: why himamba's default differs
    where: str = ""  # the variant it selects in cache/build.py, and the one function it changes


LEGACY_BUGS: dict[str, LegacyBug] = {
    bug.id: bug
    for bug in (
        LegacyBug("B1", "cascade_ignores_host_pins",
                  "the cascade deletes a host-pinned node; evict_host then fails with "
                  "'parent does not have child key'", "yes (#23696)",
                  where="policy: TieredCascadeRule(honour_pins=False) -> TieredCascadeRule.stop_reason; cache.release_deleted_pins=True -> HiMambaRadixCache.release_host"),
        LegacyBug("B2", "chunked_not_forwarded",
                  "cache_unfinished_req drops `chunked`: every chunk counts a hit and is backed up",
                  "yes (#23696)",
                  where="RequestFlow(forward_chunked=False) -> RequestFlow.cache_unfinished_req"),
        LegacyBug("B3", "host_insert_skips_full_lru",
                  "_insert_helper_host retimes device nodes without a full-LRU move", "no (open)",
                  where="StorageOps(skip_full_lru=True) -> StorageOps.insert_host"),
        LegacyBug("B4", "backup_ignores_contiguity",
                  "write_backup backs up a child of an un-backed-up parent; 'non-leaf' on eviction",
                  "yes (#22062)",
                  where="Backup(contiguous=False) -> Backup.write"),
        LegacyBug("B5", "old_host_leaf_rule",
                  "old host-leaf test and pin handling in evict_host / evict_mamba_host",
                  "yes (PR unconfirmed)",
                  where="HostTier(old_leaf_rule=True) -> HostTier.is_leaf / pin / admits; Eviction(old_host_rule=True) -> Eviction.delete_host_leaf / evict_mamba_host; StorageOps(old_pin_rule=True) -> prefetch_from_storage"),
        LegacyBug("B6", "host_insert_under_unbacked_parent",
                  "prefetched host nodes hang under a device node that is not backed up",
                  "no (inferred)",
                  where="StorageOps(hang_under_unbacked=True) -> StorageOps.insert_host"),
        LegacyBug("B7", "write_back_ignores_failed_backup",
                  "write-back demotes a leaf whose backup failed: 'not backuped'", "no (inferred)",
                  where="policy: WriteBack(demote_failed=True) -> WriteBack.evict_leaf"),
        LegacyBug("B8", "evict_mamba_takes_locked_leaf",
                  "evict_mamba evicts a childless full-locked leaf: 'full_lock_ref mismatch'",
                  "no (#21406 closed)",
                  where="Eviction(take_locked_leaf=True) -> Eviction.evict_mamba"),
        LegacyBug("B10", "lock_release_drops_state_lock",
                  "releasing a lock taken on a tombstone unlocks a state attached since (by an insert, "
                  "or by a load-back: #27147)",
                  "no (#27147, closed unmerged)",
                  where="DeviceTier(guard_lock_release=False) -> DeviceTier.unlock"),
        LegacyBug("B13", "quota_ignored_with_restore",
                  "load-back skips threshold and mem_quota whenever a state is restored",
                  "no (maybe intended)",
                  where="policy: LoadBackRule(quota_ignored_with_restore=True) -> LoadBackRule.skip"),
        LegacyBug("B14", "load_back_unpinned",
                  "load-back does not pin the host copies it reads while device room is made: the "
                  "evictions it causes may free them", "no (open in 0.5.11)",
                  "the evictions a load-back causes can free the very host copy being loaded (TypeError upstream)",
                  where="LoadBack(pin_sources=False) -> LoadBack.make_room (and the failures it leads to in issue / adopt)"),
        LegacyBug("B15", "write_back_drain_keeps_locks",
                  "a blocking write-back drain consumes write-through acks without unlocking "
                  "their nodes: the locks leak", "no (open in 0.5.11)",
                  "a leaked lock makes its node unevictable for ever",
                  where="Backup(drain_unlocks=False) -> Backup.writing_check"),
        LegacyBug("B16", "evict_pushes_parent",
                  "after a cascade, eviction queues x.parent (possibly just deleted) instead of the "
                  "deepest surviving ancestor", "no (open in 0.5.11)",
                  "queueing a deleted node stops eviction early: it frees less than asked though leaves remain",
                  where="Eviction(queue_parent=True, tiered cache) -> Eviction.evict_leaves"),
        LegacyBug("B17", "loaded_nodes_at_mru",
                  "loaded-back nodes enter the full and mamba lists at the MRU end, out of time order",
                  "no (open in 0.5.11)",
                  "list order must equal time order (the sanity check upstream runs fails otherwise)",
                  where="LoadBack(at_mru=True) -> LoadBack.adopt"),
        LegacyBug("B18", "backup_host_room_unlocked",
                  "write_backup's evict_host retry runs without locking the node being written: "
                  "the cascade may delete it", "no (open in 0.5.11)",
                  "the cascade of a host child's eviction can delete the node being written",
                  where="Backup(lock_while_making_room=False) -> Backup.write; DeviceTier(tolerant_unlist=True) -> drop_kv / drop_state"),
        LegacyBug("B19", "upstream_failure_paths",
                  "a state slot that cannot be had raises where upstream raises (RuntimeError / "
                  "assertion), a load-back takes the request's slot before the KV and leaves the "
                  "ancestor locked on failure", "no (open in 0.5.11)",
                  "a shortage of state slots is an input condition to report cleanly, not a crash",
                  where="Lookup / RequestFlow(raise_like_upstream=True) -> copy_state_to_request / _alloc_mamba_slot; LoadBack(request_slot_first=True) -> LoadBack.load_back"),
        LegacyBug("B20", "load_ack_pops_strictly",
                  "loading_check pops each acked node id strictly: a state loaded twice raises KeyError",
                  "no (open in 0.5.11)",
                  "a second load of a node already queued is legal; its ack must not crash",
                  where="Backup(strict_load_acks=True) -> Backup.loading_check"),
        LegacyBug("B21", "device_tree_strict_asserts",
                  "device tree: evict takes a childless tombstone ('leaf node mamba value is not None'), "
                  "dec_lock_ref asserts mamba_lock_ref > 0", "no (open in 0.5.11)",
                  "a childless tombstone is garbage to delete, and a lock taken on a tombstone is released cleanly",
                  where="DeviceTier(strict_release=True) -> DeviceTier.unlock; Eviction(strict_leaf=True) -> Eviction.delete_leaf (device cache)"),
        LegacyBug("B22", "cow_lock_leak",
                  "a failure while copy-on-write evicts for the request's slot leaves the matched node "
                  "locked", "no (open in 0.5.11)",
                  "a failed eviction must not leave a lock behind",
                  where="cache.release_lock_on_failed_eviction=False -> RadixCacheBase.alloc_state"),
        LegacyBug("B23", "load_back_from_last_host",
                  "init_load_back starts at last_host_node: a matched prefix on device but not backed "
                  "up reloads an ancestor's host-only state (a state slot and a transfer spent) and "
                  "hands that ancestor back as the request's last node (and lock)", "no (fixed after 0.5.11: #25088)",
                  "the load-back must start where the usable prefix ends (best_match_node), as upstream does since #25088",
                  where="Lookup(load_back_from_last_host=True) -> Lookup.tiered_result"),
    )
}

_BY_ALIAS = {bug.alias: bug.id for bug in LEGACY_BUGS.values()}

# Named sets of switches. "sglang-0.5.11" restores SGLang 0.5.11 exactly: its open bugs on and
# every himamba fix or guard beyond it off (the switches whose "fixed upstream?" is "no").
LEGACY_PROFILES: dict[str, frozenset[str]] = {
    "sglang-0.5.11": frozenset(b.id for b in LEGACY_BUGS.values() if b.fixed_upstream.startswith("no")),
}


def normalize_legacy(names: Iterable[str] | str | None) -> frozenset[str]:
    """Turn ids or aliases into a frozenset of ids; an unknown name raises InvalidInputError."""
    if names is None:
        return frozenset()
    if isinstance(names, str):
        names = [names]
    out = set()
    for name in names:
        if not isinstance(name, str):
            raise InvalidInputError(f"legacy switch names are strings, got {name!r}")
        key = name.strip()
        if key.lower() in LEGACY_PROFILES:
            out |= LEGACY_PROFILES[key.lower()]
            continue
        bug_id = key.upper() if key.upper() in LEGACY_BUGS else _BY_ALIAS.get(key)
        if bug_id is None:
            known = ", ".join([f"{b.id} ({b.alias})" for b in LEGACY_BUGS.values()] + [f"profile {p!r}" for p in LEGACY_PROFILES])
            raise InvalidInputError(f"unknown legacy switch {name!r}; known: {known}")
        out.add(bug_id)
    return frozenset(out)
