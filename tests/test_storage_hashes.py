"""Storage page hashes: the write side (a backup to storage) and the prefetch side name the same
pages, in the cases two 2026 reports describe against SGLang (#26448: a prefetch chained from no
hash at all; #26177: a cached prefix-hash list that a caller extended in place).

In himamba both sides derive every page hash from the tokens of the whole path from the root
(``page_hashes`` started at ``StorageOps.path_hash``), and every call returns a new list, so
neither report can arise here. The last tests read the same facts off SGLang 0.5.11's own hash
helpers (skipped where it is not installed): its write- and prefetch-side chains agree, and its
cached prefix-hash list is shared with whoever extends it.
"""

from __future__ import annotations

import pytest
from helpers import assert_healthy, node_at, put

import himamba as hm
from himamba.cache.storage import page_hashes
from himamba.differential import upstream
from himamba.memory.content import prefix_fingerprint

needs_upstream = pytest.mark.skipif(not upstream.upstream_available(),
                                    reason="SGLang 0.5.11 is not installed (make differential)")
TOKENS = [11, 12, 13, 14, 15, 16, 17, 18]


def tiered(manual_acks: bool = False, **config) -> hm.HiMambaRadixCache:
    """A write-back tiered cache on the CPU with storage on."""
    config.setdefault("write_policy", "write_back")
    return hm.HiMambaRadixCache(hm.CacheConfig(device="cpu", enable_storage=True, **config),
                                manual_acks=manual_acks)


def backed_up_to_storage(cache: hm.HiMambaRadixCache, tokens: list[int]) -> hm.TreeNode:
    """Insert ``tokens`` on device, write the node back to host; the write ack starts its
    storage backup, which is then finished. Returns the node."""
    put(cache, tokens)
    node = node_at(cache, tokens)
    assert cache.write_backup(node, write_back=True) == len(node.key)
    assert cache.writing_check(write_back=True) == 1
    assert cache.check_storage_progress() == 1
    assert_healthy(cache)
    return node


def emptied(cache: hm.HiMambaRadixCache) -> None:
    """Evict everything from device and host: only storage keeps the pages."""
    cache.evict(cache.config.device_kv_tokens)
    cache.evict_host(cache.config.host_kv_tokens)
    assert_healthy(cache)
    assert cache.num_nodes() == 0


