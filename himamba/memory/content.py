"""Deterministic memory content, so that any test can prove no byte was lost or mixed up.

* A token's KV row is a function of (token id, position, layer, element): :func:`kv_content`.
* A mamba state is a function of the whole prefix it ends: :func:`state_content` of
  :func:`prefix_fingerprint`.

Values are small integers (0..250) stored as floats: exact in fp32, fp16 and bf16 alike, so a
round trip through any tier compares with ``torch.equal``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from himamba.memory.model import ModelSpec
from himamba.memory.pools import KVPool, MambaPool

_MOD = 251
_FP_MOD = (1 << 61) - 1
_FP_BASE = 1_000_003


def prefix_fingerprint(token_ids: Sequence[int], start: int = 0) -> int:
    """A 61-bit polynomial hash of a token prefix; ``start`` continues an earlier fingerprint."""
    h = start
    for t in token_ids:
        h = (h * _FP_BASE + t + 1) % _FP_MOD
    return h


def kv_content(
    spec: ModelSpec, token_ids: Sequence[int], start_pos: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V rows, each ``[full_layers, n, kv_heads, head_dim]``, for tokens at positions
    ``start_pos, start_pos + 1, ...``."""
    n = len(token_ids)
    tok = torch.as_tensor(list(token_ids), dtype=torch.int64, device=device)
    pos = torch.arange(start_pos, start_pos + n, dtype=torch.int64, device=device)
    return kv_content_at(spec, tok, pos)


def kv_content_at(
    spec: ModelSpec, token_ids: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`kv_content` for arbitrary (token, position) pairs given as int64 tensors."""
    n = token_ids.numel()
    grid = _kv_grid(spec, token_ids.device)
    base = (token_ids.view(1, n, 1, 1) * 7 + positions.view(1, n, 1, 1) * 13 + grid) % _MOD
    return base.to(spec.kv_dtype), ((base + 101) % _MOD).to(spec.kv_dtype)


@functools.lru_cache(maxsize=64)
def _kv_grid(spec: ModelSpec, device: torch.device) -> torch.Tensor:
    """The token-independent part of every KV value, ``layer * 29 + element * 3``, shaped
    ``[full_layers, 1, kv_heads, head_dim]``. Cached per (model, device); read only."""
    layer = torch.arange(spec.num_full_layers, dtype=torch.int64, device=device).view(-1, 1, 1, 1)
    elem = torch.arange(spec.kv_heads * spec.head_dim, dtype=torch.int64, device=device).view(
        1, 1, spec.kv_heads, spec.head_dim
    )
    return layer * 29 + elem * 3


def state_content_many(
    spec: ModelSpec, fingerprints: Sequence[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv ``[mamba_layers, n, ...]`` and SSM ``[mamba_layers, n, ...]`` for n fingerprints."""
    device = torch.device(device)
    fp = list(fingerprints)
    digits = torch.tensor([[f % _MOD, (f // _MOD) % _MOD, (f // _MOD**2) % _MOD] for f in fp],
                          dtype=torch.int64, device=device).view(len(fp), 3)

    def block(shape: tuple[int, ...], salt: int, dtype: torch.dtype) -> torch.Tensor:
        pick, const = _state_grid(spec, device, shape, salt)
        return ((digits[:, pick].unsqueeze(0) + const) % _MOD).view(spec.num_mamba_layers, len(fp), *shape).to(dtype)

    return block(spec.conv_shape, 0, spec.conv_dtype), block(spec.ssm_shape, 17, spec.ssm_dtype)


@functools.lru_cache(maxsize=64)
def _state_grid(spec: ModelSpec, device: torch.device, shape: tuple[int, ...], salt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For one state block: which fingerprint digit each element takes (``element % 3``) and the
    fingerprint-independent part ``element * 5 + layer * 31 + salt``, shaped
    ``[mamba_layers, 1, elements]``. Cached per (model, device, block); read only."""
    numel = 1
    for d in shape:
        numel *= d
    elem = torch.arange(numel, dtype=torch.int64, device=device)
    layer = torch.arange(spec.num_mamba_layers, dtype=torch.int64, device=device).view(-1, 1, 1)
    return elem % 3, elem * 5 + layer * 31 + salt


def state_content(
    spec: ModelSpec, fingerprint: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv ``[mamba_layers, channels, kernel-1]`` and SSM ``[mamba_layers, *ssm_shape]`` of the
    state that ends a prefix with this fingerprint."""
    conv, ssm = state_content_many(spec, [fingerprint], device)
    return conv[:, 0], ssm[:, 0]


def write_kv(pool: KVPool, indices: torch.Tensor, token_ids: Sequence[int], start_pos: int) -> None:
    """Fill the pool rows ``indices`` with the content of ``token_ids`` at ``start_pos``."""
    k, v = kv_content(pool.spec, token_ids, start_pos, pool.device)
    pool.k_buffer[:, indices] = k
    pool.v_buffer[:, indices] = v


def write_state(pool: MambaPool, slot: torch.Tensor, prefix: Sequence[int]) -> None:
    """Fill state slot ``slot`` with the state that ends ``prefix``."""
    write_state_of(pool, slot, prefix_fingerprint(prefix))


def write_state_of(pool: MambaPool, slot: torch.Tensor, fingerprint: int) -> None:
    """Fill state slot ``slot`` with the state of the prefix whose fingerprint is given (for
    callers that keep fingerprints incrementally)."""
    conv, ssm = state_content(pool.spec, fingerprint, pool.device)
    pool.conv[:, slot] = conv.unsqueeze(1)
    pool.ssm[:, slot] = ssm.unsqueeze(1)


def kv_matches(pool: KVPool, indices: torch.Tensor, token_ids: Sequence[int], start_pos: int) -> bool:
    """Do the rows ``indices`` hold exactly the content of ``token_ids`` at ``start_pos``?"""
    k, v = kv_content(pool.spec, token_ids, start_pos, pool.device)
    return torch.equal(pool.k_buffer[:, indices], k) and torch.equal(pool.v_buffer[:, indices], v)


def state_matches(pool: MambaPool, slot: torch.Tensor, prefix: Sequence[int]) -> bool:
    """Does state slot ``slot`` hold exactly the state that ends ``prefix``?"""
    conv, ssm = state_content(pool.spec, prefix_fingerprint(prefix), pool.device)
    return torch.equal(pool.conv[:, slot], conv.unsqueeze(1)) and torch.equal(pool.ssm[:, slot], ssm.unsqueeze(1))
