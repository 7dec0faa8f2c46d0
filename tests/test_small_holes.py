"""Small holes found by a hostile tester, each closed: what a caller gets back is theirs, numpy
sizes are sizes, a request the cache cannot take is refused before anything is evicted."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_healthy, make_cache, node_at, put

import himamba as hm


def test_config_takes_numpy_integers_as_ints():
    config = hm.CacheConfig(device="cpu", device_kv_tokens=np.int64(64), page_size=np.int32(1),
                            device_mamba_slots=np.int64(4))
    assert type(config.device_kv_tokens) is int and config.device_kv_tokens == 64
    assert_healthy(hm.MambaRadixCache(config))
    with pytest.raises(hm.InvalidInputError, match="device_kv_tokens"):
        hm.CacheConfig(device_kv_tokens=np.float64(64))


def test_init_load_back_returns_the_callers_copy():
    cache = make_cache(cls=hm.HiMambaRadixCache, load_back_threshold=1)
    put(cache, [1, 2, 3])
    cache.writing_check()
    cache.evict(3)
    node = node_at(cache, [1, 2, 3])
    loaded, _ = cache.init_load_back(cache.match_prefix([1, 2, 3]).best_match_node)
    kept = node.value.clone()
    loaded.fill_(0)  # the caller scribbles on what it was given
    assert bool((node.value == kept).all())
    cache.ready_to_load_host_cache()
    cache.loading_check()
    assert_healthy(cache)


def test_serve_refuses_an_unaligned_request_before_evicting():
    cache = make_cache(page_size=4, device_kv_tokens=8)
    put(cache, [1] * 4)
    put(cache, [2] * 4)
    before = hm.take(cache)
    with pytest.raises(hm.InvalidInputError, match="page size 4"):
        hm.serve(cache, [3] * 6)
    assert hm.take(cache).nodes == before.nodes  # nothing evicted
    assert_healthy(cache)