def test_page_hashes_chain_is_the_path_fingerprint():
    """Hash i is the fingerprint of every token up to the end of page i, whether the chain starts
    at the root or continues a prefix's fingerprint: a split point changes no hash."""
    for ps in (1, 2, 4):
        whole = page_hashes(TOKENS, ps)
        assert whole == [prefix_fingerprint(TOKENS[: (i + 1) * ps]) for i in range(len(TOKENS) // ps)]
        for cut in range(ps, len(TOKENS), ps):
            tail = page_hashes(TOKENS[cut:], ps, prefix_fingerprint(TOKENS[:cut]))
            assert tail == whole[cut // ps :]
    assert page_hashes(TOKENS[:3], 2) == page_hashes(TOKENS[:2], 2), "a partial page is not hashed"


def test_prefetch_from_the_root_hits_what_a_backup_wrote():
    """#26448's case from the root: the backup's pages are exactly the root-anchored chain, and a
    prefetch from the root after everything was evicted hits every one of them."""
    cache = tiered()
    backed_up_to_storage(cache, TOKENS)
    assert set(cache.storage.pages) == set(page_hashes(TOKENS, 1))
    emptied(cache)

    assert cache.prefetch_from_storage("r", cache.root_node, TOKENS) == len(TOKENS)
    assert_healthy(cache)
    assert cache.check_prefetch_progress("r") == len(TOKENS)
    assert_healthy(cache)
    node = node_at(cache, TOKENS)
    assert node.kv_tier() == "H" and node.state_tier() == "h"
    assert cache.match_prefix(TOKENS).host_hit_length == len(TOKENS)
    assert_healthy(cache)


def test_prefetch_from_a_host_node_after_a_split_continues_its_path():
    """#26448's case below the root: a host node made by a prefetch is split by a second
    prefetch; prefetches anchored at either half hit the rest of the stored prefix, and a backup
    of the lower half writes no new page (its hashes are the ones already stored)."""
    cache = tiered()
    backed_up_to_storage(cache, TOKENS)
    emptied(cache)
    assert cache.prefetch_from_storage("r1", cache.root_node, TOKENS[:4]) == 4
    assert cache.check_prefetch_progress("r1") == 4
    assert_healthy(cache)
    assert cache.prefetch_from_storage("r2", cache.root_node, TOKENS[:2]) == 2
    assert cache.check_prefetch_progress("r2") == 0
    assert_healthy(cache)
    upper, lower = node_at(cache, TOKENS[:2]), node_at(cache, TOKENS[:4])
    assert lower.parent is upper and upper.key.token_ids == TOKENS[:2] and lower.key.token_ids == TOKENS[2:4]

    stored = len(cache.storage.pages)
    op = cache.write_backup_storage(lower)
    assert op is not None and cache.check_storage_progress() == 1
    assert len(cache.storage.pages) == stored
    assert_healthy(cache)

    assert cache.prefetch_from_storage("r3", upper, TOKENS[2:]) == 6
    assert cache.check_prefetch_progress("r3") == 4
    assert_healthy(cache)
    tail = node_at(cache, TOKENS)
    assert tail.parent is lower and tail.key.token_ids == TOKENS[4:]
    assert cache.match_prefix(TOKENS).host_hit_length == len(TOKENS)
    assert_healthy(cache)


def test_a_caller_extending_a_hash_list_changes_no_later_hash():
    """#26177's case: extending, in place, the hash list of a backup in flight (as SGLang's
    controller extends its prefix-key list page batch by page batch) leaves the next node's
    hashes, and ``page_hashes`` itself, as they were: no list is shared between calls."""
    first = page_hashes(TOKENS, 2)
    first += first
    assert page_hashes(TOKENS, 2) == first[:4]

    cache = tiered(manual_acks=True)
    put(cache, TOKENS[:4])
    put(cache, TOKENS)
    upper, lower = node_at(cache, TOKENS[:4]), node_at(cache, TOKENS)
    assert cache.write_backup(upper, write_back=True) == 4
    assert cache.write_backup(lower, write_back=True) == 4
    assert cache.writing_check(write_back=True) == 2
    assert_healthy(cache)
    ops = {op.payload["node"].id: op for op in cache.storage.ops if op.kind == "backup"}
    upper_hashes = ops[upper.id].payload["hashes"]
    assert upper_hashes == page_hashes(TOKENS[:4], 1)
    upper_hashes += upper_hashes
    assert ops[lower.id].payload["hashes"] == page_hashes(TOKENS, 1)[4:]
    assert cache.storage_ops.path_hash(lower) == prefix_fingerprint(TOKENS)
    del upper_hashes[4:]

    cache.storage.complete()
    cache.storage.complete()
    assert cache.check_storage_progress() == 2
    assert_healthy(cache)
    assert set(cache.storage.pages) == set(page_hashes(TOKENS, 1))


# -- SGLang 0.5.11's own hash helpers ------------------------------------------------------------------
def _upstream_chain(page_size: int):
    """Root → n1 → n2 → n3 → n4 of 0.5.11's hybrid-tree ``TreeNode``, one page each, with the
    hashes its cache gives a node when it is made (``compute_node_hash_values``)."""
    upstream.require_upstream()
    from sglang.srt.mem_cache.mamba_radix_cache import TreeNode
    from sglang.srt.mem_cache.radix_cache import RadixKey, compute_node_hash_values

    root = TreeNode()
    root.key = RadixKey([])
    nodes, parent = [], root
    for i in range(4):
        node = TreeNode()
        node.parent, node.key = parent, RadixKey(TOKENS[i * page_size : (i + 1) * page_size])
        node.hash_value = compute_node_hash_values(node, page_size)
        nodes.append(node)
        parent = node
    return root, nodes


@needs_upstream
def test_upstream_write_and_prefetch_chains_agree():
    """In 0.5.11 the prefetch side chains from the anchor's last page hash (``None`` at the root),
    which the scheduler passes through ``prefetch_from_storage`` to the controller; the write
    side chains each node from its parent's last hash. The two agree from the root and from a
    node below it: #26448's ``last_hash=None`` mismatch is not in this code."""
    ps = 2
    root, nodes = _upstream_chain(ps)
    from sglang.srt.mem_cache.utils import get_hash_str

    for k, anchor in enumerate([root, *nodes[:-1]]):
        last, chain = anchor.get_last_hash_value(), []
        for i in range(k * ps, len(TOKENS), ps):
            last = get_hash_str(TOKENS[i : i + ps], last)
            chain.append(last)
        assert chain == [h for n in nodes[k:] for h in n.hash_value]
    assert root.get_last_hash_value() is None


@needs_upstream
def test_upstream_prefix_hash_list_is_shared_with_its_callers():
    """0.5.11's ``get_prefix_hash_values`` keeps its last answer (``lru_cache(maxsize=1)``) and
    returns that very list; extending it in place, as the controller's backup and prefetch
    loops do with ``prefix_keys``, makes the next node's prefix list repeat a page (#26177)."""
    root, (n1, n2, n3, n4) = _upstream_chain(2)
    keys = n3.get_prefix_hash_values(n2)
    assert keys == n1.hash_value + n2.hash_value
    keys += n3.hash_value
    later = n4.get_prefix_hash_values(n3)
    assert later == n1.hash_value + n2.hash_value + n3.hash_value + n3.hash_value
    assert later != [h for n in (n1, n2, n3) for h in n.hash_value]
