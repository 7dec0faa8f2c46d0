"""SGLang 0.5.23's ``UnifiedRadixCache`` (FULL + MAMBA) built on a CPU and driven like the
differential runner's sides, so that one replay script runs on it too.

:func:`build_unified` builds upstream's own classes, unmodified, over upstream's own device pools
(``HybridReqToTokenPool`` with its mamba allocator, ``HybridLinearKVPool``,
``TokenToKVPoolAllocator``, all real on CPU), on the Python tree core or the Rust tree core
(``core="python" | "rust"``; upstream's ``tree_core_backend``). No host tier is attached unless
``host`` asks for one (:mod:`himamba.lens.host_standins`: CPU stand-ins for what needs CUDA);
without it host values stay absent, and host locks still work as the tree keeps them
(``inc_host_lock_ref``), which is what the cascade's lock rule reads.

:class:`UnifiedSide` answers the calls of :func:`himamba.differential.runner.apply_op` (request,
chunked, match, lock, unlock, evict, evict_mamba). Node handles are the tree's ``NodeId`` ints.
A ``chunked`` operation is served as one whole request (the unified tree's chunked path needs a
scheduler's ``Req``): said here, and the notebook does not rely on it.
"""

from __future__ import annotations

from array import array
from types import SimpleNamespace
from typing import Any

import torch

from himamba.differential.sides import Side
from himamba.lens.unified_trees import remember_tokens

CORES = ("python", "rust")


def build_unified(config: Any, core: str = "python", host: bool = False) -> Any:
    """A ``UnifiedRadixCache`` (FULL + MAMBA) over pools sized by a himamba ``CacheConfig``
    (``device_kv_tokens``, ``device_mamba_slots``, ``page_size`` 1), on the tree core ``core``;
    with ``host``, also its HiCache host tier (:mod:`himamba.lens.unified_host`)."""
    from himamba.differential.standins import install_import_standins
    from himamba.errors import HiMambaError

    if core not in CORES:
        raise HiMambaError(f"unknown tree core {core!r}; expected one of {CORES}")
    if config.page_size != 1:
        raise HiMambaError("the lens builds the unified tree with page_size=1 only")
    install_import_standins()
    from sglang.srt.configs.mamba_utils import Mamba2CacheParams, Mamba2StateShape
    from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import HybridLinearKVPool, HybridReqToTokenPool
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
    from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

    from himamba.lens.host_standins import attach_host_tier, host_server_fields

    extra = host_server_fields(config) if host else {}
    args = ServerArgs(model_path="dummy", page_size=1, device="cpu", **extra)  # "dummy": no model is looked up
    args._mamba_cache_chunk_size = config.mamba_cache_chunk_size  # no model config to read it from
    set_global_server_args_for_scheduler(args)
    shape = Mamba2StateShape.create(tp_world_size=1, intermediate_size=4, n_groups=1, num_heads=1, head_dim=2,
                                    state_size=2, conv_kernel=2)
    req_pool = HybridReqToTokenPool(
        size=4, mamba_size=config.device_mamba_slots, mamba_spec_state_size=4, max_context_len=4096, device="cpu",
        enable_memory_saver=False, cache_params=Mamba2CacheParams(shape=shape, layers=[1]), mamba_layer_ids=[1],
        enable_mamba_extra_buffer=False)
    kv = HybridLinearKVPool(size=config.device_kv_tokens, dtype=torch.float32, page_size=1, head_num=1, head_dim=2,
                            full_attention_layer_ids=[0], device="cpu", enable_memory_saver=False,
                            mamba_pool=req_pool.mamba_pool)
    allocator = TokenToKVPoolAllocator(size=config.device_kv_tokens, dtype=torch.float32, device="cpu", kvcache=kv,
                                       need_sort=False)
    params = CacheInitParams(disable=False, req_to_token_pool=req_pool, token_to_kv_pool_allocator=allocator,
                             page_size=1, tree_components=(ComponentType.FULL, ComponentType.MAMBA),
                             tree_core_backend=core)
    cache = UnifiedRadixCache(params=params)
    if host:
        attach_host_tier(cache, args, params)
    if type(cache.tree_core).__name__.startswith("Rust") != (core == "rust"):
        raise HiMambaError(f"SGLang chose another tree core than {core!r} ({type(cache.tree_core).__name__})")
    return cache


