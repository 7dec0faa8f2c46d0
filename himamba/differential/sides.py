"""The two sides of a differential run: himamba's cache and SGLang 0.5.11's, behind one interface.

Each side answers the same calls (match, lock, the four evictions, load-back, pins, request
steps) by calling its own cache's public methods, and :meth:`Side.snapshot` describes its whole
state in one neutral form (token paths, no ids), so that the two can be compared with ``==``:

* ``tree``: one row per node, ``(path, KV tier, state tier, full_lock_ref, mamba_lock_ref,
  host_ref_counter, host_mamba_ref_counter)``, tiers as ``"D"``, ``"H"``, ``"DH"`` or ``"-"``;
* ``counters``: full/mamba evictable/protected sizes;
* ``lru``: the full, mamba and host-mamba lists, MRU first, as paths;
* ``leaves``: the device- and host-leaf sets (sorted paths; ``None`` where the cache keeps none);
* ``pools``: free device KV, device states, host KV, host states.

Size: over 300 lines because the two sides answer the same calls one for one; kept in one file so
that each himamba method sits next to its SGLang counterpart's.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

Path = tuple[int, ...]


def _tier(device, host) -> str:
    return ("D" if device is not None else "") + ("H" if host is not None else "") or "-"


class Side:
    """What both sides implement; ``node`` arguments are the side's own node objects."""

    name = "side"
    tiered = False

    def root(self):
        return self.cache.root_node

    def path(self, node) -> Path:
        parts = []
        while node is not None and node is not self.cache.root_node:
            parts.append(tuple(node.key.token_ids))
            node = node.parent
        return tuple(t for part in reversed(parts) for t in part)

    def node_at(self, tokens: list[int]):
        """The node whose edge ends exactly after ``tokens`` (pure lookup), or ``None``."""
        node, rest = self.cache.root_node, list(tokens)
        while rest:
            child = node.children.get(rest[0])
            if child is None:
                return None
            k = list(child.key.token_ids)
            if rest[: len(k)] != k:
                return None
            node, rest = child, rest[len(k):]
        return node

    # -- calls both caches answer with the same method names -------------------------------------
    def lock(self, node) -> None:
        self.cache.inc_lock_ref(node)

    def unlock(self, node) -> None:
        self.cache.dec_lock_ref(node)

    def evict_mamba(self, n: int) -> int:
        return self.cache.evict_mamba(n)

    def evict_host(self, n: int) -> None:
        self.cache.evict_host(n)

    def evict_mamba_host(self, n: int) -> int:
        return self.cache.evict_mamba_host(n)

    def events(self) -> None:
        self.cache.ready_to_load_host_cache()
        self.cache.check_hicache_events()

    def request_state(self, req):
        return req.mamba_pool_idx

    def leaf_sets(self):
        c = self.cache
        if not self.tiered:
            return None
        return tuple(sorted(self.path(n) for n in leaves)
                     for leaves in (c.evictable_full_device_leaves, c.evictable_full_host_leaves))

    # -- snapshot ------------------------------------------------------------------------------------
    def _nodes(self):
        stack = [self.cache.root_node]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def snapshot(self) -> dict:
        c = self.cache
        rows = []
        for n in self._nodes():
            if n is c.root_node:
                continue
            host_value = getattr(n, "host_value", None)
            rows.append((self.path(n), _tier(n.value, host_value), _tier(n.mamba_value, getattr(n, "mamba_host_value", None)),
                         n.full_lock_ref, n.mamba_lock_ref, getattr(n, "host_ref_counter", 0),
                         getattr(n, "host_mamba_ref_counter", 0)))
        return {
            "tree": sorted(rows),
            "counters": (c.full_evictable_size(), c.full_protected_size(), c.mamba_evictable_size(),
                         c.mamba_protected_size()),
            "lru": tuple(tuple(self.path(n) for n in nodes) for nodes in self.lru_orders()),
            "leaves": self.leaf_sets(),
            "pools": self.pool_free(),
        }


