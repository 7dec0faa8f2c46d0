"""The generic cache conformance tests (tests/conformance.py) on the tiered HiMambaRadixCache,
once per write policy, and with 4-token pages (extra-buffer mode) under write_through.

"Evicted" means "no longer on the device" (a node may stay in the tree on host), and ``settle``
processes the write acks that release write-through locks before each check. One claim needs a
tiered reading: under the write-through policies a node is backed up with its state, so after
its device state is evicted it still ends a usable prefix through its *host* state (a
state-only host hit, reference §3.1); the tombstone test therefore drops that host state too
before checking that the lookup reuses nothing.
"""

from __future__ import annotations

from conformance import CacheConformance

import himamba as hm


class TieredConformance(CacheConformance):
    cache_class = hm.HiMambaRadixCache

    def test_tombstone_cuts_usable_prefix(self):
        """A tombstone with a host state still ends a usable prefix (host_hit_length 1, its
        device KV reused); once its host state is gone too, a lookup ending at it reuses
        nothing while a lookup through it to a descendant with a state reuses everything."""
        cache, a, ab, na, nab = self.inner_state_evicted()
        backed_up = cache.config.write_policy != "write_back"
        assert (na.mamba_host_value is not None) is backed_up  # selective: 2 hits (a, then ab)
        if backed_up:
            m = cache.match_prefix(a)
            self.check(cache)
            assert m.prefix_len == len(a) and m.last_device_node is na and m.host_hit_length == 1
            assert cache.mamba_host_lru_list.order()[-1] == na.id
            assert cache.evict_mamba_host(1) == 1
            self.check(cache)
            assert na.mamba_host_value is None and na.value is not None
        assert (na.host_value is not None) is backed_up
        m = cache.match_prefix(a)
        self.check(cache)
        assert m.prefix_len == 0 and m.last_device_node is cache.root_node
        assert m.host_hit_length == 0
        m = cache.match_prefix(ab)
        self.check(cache)
        assert m.prefix_len == len(ab) and m.last_device_node is nab


class TestHiMambaWriteBack(TieredConformance):
    config = {"write_policy": "write_back"}


class TestHiMambaWriteThrough(TieredConformance):
    config = {"write_policy": "write_through"}


class TestHiMambaWriteThroughSelective(TieredConformance):
    config = {"write_policy": "write_through_selective"}


class TestHiMambaWriteThroughPage4(TieredConformance):
    config = {"write_policy": "write_through", "page_size": 4, "device_kv_tokens": 128,
              "host_kv_tokens": 512}
