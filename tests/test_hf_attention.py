"""Cross-check attention.MultiHeadLatentAttention against Hugging Face transformers' DeepseekV3Attention on identical
weights (offline: a random tiny DeepseekV3Config, no download), in both of its RoPE layouts, with and without a cache,
with and without query compression (q_lora_rank None in transformers, 0 in course_lib: one q_proj / w_q).

Layouts. transformers fuses what [V3] writes as separate matrices: q_b_proj = per head [W^UQ_i; W^QR_i],
kv_a_proj_with_mqa = [W^DKV; W^KR], kv_b_proj = per head [W^UK_i; W^UV_i]. With rope_interleave=True (its default,
DeepSeek's layout) RoPE turns consecutive pairs (2j, 2j+1) as course_lib does, but it returns the rotated features
de-interleaved (the evens, then the odds), so its cached k^R is ours with the features permuted; dot products, and
so the outputs, are the same. With rope_interleave=False it turns the pairs (j, j + d/2): the same attention once
the rows of W^QR and W^KR are permuted to that order.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
modeling = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")

from course_lib.attention.mla import MultiHeadLatentAttention  # noqa: E402
from course_lib.attention.yarn import YarnScaling  # noqa: E402

DIM, HEADS, Q_RANK, KV_RANK, NOPE, ROPE, V_DIM = 32, 4, 24, 16, 8, 6, 10


def hf_config(rope_interleave: bool, q_lora_rank: int = Q_RANK, yarn: YarnScaling | None = None):
    rope = {} if yarn is None else dict(rope_parameters={  # HF's names for the released ModelArgs' YaRN fields
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": yarn.factor, "beta_fast": yarn.beta_fast,
        "beta_slow": yarn.beta_slow, "mscale": yarn.mscale, "mscale_all_dim": yarn.mscale,
        "original_max_position_embeddings": yarn.original_seq_len})
    config = transformers.DeepseekV3Config(**rope,
        hidden_size=DIM, num_attention_heads=HEADS, num_key_value_heads=HEADS, q_lora_rank=q_lora_rank or None,
        kv_lora_rank=KV_RANK, qk_nope_head_dim=NOPE, qk_rope_head_dim=ROPE, v_head_dim=V_DIM,
        rope_interleave=rope_interleave, attention_bias=False, rms_norm_eps=1e-6, max_position_embeddings=64)
    config._attn_implementation = "eager"
    return config


def ours(seed: int = 0, q_lora_rank: int = Q_RANK, yarn: YarnScaling | None = None) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    m = MultiHeadLatentAttention(DIM, HEADS, q_lora_rank, KV_RANK, NOPE, ROPE, V_DIM, max_seq_len=64, yarn=yarn)
    with torch.no_grad():
        if q_lora_rank:
            m.q_norm.weight.uniform_(0.5, 1.5)
        m.kv_norm.weight.uniform_(0.5, 1.5)
    return m


def halves_order(d: int) -> torch.Tensor:
    """Feature order that turns consecutive pairs (2j, 2j+1) into the pairs (j, j + d/2): evens, then odds."""
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def hf_like(m: MultiHeadLatentAttention, rope_interleave: bool):
    """transformers' DeepseekV3Attention holding the weights of ``m`` (fused as transformers lays them out)."""
    config = hf_config(rope_interleave, m.q_lora_rank, m.yarn)
    hf = modeling.DeepseekV3Attention(config, layer_idx=0)
    order = torch.arange(ROPE) if rope_interleave else halves_order(ROPE)
    w_kr = m.w_kr.weight[order]
    with torch.no_grad():
        if m.q_lora_rank:
            w_qr = m.w_qr.weight.view(HEADS, ROPE, Q_RANK)[:, order]
            hf.q_a_proj.weight.copy_(m.w_dq.weight)
            hf.q_a_layernorm.weight.copy_(m.q_norm.weight)
            hf.q_b_proj.weight.copy_(torch.cat([m.w_uq.weight.view(HEADS, NOPE, Q_RANK), w_qr], 1).reshape(-1, Q_RANK))
        else:  # q_lora_rank None in transformers: q_proj, per head [W^UQ_i; W^QR_i] as our w_q
            w_q = m.w_q.weight.view(HEADS, NOPE + ROPE, DIM)
            hf.q_proj.weight.copy_(torch.cat([w_q[:, :NOPE], w_q[:, NOPE:][:, order]], 1).reshape(-1, DIM))
        hf.kv_a_proj_with_mqa.weight.copy_(torch.cat([m.w_dkv.weight, w_kr]))
        hf.kv_a_layernorm.weight.copy_(m.kv_norm.weight)
        hf.kv_b_proj.weight.copy_(torch.cat([m.w_uk.weight.view(HEADS, NOPE, KV_RANK),
                                             m.w_uv.weight.view(HEADS, V_DIM, KV_RANK)], 1).reshape(-1, KV_RANK))
        hf.o_proj.weight.copy_(m.w_o.weight)
    return hf, modeling.DeepseekV3RotaryEmbedding(config)


