"""Sizing: from a GPU's memory, the model's weights and a cache fraction to pool sizes.

A serving engine loads the weights, keeps a share of what is left for the prefix cache and splits
that share between the KV of the full-attention layers and the mamba state slots. In block mode
(:mod:`himamba.sim.mooncake`) the KV pool is counted in blocks of ``block_tokens`` tokens::

    sizing = size_pools(ModelSpec.qwen3_next_80b_a3b(), gpu_gb=141, weight_bytes_per_param=1)
    sizing.device_blocks, sizing.device_state_slots

Arithmetic only: nothing is allocated. Gigabytes are decimal (10**9 bytes), as GPU data sheets
count them ("141 GB" for an H200).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from himamba.errors import InvalidInputError
from himamba.memory.model import ModelSpec
from himamba.sim.mooncake import BLOCK_TOKENS

GB = 10**9
GPUS_GB = {"H100": 80.0, "H200": 141.0, "B200": 180.0, "A100-80G": 80.0}
# SGLang's default split: mamba state memory / full-attention KV memory = 0.9
# (``--mamba-full-memory-ratio``), so states get 0.9 / 1.9 of the cache.
SGLANG_STATE_SHARE = 0.9 / 1.9


@dataclass(frozen=True, slots=True)
class PoolSizing:
    """Pool sizes for one model on one GPU (and a host tier), with the bytes behind them."""

    model: str
    block_tokens: int
    gpu_bytes: int
    weight_bytes: int
    cache_bytes: int
    block_bytes: int  # KV of one block of ``block_tokens`` tokens
    state_bytes: int  # one mamba state slot
    device_blocks: int
    device_state_slots: int
    host_bytes: int = 0
    host_blocks: int = 0
    host_state_slots: int = 0

    def describe(self) -> dict[str, object]:
        """The figures as a flat dict (GB decimal, MiB for the per-item sizes)."""
        d = asdict(self)
        for k in ("gpu_bytes", "weight_bytes", "cache_bytes", "host_bytes"):
            d[k.replace("_bytes", "_gb")] = round(d.pop(k) / GB, 2)
        for k in ("block_bytes", "state_bytes"):
            d[k.replace("_bytes", "_mib")] = round(d.pop(k) / 2**20, 2)
        d["tokens_of_kv_on_device"] = self.device_blocks * self.block_tokens
        return d

    def cache_config(self, **changes: object) -> dict[str, object]:
        """:class:`~himamba.CacheConfig` sizes for a block-mode replay (page size 1, one KV slot per
        block); host sizes only when there is a host tier. ``changes`` override entries."""
        cfg: dict[str, object] = {"page_size": 1, "device_kv_tokens": max(1, self.device_blocks),
                                  "device_mamba_slots": max(1, self.device_state_slots)}
        if self.host_bytes:
            cfg.update(host_kv_tokens=max(1, self.host_blocks), host_mamba_slots=max(1, self.host_state_slots))
        cfg.update(changes)
        return cfg


def size_pools(model: ModelSpec, *, gpu_gb: float = GPUS_GB["H200"], weights_gb: float | None = None,
               weight_bytes_per_param: float = 2.0, cache_fraction: float = 0.9, state_share: float = SGLANG_STATE_SHARE,
               host_gb: float = 0.0, host_state_share: float | None = None,
               block_tokens: int = BLOCK_TOKENS) -> PoolSizing:
    """Pool sizes for ``model`` on one GPU of ``gpu_gb`` GB.

    ``weights_gb``: the weights' size; default ``model.params_b`` billion parameters times
    ``weight_bytes_per_param`` (2 for bf16, 1 for fp8). The cache gets ``cache_fraction`` of the
    memory left after the weights (the rest is activations and the runtime's own buffers), and
    ``state_share`` of the cache goes to state slots (default SGLang's split, 0.9 / 1.9), the
    remainder to KV blocks. ``host_gb`` of
    host memory is split the same way (``host_state_share``, default ``state_share``). Counts are
    rounded down. Raises InvalidInputError when the weights do not fit or a share is out of range.
    """
    _check_share("cache_fraction", cache_fraction, allow_zero=False)
    _check_share("state_share", state_share)
    host_share = state_share if host_state_share is None else host_state_share
    _check_share("host_state_share", host_share)
    if type(block_tokens) is not int or block_tokens < 1:
        raise InvalidInputError(f"block_tokens must be a positive int, got {block_tokens!r}")
    if not gpu_gb > 0:
        raise InvalidInputError(f"gpu_gb must be positive, got {gpu_gb!r}")
    if not host_gb >= 0:
        raise InvalidInputError(f"host_gb must be >= 0, got {host_gb!r}")
    if weights_gb is None:
        if not model.params_b:
            raise InvalidInputError(f"model {model.name!r} has no parameter count: pass weights_gb")
        weights_gb = model.params_b * weight_bytes_per_param
    gpu, weights = int(gpu_gb * GB), int(weights_gb * GB)
    if weights >= gpu:
        raise InvalidInputError(
            f"the weights of {model.name} ({weights_gb:.1f} GB) do not fit in {gpu_gb:g} GB of GPU memory "
            "(try weight_bytes_per_param=1 for fp8 weights, or a bigger GPU)")
    cache = int((gpu - weights) * cache_fraction)
    block, state = model.kv_bytes_per_token * block_tokens, model.state_bytes_per_slot
    host = int(host_gb * GB)
    return PoolSizing(
        model=model.name, block_tokens=block_tokens, gpu_bytes=gpu, weight_bytes=weights, cache_bytes=cache,
        block_bytes=block, state_bytes=state,
        device_blocks=int(cache * (1 - state_share)) // block, device_state_slots=int(cache * state_share) // state,
        host_bytes=host, host_blocks=int(host * (1 - host_share)) // block,
        host_state_slots=int(host * host_share) // state,
    )


def _check_share(name: str, value: float, allow_zero: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (low_ok and value <= 1):
        raise InvalidInputError(f"{name} must be a number in {'[0' if allow_zero else '(0'}, 1], got {value!r}")
