"""The generic cache conformance tests (tests/conformance.py) on the device-tier MambaRadixCache,
with single-token pages and with 4-token pages (extra-buffer mode)."""

from __future__ import annotations

from conformance import CacheConformance

import himamba as hm


class TestMambaRadixCachePage1(CacheConformance):
    cache_class = hm.MambaRadixCache
    config = {"page_size": 1}


class TestMambaRadixCachePage4(CacheConformance):
    cache_class = hm.MambaRadixCache
    config = {"page_size": 4, "device_kv_tokens": 128}