def hf_forward(hf, rotary, x: torch.Tensor, start: int = 0, cache=None) -> torch.Tensor:
    """x [B, T, dim] at positions start..start+T-1 -> [B, T, dim], with an additive causal mask."""
    B, T, _ = x.shape
    positions = torch.arange(start, start + T)[None].expand(B, T)
    mask = torch.full((T, start + T), float("-inf")).triu(start + 1)[None, None]  # key j allowed iff j <= start + i
    out, _ = hf(x, rotary(x, positions), mask, cache=cache)
    return out


@pytest.mark.parametrize("q_lora_rank", [Q_RANK, 0], ids=["q_lora", "no-q_lora"])
@pytest.mark.parametrize("rope_interleave", [True, False])
@pytest.mark.parametrize("absorb", [False, True])
def test_mla_agrees_with_transformers(rope_interleave, absorb, q_lora_rank):
    m = ours(q_lora_rank=q_lora_rank)
    m.absorb = absorb
    hf, rotary = hf_like(m, rope_interleave)
    assert hf.scaling == pytest.approx(m.scale)  # 1 / sqrt(d_h + d_h^R)
    x = torch.randn(2, 13, DIM)
    with torch.no_grad():
        torch.testing.assert_close(m(x), hf_forward(hf, rotary, x), rtol=1e-5, atol=1e-5)


def test_decoding_with_our_cache_agrees_with_transformers_and_its_cache():
    m = ours(1)
    hf, rotary = hf_like(m, rope_interleave=True)
    x = torch.randn(1, 9, DIM)
    ours_cache, hf_cache = m.new_cache(1), transformers.DynamicCache(config=hf.config)
    with torch.no_grad():
        for start, stop in [(0, 5), (5, 6), (6, 9)]:
            torch.testing.assert_close(m(x[:, start:stop], ours_cache),
                                       hf_forward(hf, rotary, x[:, start:stop], start, hf_cache),
                                       rtol=1e-5, atol=1e-5)
    layer = hf_cache.layers[0]
    # the same latent; the same RoPE key with its features de-interleaved (evens, then odds)
    torch.testing.assert_close(layer.keys[:, 0], ours_cache["c_kv"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.values[:, 0], ours_cache["k_rope"][..., halves_order(ROPE)],
                               rtol=1e-5, atol=1e-6)


# YaRN ([V3] 4.3) with mscale = mscale_all_dim (V3: 1.0, 1.0), a context of 64 from 16 (s = 4) in d_h^R = 6: V3's
# betas (32, 1) keep pair 0 and interpolate pairs 1-2; betas (1, 0.1) put pair 1 half-way on the ramp (0, 1/2, 1).
@pytest.mark.parametrize("yarn", [YarnScaling(4.0, 16, 32.0, 1.0), YarnScaling(4.0, 16, 1.0, 0.1)], ids=str)
@pytest.mark.parametrize("absorb", [False, True])
def test_mla_with_yarn_agrees_with_transformers_from_any_position(yarn, absorb):
    m = ours(2, yarn=yarn)
    m.absorb = absorb
    hf, rotary = hf_like(m, rope_interleave=True)
    assert hf.scaling == pytest.approx(m.scale)  # 1 / sqrt(d_h + d_h^R) * mscale^2
    x = torch.randn(2, 40, DIM)
    ours_cache, hf_cache = m.new_cache(2), transformers.DynamicCache(config=hf.config)
    with torch.no_grad():
        torch.testing.assert_close(m(x), hf_forward(hf, rotary, x), rtol=1e-5, atol=1e-5)
        for start, stop in [(0, 12), (12, 30), (30, 31), (31, 40)]:  # past the original 16 positions
            torch.testing.assert_close(m(x[:, start:stop], ours_cache),
                                       hf_forward(hf, rotary, x[:, start:stop], start, hf_cache),
                                       rtol=1e-5, atol=1e-5)