# -- himamba -----------------------------------------------------------------------------------------
class HimambaSide(Side):
    """himamba's cache (``MambaRadixCache`` or ``HiMambaRadixCache``)."""

    name = "himamba"

    def __init__(self, config, tiered: bool) -> None:
        from himamba.cache.hi_mamba import HiMambaRadixCache
        from himamba.cache.mamba import MambaRadixCache

        self.tiered = tiered
        self.cache = HiMambaRadixCache(config) if tiered else MambaRadixCache(config)

    def new_request(self, tokens: list[int]):
        from himamba.cache.results import Request

        return Request(list(tokens), self.cache._empty_indices)

    def match(self, tokens, req=None):
        m = self.cache.match_prefix(tokens, req=req, cow_mamba=req is not None)
        return SimpleNamespace(indices=m.device_indices, device_node=m.last_device_node, host_node=m.last_host_node,
                               host_hit=m.host_hit_length, load_node=m.best_match_node)

    def evict(self, n: int) -> int:
        return self.cache.evict(n)

    def load_back(self, node, quota, req=None):
        loaded, last = self.cache.init_load_back(node, mem_quota=quota, req=req)
        self.cache.ready_to_load_host_cache()
        return loaded, last

    def pin(self, node, mamba: bool) -> None:
        self.cache.protect_host(node, mamba=mamba)

    def unpin(self, node, mamba: bool) -> None:
        self.cache.release_host(node, mamba=mamba)

    def alloc_kv(self, n: int):
        pool = self.cache.kv_pool
        if pool.available_size() < n:
            self.cache.evict(n - pool.available_size())
        return pool.alloc(n)

    def alloc_state(self):
        pool = self.cache.mamba_pool
        if pool.available_size() < 1:
            self.cache.evict_mamba(1)
        return pool.alloc(1)

    def free_kv(self, kv) -> None:
        self.cache.kv_pool.free(kv)

    def free_state(self, slot) -> None:
        self.cache.mamba_pool.free(slot)

    def insert(self, tokens, kv, state, prev_prefix_len: int):
        r = self.cache.insert(tokens, kv, state, prev_prefix_len=prev_prefix_len)
        return r.prefix_len, r.mamba_exist

    def chunked(self, tokens: list[int], chunk: int, node, prefix, new, slot) -> None:
        from himamba.cache.results import Request

        req = Request(list(tokens), torch.cat((prefix, new)), slot, last_node=node, cache_protected_len=len(prefix))
        fill = len(prefix)
        while fill < len(tokens) - chunk:
            fill += chunk
            req.fill_len = fill
            self.cache.cache_unfinished_req(req, chunked=True)
        req.fill_len = None
        self.cache.cache_finished_req(req)

    def lru_orders(self):
        c = self.cache
        lists = [c.full_lru_list, c.mamba_lru_list] + ([c.mamba_host_lru_list] if self.tiered else [])
        return [list(lst.nodes()) for lst in lists]

    def pool_free(self):
        c = self.cache
        free = [c.kv_pool.available_size(), c.mamba_pool.available_size()]
        if self.tiered:
            free += [c.host_kv_pool.available_size(), c.host_mamba_pool.available_size()]
        return tuple(free)


# -- SGLang 0.5.11 -----------------------------------------------------------------------------------
class _Req(SimpleNamespace):
    """Stand-in for SGLang's ``Req``: the fields the cache methods read and write."""

    def pop_committed_kv_cache(self) -> int:
        return self.kv_committed_len


