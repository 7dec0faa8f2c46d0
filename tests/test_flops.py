"""FLOP accounting in ModelSpec: Marconi's per-layer formulas, the 7B hybrid preset, and the
share of prefill FLOPs a replay's hits save."""

from __future__ import annotations

import pytest

import himamba as hm
from himamba.sim import policy_replay

D, N = 4096, 128


def test_marconi_hybrid_preset_has_its_layers_and_sizes() -> None:
    m = hm.ModelSpec.preset("attention-mamba2-7b")
    assert (m.num_full_layers, m.num_mamba_layers, m.num_mlp_layers, m.d_model, m.d_state) == (4, 24, 28, D, N)
    assert m.kv_bytes_per_token == 4 * (4 * D)  # K and V, D wide each, bf16, per attention layer
    assert m.ssm_bytes_per_layer == 2 * D * N
    assert m.conv_bytes_per_layer == (2 * D + 2 * N) * 3 * 2
    assert m.state_bytes_per_slot == 24 * (2 * D * N + (2 * D + 2 * N) * 6)


def test_prefill_flops_are_the_sum_of_the_layer_formulas() -> None:
    m = hm.ModelSpec.attention_mamba2_7b()
    length = 1000
    attention = 8 * length * D * D + 4 * length * length * D
    mamba = 12 * length * D * D + 16 * length * D * N + 10 * length * D
    mlp = 16 * length * D * D  # d_ff = 4 D
    assert m.flops_by_layer_kind(length) == {"attention": 4 * attention, "mamba": 24 * mamba, "mlp": 28 * mlp}
    assert m.prefill_flops(length) == 4 * attention + 24 * mamba + 28 * mlp
    a, b = m.flop_coefficients()
    assert m.prefill_flops(length) == a * length + b * length**2 and m.prefill_flops(0) == 0


def test_a_spec_without_widths_refuses_flop_accounting() -> None:
    assert hm.ModelSpec.nemotron_h_8b().has_flops and not hm.ModelSpec.qwen3_next_80b_a3b().has_flops
    with pytest.raises(hm.InvalidInputError, match="does not give d_model"):
        hm.ModelSpec.qwen3_next_80b_a3b().prefill_flops(10)
    with pytest.raises(hm.InvalidInputError, match="d_model"):
        hm.ModelSpec("bad", 1, 1, 1, 1, 1, 2, (1,), d_model=-1)
    with pytest.raises(hm.InvalidInputError, match="tokens"):
        hm.ModelSpec.attention_mamba2_7b().prefill_flops(-1)


def test_a_replay_reports_the_share_of_prefill_flops_its_hits_saved() -> None:
    m = hm.ModelSpec.attention_mamba2_7b()
    # block mode, 512-token blocks: the second request reuses the first's 2 blocks (1,024 tokens)
    items = [([1, 2], 2, 1, 1000), ([1, 2, 3], 3, 2, 1300), ([4], 1, 0, 100)]
    cache = policy_replay.make_cache(64, 8)
    f = policy_replay.replay(cache, items, "sequence_end", model=m)
    assert f["hit_elements"] == 2 and f["hit_rate"] == round(2 / 6, 6)
    assert f["hit_rate_tokens"] == round(1024 / 2400, 6)  # two whole blocks of the second prompt
    saved = m.prefill_flops(1024)
    total = m.prefill_flops(1000) + m.prefill_flops(1300) + m.prefill_flops(100)
    assert f["flops_saved"] == round(saved / total, 6)
    # bytes kept: 4 blocks of KV (1, 2, 3 and 4) at 512 tokens each, and 3 states
    assert f["kv_bytes_kept"] == 4 * 512 * m.kv_bytes_per_token
    assert f["state_bytes_kept"] == 3 * m.state_bytes_per_slot
