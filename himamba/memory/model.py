"""ModelSpec: the tensor shapes of a hybrid Mamba/attention model, as far as the cache cares.

Only two things matter to the prefix cache:

* the **KV of the full-attention layers** (K and V per layer, ``kv_heads x head_dim`` per token),
* one **mamba state** per cached prefix end: for every linear/mamba layer a conv state
  (``conv_channels x (conv_kernel - 1)``) and an SSM/recurrent state (``ssm_shape``).

:meth:`ModelSpec.tiny` is the default for experiments (a few hundred bytes per slot); the presets
carry the real shapes of public models so notebooks can do honest arithmetic. Presets are usually
too large to allocate pools for on a laptop; :meth:`ModelSpec.scaled` keeps their proportions
with fewer layers.

**FLOPs** (what a prefix hit saves): a spec that names its widths (``d_model`` D, ``d_state``
N, ``d_ff`` and ``num_mlp_layers``; 0 = not given) prices a prefill of L tokens with the
per-layer formulas of Marconi (Pan et al., "Marconi: Prefix Caching for the Era of Hybrid LLMs",
MLSys 2025, arXiv 2411.19379):

* attention layer: ``8·L·D² + 4·L²·D`` (Q, K, V and output projections; scores and their sum);
* Mamba-2 layer: ``12·L·D² + 16·L·D·N + 10·L·D``;
* MLP layer: ``4·L·D·d_ff`` (two matrices; Marconi writes ``16·L·D²``, the case ``d_ff = 4·D``).

A hit on the first h tokens of a prompt skips their prefill, ``prefill_flops(h)``: the tokens
after them still attend to the cached keys, which the formula counts in their own rows. These
are Marconi's simplifications: multi-head attention (grouped K/V heads are not modelled) and a
Mamba expansion of 2; figures are for comparing policies, not for predicting a GPU's time.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from himamba.errors import InvalidInputError
from himamba.validate import check_int


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shapes of one hybrid model. All sizes are per layer unless named otherwise."""

    name: str
    num_full_layers: int
    kv_heads: int
    head_dim: int
    num_mamba_layers: int
    conv_channels: int
    conv_kernel: int
    ssm_shape: tuple[int, ...]
    kv_dtype: torch.dtype = torch.float32
    conv_dtype: torch.dtype = torch.float32
    ssm_dtype: torch.dtype = torch.float32
    num_layers: int = 0  # total layers in the model (attention + mamba + MLP-only), for display
    params_b: float = 0.0  # total parameters in billions (weights' size for sizing); 0 = unknown
    d_model: int = 0  # hidden width D, for FLOP accounting; 0 = not given
    d_state: int = 0  # SSM state size N of a mamba layer, for FLOP accounting
    d_ff: int = 0  # MLP hidden width, for FLOP accounting
    num_mlp_layers: int = 0  # MLP-only layers (counted apart from attention and mamba layers)

    def __post_init__(self) -> None:
        for field in ("num_full_layers", "kv_heads", "head_dim", "num_mamba_layers", "conv_channels"):
            check_int(getattr(self, field), f"ModelSpec.{field}", 1)
        if isinstance(self.params_b, bool) or not isinstance(self.params_b, (int, float)) or not self.params_b >= 0:
            raise InvalidInputError(f"ModelSpec.params_b must be >= 0 (billions of parameters), got {self.params_b!r}")
        check_int(self.conv_kernel, "ModelSpec.conv_kernel", 2)
        for field in ("d_model", "d_state", "d_ff", "num_mlp_layers"):
            check_int(getattr(self, field), f"ModelSpec.{field}", 0)
        if not isinstance(self.ssm_shape, (tuple, list)) or not self.ssm_shape:
            raise InvalidInputError(f"ModelSpec.ssm_shape must be non-empty and positive, got {self.ssm_shape!r}")
        for d in self.ssm_shape:
            check_int(d, f"each dimension of ModelSpec.ssm_shape {tuple(self.ssm_shape)}", 1)
        object.__setattr__(self, "ssm_shape", tuple(self.ssm_shape))  # hashable, whatever was passed

    # -- shapes --------------------------------------------------------------------------------
    @property
    def conv_shape(self) -> tuple[int, int]:
        """Conv state of one layer: ``(channels, kernel - 1)``."""
        return (self.conv_channels, self.conv_kernel - 1)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every full-attention layer for one token."""
        elem = torch.empty((), dtype=self.kv_dtype).element_size()
        return 2 * self.num_full_layers * self.kv_heads * self.head_dim * elem

    @property
    def conv_bytes_per_layer(self) -> int:
        return math.prod(self.conv_shape) * torch.empty((), dtype=self.conv_dtype).element_size()

    @property
    def ssm_bytes_per_layer(self) -> int:
        return math.prod(self.ssm_shape) * torch.empty((), dtype=self.ssm_dtype).element_size()

    @property
    def state_bytes_per_slot(self) -> int:
        """One mamba state slot: conv + SSM state of every mamba layer."""
        return self.num_mamba_layers * (self.conv_bytes_per_layer + self.ssm_bytes_per_layer)

    @property
    def state_to_kv_ratio(self) -> float:
        """How many tokens of KV weigh as much as one state slot."""
        return self.state_bytes_per_slot / self.kv_bytes_per_token

    # -- FLOPs (formulas and source in the module docstring) -------------------------------------
    @property
    def has_flops(self) -> bool:
        """Whether the widths FLOP accounting needs are given (``d_model``, ``d_state``, ``d_ff``)."""
        return self.d_model > 0 and self.d_state > 0 and self.d_ff > 0

    def flop_coefficients(self) -> tuple[int, int]:
        """``(a, b)`` with ``prefill_flops(L) == a·L + b·L²`` over every layer of the model.
        InvalidInputError when the spec does not name its widths (:attr:`has_flops`)."""
        if not self.has_flops:
            raise InvalidInputError(f"ModelSpec {self.name!r} does not give d_model, d_state and d_ff: no FLOP accounting")
        d, n = self.d_model, self.d_state
        linear = (self.num_full_layers * 8 * d * d + self.num_mamba_layers * (12 * d * d + 16 * d * n + 10 * d)
                  + self.num_mlp_layers * 4 * d * self.d_ff)
        return linear, self.num_full_layers * 4 * d

    def prefill_flops(self, tokens: int) -> int:
        """FLOPs of a prefill of ``tokens`` tokens from an empty cache (every layer); also what a
        hit on ``tokens`` cached tokens saves."""
        check_int(tokens, "tokens", 0)
        a, b = self.flop_coefficients()
        return a * tokens + b * tokens * tokens

    def flops_by_layer_kind(self, tokens: int) -> dict[str, int]:
        """:meth:`prefill_flops` split into attention, mamba and MLP layers (they sum to it)."""
        check_int(tokens, "tokens", 0)
        self.flop_coefficients()
        d, n, length = self.d_model, self.d_state, tokens
        return {"attention": self.num_full_layers * (8 * length * d * d + 4 * length * length * d),
                "mamba": self.num_mamba_layers * (12 * length * d * d + 16 * length * d * n + 10 * length * d),
                "mlp": self.num_mlp_layers * 4 * length * d * self.d_ff}

    def describe(self) -> dict[str, object]:
        """The figures a notebook would print about this model."""
        return {
            "model": self.name,
            "full attention layers": self.num_full_layers,
            "mamba layers": self.num_mamba_layers,
            "KV bytes per token": self.kv_bytes_per_token,
            "state bytes per slot": self.state_bytes_per_slot,
            "tokens of KV per state": round(self.state_to_kv_ratio, 1),
        }

    def scaled(self, full_layers: int = 1, mamba_layers: int = 1) -> ModelSpec:
        """Same per-layer shapes with fewer layers (so that real pools fit in memory)."""
        return dataclasses.replace(
            self,
            name=f"{self.name} ({full_layers}+{mamba_layers} layers)",
            num_full_layers=full_layers,
            num_mamba_layers=mamba_layers,
        )

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> ModelSpec:
        """A toy model: 2 attention + 2 mamba layers, a few dozen floats per token/slot."""
        return cls("tiny", 2, 1, 4, 2, 4, 4, (2, 2, 2), num_layers=4)

    @classmethod
    def qwen3_next_80b_a3b(cls) -> ModelSpec:
        """Qwen3-Next-80B-A3B: 48 layers, 12 full attention (2 KV heads x 256), 36 Gated
        DeltaNet (16 key heads, 32 value heads, head dim 128, conv kernel 4)."""
        key_dim, value_dim = 16 * 128, 32 * 128
        return cls(
            "Qwen3-Next-80B-A3B", 12, 2, 256, 36,
            conv_channels=2 * key_dim + value_dim, conv_kernel=4, ssm_shape=(32, 128, 128),
            kv_dtype=torch.bfloat16, conv_dtype=torch.bfloat16, ssm_dtype=torch.float32, num_layers=48, params_b=80.0,
        )

    @classmethod
    def nemotron_h_8b(cls) -> ModelSpec:
        """NemotronH-8B: 52 layers, 4 full attention (8 KV heads x 128), 24 Mamba-2 (128 heads
        x 64 head dim, state 128, 8 groups, conv kernel 4)."""
        heads, head_dim, state, groups = 128, 64, 128, 8
        return cls(
            "NemotronH-8B", 4, 8, 128, 24,
            conv_channels=heads * head_dim + 2 * groups * state, conv_kernel=4,
            ssm_shape=(heads, head_dim, state),
            kv_dtype=torch.bfloat16, conv_dtype=torch.bfloat16, ssm_dtype=torch.float32, num_layers=52, params_b=8.0,
            d_model=4096, d_state=128, d_ff=21504, num_mlp_layers=24,
        )

    @classmethod
    def attention_mamba2_7b(cls) -> ModelSpec:
        """The 7B Attention-Mamba2 hybrid Marconi evaluates (NVIDIA's, as Marconi describes it):
        24 Mamba-2 + 4 attention + 28 MLP layers, D = 4096, N = 128, bf16 throughout. Sizes
        follow Marconi's accounting: K and V each D wide per attention layer (4·D bytes a token),
        an SSM state of D x N per layer, a conv state over 2·D + 2·N channels (kernel 4; we keep
        its last 3 columns as SGLang does, where Marconi counts 4: 1.5% less per state)."""
        d, n = 4096, 128
        return cls(
            "Attention-Mamba2-7B", 4, 32, 128, 24,
            conv_channels=2 * d + 2 * n, conv_kernel=4, ssm_shape=(d, n),
            kv_dtype=torch.bfloat16, conv_dtype=torch.bfloat16, ssm_dtype=torch.bfloat16, num_layers=56, params_b=7.0,
            d_model=d, d_state=n, d_ff=4 * d, num_mlp_layers=28,
        )

    @classmethod
    def jamba_v0_1(cls) -> ModelSpec:
        """Jamba-v0.1: 32 layers, 4 full attention (8 KV heads x 128), 28 Mamba-1 (d_inner
        8192, d_state 16, conv kernel 4)."""
        return cls(
            "Jamba-v0.1", 4, 8, 128, 28,
            conv_channels=8192, conv_kernel=4, ssm_shape=(8192, 16),
            kv_dtype=torch.bfloat16, conv_dtype=torch.bfloat16, ssm_dtype=torch.float32, num_layers=32, params_b=52.0,
        )

    @classmethod
    def falcon_h1(cls) -> ModelSpec:
        """Falcon-H1 as the defaults of transformers' ``FalconH1Config`` (5.6) describe it: 32
        layers, each *parallel* hybrid (attention with 8 KV heads x 128 beside a Mamba-2 mixer),
        so every layer has KV and a state; Mamba-2 with 128 heads of dim 8 (``d_ssm`` 1,024),
        state 256, 1 group, conv kernel 4 over 1,024 + 2 x 256 channels. Published checkpoints
        vary these sizes; the parameter count is unknown here (pass ``weights_gb`` to sizing)."""
        d_ssm, heads, state, groups = 1024, 128, 256, 1
        return cls(
            "Falcon-H1 (FalconH1Config defaults)", 32, 8, 128, 32,
            conv_channels=d_ssm + 2 * groups * state, conv_kernel=4, ssm_shape=(heads, d_ssm // heads, state),
            kv_dtype=torch.bfloat16, conv_dtype=torch.bfloat16, ssm_dtype=torch.float32, num_layers=32,
        )

    @classmethod
    def presets(cls) -> dict[str, ModelSpec]:
        """Every preset by a short name."""
        return {
            "tiny": cls.tiny(),
            "qwen3-next-80b-a3b": cls.qwen3_next_80b_a3b(),
            "nemotron-h-8b": cls.nemotron_h_8b(),
            "jamba-v0.1": cls.jamba_v0_1(),
            "falcon-h1": cls.falcon_h1(),
            "attention-mamba2-7b": cls.attention_mamba2_7b(),
        }

    @classmethod
    def preset(cls, name: str) -> ModelSpec:
        """The preset called ``name`` (a key of :meth:`presets`); InvalidInputError names the choices."""
        presets = cls.presets()
        if name not in presets:
            raise InvalidInputError(f"unknown model preset {name!r}; presets: {sorted(presets)}")
        return presets[name]