class UnifiedSide(Side):
    """The unified tree behind the differential runner's side interface (device tier only)."""

    tiered = False

    def __init__(self, config: Any, core: str = "python", host: bool = False) -> None:
        self.name = f"sglang-0.5.23 ({core} core)"
        self.cache = build_unified(config, core, host)
        from sglang.srt.mem_cache import base_prefix_cache as params
        from sglang.srt.mem_cache.radix_cache import RadixKey

        self.P, self.RadixKey = params, RadixKey
        self.kv = self.cache.token_to_kv_pool_allocator
        self.states = self.cache.req_to_token_pool.mamba_allocator
        self._locks: dict[int, list[Any]] = {}
        self._host_locks: dict[int, list[Any]] = {}

    def key(self, tokens: list[int]) -> Any:
        return self.RadixKey(array("q", tokens))

    # -- tree reading through the core's own queries -----------------------------------------------
    def root(self) -> int:
        return self.cache.tree_core.root_node_handle()

    def path(self, node: int) -> tuple[int, ...]:
        from himamba.observe.snapshot import take

        snap = take(self.cache)
        parts = []
        while node is not None and snap.node(node).parent is not None:
            parts.append(snap.node(node).key)
            node = snap.node(node).parent
        return tuple(t for part in reversed(parts) for t in part)

    def node_at(self, tokens: list[int]) -> int | None:
        from himamba.observe.snapshot import take

        snap = take(self.cache)
        for v in snap.nodes:
            if not v.is_root and v.start + len(v.key) == len(tokens) and self.path(v.id) == tuple(tokens):
                return v.id
        return None

    # -- the calls of apply_op ---------------------------------------------------------------------------
    def new_request(self, tokens: list[int]) -> None:
        return None

    def request_state(self, req: Any) -> None:
        return None

    def match(self, tokens: list[int], req: Any = None) -> SimpleNamespace:
        m = self.cache.match_prefix(self.P.MatchPrefixParams(key=self.key(list(tokens))))
        indices = self.cache.path_device_indices(m.last_device_node)
        return SimpleNamespace(indices=indices, device_node=m.last_device_node, host_node=m.last_host_node,
                               host_hit=m.host_hit_length)

    def lock(self, node: int) -> None:
        self._locks.setdefault(node, []).append(self.cache.lock(node))

    def unlock(self, node: int) -> None:
        self.cache.unlock(self._locks[node].pop())

    def pin(self, node: int) -> None:
        """Take a host lock on ``node`` (what an in-flight host operation holds)."""
        self._host_locks.setdefault(node, []).append(self.cache.inc_host_lock_ref(node).to_dec_params())

    def unpin(self, node: int) -> None:
        self.cache.dec_host_lock_ref(node, self._host_locks[node].pop())

    def evict(self, n: int) -> int:
        return self.cache.evict(self.P.EvictParams(num_tokens=n)).num_tokens_evicted

    def evict_mamba(self, n: int) -> int:
        return self.cache.evict(self.P.EvictParams(num_tokens=0, mamba_num=n)).mamba_num_evicted

    def alloc_kv(self, n: int) -> Any:
        if self.kv.available_size() < n:
            self.evict(n - self.kv.available_size())
        return self.kv.alloc(n)

    def alloc_state(self) -> Any:
        if self.states.available_size() < 1:
            self.evict_mamba(1)
        slot = self.states.alloc(1)
        return None if slot is None else slot[0]

    def free_kv(self, kv: Any) -> None:
        self.kv.free(kv)

    def free_state(self, slot: Any) -> None:
        self.states.free(slot.view(1))

    def insert(self, tokens: list[int], kv: Any, state: Any, prev_prefix_len: int) -> tuple[int, bool]:
        remember_tokens(self.cache, [int(s) for s in kv.tolist()], list(tokens))
        r = self.cache.insert(self.P.InsertParams(key=self.key(list(tokens)), value=kv,
                                                  mamba_value=state.view(1).clone(), prev_prefix_len=prev_prefix_len))
        return r.prefix_len, r.mamba_exist

    def chunked(self, tokens: list[int], chunk: int, node: int, prefix: Any, new: Any, slot: Any) -> None:
        prefix_len, exist = self.insert(tokens, torch.cat((prefix, new)), slot, len(prefix))
        if exist:
            self.free_state(slot)

    def pool_free(self) -> tuple[int, int]:
        return self.kv.available_size(), self.states.available_size()