class UpstreamSide(Side):
    """SGLang 0.5.11's own ``MambaRadixCache`` / ``HiMambaRadixCache`` (see :mod:`.upstream`)."""

    name = "sglang-0.5.11"

    def __init__(self, config, tiered: bool) -> None:
        from himamba.differential.upstream import build_upstream

        self.tiered = tiered
        self.cache = build_upstream(config, tiered)
        from sglang.srt.mem_cache import base_prefix_cache as params
        from sglang.srt.mem_cache.radix_cache import RadixKey

        self.P, self.RadixKey = params, RadixKey
        self.kv = self.cache.token_to_kv_pool_allocator
        self.states = self.cache.req_to_token_pool.mamba_pool

    def new_request(self, tokens: list[int]):
        return _Req(mamba_pool_idx=None, origin_input_ids=list(tokens), output_ids=[], extra_key=None,
                    req_pool_idx=None, is_chunked=0, kv_committed_len=0, last_node=None, cache_protected_len=0,
                    prefix_indices=None, mamba_last_track_seqlen=None, fill_ids=list(tokens),
                    mamba_ping_pong_track_buffer=None, mamba_next_track_idx=0)

    def match(self, tokens, req=None):
        m = self.cache.match_prefix(self.P.MatchPrefixParams(key=self.RadixKey(list(tokens)), req=req,
                                                             cow_mamba=req is not None))
        # 0.5.11's scheduler starts init_load_back at last_host_node (best_match_node since #25088)
        return SimpleNamespace(indices=m.device_indices, device_node=m.last_device_node, host_node=m.last_host_node,
                               host_hit=m.host_hit_length, load_node=m.last_host_node)

    def evict(self, n: int) -> int:
        return self.cache.evict(self.P.EvictParams(num_tokens=n)).num_tokens_evicted

    def load_back(self, node, quota, req=None):
        loaded, last = self.cache.init_load_back(self.P.InitLoadBackParams(last_host_node=node, host_hit_length=0,
                                                                           mem_quota=quota, req=req))
        self.cache.ready_to_load_host_cache()
        return loaded, last

    def pin(self, node, mamba: bool) -> None:
        self.cache._protect_host_node(node, protect_mamba=mamba)

    def unpin(self, node, mamba: bool) -> None:
        self.cache._release_host_node(node, release_mamba=mamba)

    def alloc_kv(self, n: int):
        if self.kv.available_size() < n:
            self.cache.evict(self.P.EvictParams(num_tokens=n - self.kv.available_size()))
        return self.kv.alloc(n)

    def alloc_state(self):
        if self.states.available_size() < 1:
            self.cache.evict(self.P.EvictParams(num_tokens=0, mamba_num=1))
        slot = self.states.alloc(1)
        return None if slot is None else slot[0]

    def free_kv(self, kv) -> None:
        self.kv.free(kv)

    def free_state(self, slot) -> None:
        self.states.free(slot.view(1))

    def insert(self, tokens, kv, state, prev_prefix_len: int):
        r = self.cache.insert(self.P.InsertParams(key=self.RadixKey(list(tokens)), value=kv,
                                                  mamba_value=state.view(1).clone(), prev_prefix_len=prev_prefix_len))
        return r.prefix_len, r.mamba_exist

    def chunked(self, tokens: list[int], chunk: int, node, prefix, new, slot) -> None:
        pool = self.cache.req_to_token_pool
        req = self.new_request(tokens)
        req.mamba_pool_idx, req.last_node, req.cache_protected_len = slot, node, len(prefix)
        pool.alloc([req])
        kv = torch.cat((prefix, new))
        pool.write((req.req_pool_idx, slice(0, len(kv))), kv.to(torch.int32))
        fill = len(prefix)
        try:
            while fill < len(tokens) - chunk:
                fill += chunk
                req.fill_ids = list(tokens[:fill])
                self.cache.cache_unfinished_req(req, chunked=True)
            req.fill_ids = list(tokens)
            req.kv_committed_len = len(tokens)
            self.cache.cache_finished_req(req)
        finally:
            pool.free(req)

    def lru_orders(self):
        c = self.cache
        lists = [c.full_lru_list, c.mamba_lru_list] + ([c.mamba_host_lru_list] if self.tiered else [])
        out = []
        for lst in lists:
            nodes, node = [], getattr(lst.head, lst.nxt)
            while node is not lst.tail:
                nodes.append(node)
                node = getattr(node, lst.nxt)
            out.append(nodes)
        return out

    def pool_free(self):
        c = self.cache
        free = [self.kv.available_size(), self.states.available_size()]
        if self.tiered:
            free += [c.full_kv_pool_host.available_size(), c.mamba_pool_host.available_size()]
        return tuple(free)
