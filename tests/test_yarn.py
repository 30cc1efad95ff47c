"""attention.yarn: the YaRN frequencies and temperature against a slow loop of the released formulas (DeepSeek-V3
inference/model.py ``precompute_freqs_cis`` and ``MLA.__init__``) and against Hugging Face transformers'
``_compute_yarn_parameters`` (offline); position interpolation and NTK-aware scaling; MLA with YaRN: the naive and
absorbed forms and cached decoding agree at any start position, the latent cache is unchanged; bad settings."""

import dataclasses
import math

import pytest
import torch

from course_lib.attention.mla import MultiHeadLatentAttention
from course_lib.attention.rope import rope_frequencies
from course_lib.attention.yarn import (YarnScaling, interpolated_frequencies, ntk_frequencies, yarn_frequencies,
                                       yarn_mscale, yarn_ramp)
from course_lib.model.tiny import ModelConfig, TinyDeepSeek

# (dim, base, factor, original_seq_len, beta_fast, beta_slow): V3's ([V3] 4.3, HF config rope_scaling), then tiny
# ones whose ramp falls inside the head dimension (low > 0, high < dim / 2), clipped at 0, and a zero-width ramp.
V3 = (64, 10000.0, 40.0, 4096, 32.0, 1.0)
SETTINGS = [V3, (16, 10.0, 4.0, 1024, 32.0, 1.0), (16, 10000.0, 4.0, 64, 32.0, 1.0), (8, 100.0, 8.0, 256, 4.0, 2.0),
            (6, 10000.0, 2.0, 16, 32.0, 1.0), (64, 10000.0, 1.0, 4096, 32.0, 1.0)]


def released_frequencies(dim, base, factor, original_seq_len, beta_fast, beta_slow):
    """precompute_freqs_cis's frequencies (for max_seq_len > original_seq_len), written as a plain loop."""
    def correction_dim(rotations):
        return dim * math.log(original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    out = []
    for i in range(dim // 2):
        freq = 1.0 / base ** (2 * i / dim)
        smooth = 1 - min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(freq / factor * (1 - smooth) + freq * smooth)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_frequencies_follow_the_released_formulas(setting):
    torch.testing.assert_close(yarn_frequencies(*setting), released_frequencies(*setting), rtol=1e-12, atol=0)


def test_v3_ramp_keeps_the_fast_pairs_and_interpolates_the_slow_ones():
    dim, base, factor, length, fast, slow = V3
    ramp = yarn_ramp(dim, base, length, fast, slow)
    theta, scaled = rope_frequencies(dim, base), yarn_frequencies(*V3)
    assert ramp[:11].eq(0).all() and ramp[23:].eq(1).all() and (ramp[11:23] > 0).all() and (ramp[11:23] < 1).all()
    turns = length * theta / (2 * math.pi)  # rotations of each pair within the original context
    assert (turns[:11] > fast).all() and (turns[23:] < slow).all()  # the ramp sits between beta_fast and beta_slow
    torch.testing.assert_close(scaled[:11], theta[:11], rtol=0, atol=0)
    torch.testing.assert_close(scaled[23:], theta[23:] / factor, rtol=1e-15, atol=0)


def test_mscale_at_v3():
    assert yarn_mscale(40.0) == pytest.approx(0.1 * math.log(40) + 1)
    assert round(yarn_mscale(40.0) ** 2, 4) == 1.8739  # [V3] 4.3 and the released MLA's softmax_scale
    assert yarn_mscale(1.0) == 1.0 and yarn_mscale(40.0, 0.5) == pytest.approx(0.05 * math.log(40) + 1)


def test_interpolation_and_ntk():
    theta = rope_frequencies(16, 10000.0)
    torch.testing.assert_close(interpolated_frequencies(16, 10000.0, 4.0), theta / 4)
    ntk = ntk_frequencies(16, 10000.0, 4.0)
    assert ntk[0] == theta[0] and ntk[-1].item() == pytest.approx(theta[-1].item() / 4)
    assert ((ntk <= theta) & (ntk >= theta / 4)).all()


# ------------------------------------------------------------------------------------------ transformers' yarn
def hf_yarn_config(dim, base, factor, original_seq_len, beta_fast, beta_slow, mscale=1.0, max_len=None):
    transformers = pytest.importorskip("transformers")
    return transformers.DeepseekV3Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=dim, v_head_dim=10, attention_bias=False, rms_norm_eps=1e-6,
        max_position_embeddings=max_len or 4 * original_seq_len,
        rope_parameters={"rope_type": "yarn", "rope_theta": base, "factor": factor, "beta_fast": beta_fast,
                         "beta_slow": beta_slow, "mscale": mscale, "mscale_all_dim": mscale,
                         "original_max_position_embeddings": original_seq_len})


@pytest.mark.parametrize("setting", SETTINGS[:-1], ids=str)
def test_frequencies_and_mscale_agree_with_transformers(setting):
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    modeling = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    config = hf_yarn_config(*setting)
    inv_freq, attention_factor = rope_utils.ROPE_INIT_FUNCTIONS["yarn"](config)
    torch.testing.assert_close(yarn_frequencies(*setting).float(), inv_freq, rtol=1e-6, atol=0)
    assert attention_factor == 1.0  # mscale = mscale_all_dim (V3's 1.0, 1.0): cos and sin unscaled
    assert modeling.yarn_get_mscale(setting[2], 1.0) == pytest.approx(yarn_mscale(setting[2], 1.0))


# ------------------------------------------------------------------------------------------ MLA with YaRN
SIZES = dict(dim=24, n_heads=3, q_lora_rank=10, kv_lora_rank=8, qk_nope_head_dim=6, qk_rope_head_dim=8,
             v_head_dim=5, max_seq_len=64)
TINY_YARN = YarnScaling(factor=4.0, original_seq_len=16, beta_fast=4.0, beta_slow=1.0)


def mla(yarn=TINY_YARN, absorb=False, **changes):
    torch.manual_seed(0)
    module = MultiHeadLatentAttention(**{**SIZES, **changes}, absorb=absorb, yarn=yarn).double()
    with torch.no_grad():
        module.q_norm.weight.uniform_(0.5, 1.5)
        module.kv_norm.weight.uniform_(0.5, 1.5)
    return module


def test_yarn_changes_only_the_rope_tables_and_the_scale():
    plain, scaled = mla(yarn=None), mla()
    assert scaled.scale == pytest.approx(plain.scale * yarn_mscale(4.0) ** 2)
    freqs = yarn_frequencies(8, 10000.0, 4.0, 16, 4.0, 1.0)
    assert not torch.equal(freqs, rope_frequencies(8, 10000.0))
    angles = torch.outer(torch.arange(64, dtype=torch.float64), freqs)
    torch.testing.assert_close(scaled.cos.float(), angles.cos().float())
    torch.testing.assert_close(scaled.sin.float(), angles.sin().float())
    assert plain.state_dict().keys() == scaled.state_dict().keys()  # the same weights load into either
    x = torch.randn(2, 20, 24, dtype=torch.float64)
    plain_cache, scaled_cache = plain.new_cache(2), scaled.new_cache(2)
    with torch.no_grad():
        plain(x, plain_cache), scaled(x, scaled_cache)
    torch.testing.assert_close(scaled_cache["c_kv"], plain_cache["c_kv"], rtol=0, atol=0)  # the latent: no position
    assert not torch.allclose(scaled_cache["k_rope"], plain_cache["k_rope"])  # the decoupled key: YaRN's angles


def test_yarn_applies_only_past_the_original_length():
    same = mla(yarn=YarnScaling(factor=4.0, original_seq_len=64, beta_fast=4.0, beta_slow=1.0))
    plain = mla(yarn=None)
    assert same.scale == plain.scale and torch.equal(same.cos, plain.cos)  # the released code: max_seq_len > L only


@pytest.mark.parametrize("chunks", [[20, 1, 1, 5], [3, 17, 1, 9]])
def test_naive_absorbed_and_cached_decoding_agree_with_yarn(chunks):
    naive, absorbed = mla(), mla(absorb=True)
    x = torch.randn(2, sum(chunks), 24, dtype=torch.float64)
    with torch.no_grad():
        whole = naive(x)
        torch.testing.assert_close(absorbed(x), whole, rtol=1e-10, atol=1e-10)
        for layer in (naive, absorbed):
            cache, outs, start = layer.new_cache(2), [], 0
            for size in chunks:  # new tokens at positions start.. (past the original 16 from the second chunk)
                outs.append(layer(x[:, start:start + size], cache))
                start += size
            torch.testing.assert_close(torch.cat(outs, dim=1), whole, rtol=1e-10, atol=1e-10)


def test_tiny_model_takes_a_yarn_setting():
    config = ModelConfig(dim=24, n_layers=2, n_heads=3, n_dense_layers=1, n_routed_experts=4, top_k=2, expert_dim=8,
                         max_seq_len=64, attention="mla", q_lora_rank=10, kv_lora_rank=8, qk_nope_head_dim=6,
                         qk_rope_head_dim=8, v_head_dim=5, mtp_depth=1, yarn=TINY_YARN)
    torch.manual_seed(0)
    model = TinyDeepSeek(config)
    attn = model.blocks[0].attn
    assert attn.yarn == TINY_YARN and attn.scale == pytest.approx(yarn_mscale(4.0) ** 2 / math.sqrt(14))
    assert model.mtp_modules[0].block.attn.yarn == TINY_YARN
    assert ModelConfig.from_dict(dataclasses.asdict(config)) == config  # a checkpoint's config round-trips
    plain = TinyDeepSeek(dataclasses.replace(config, yarn=None))
    plain.load_state_dict(model.state_dict())  # the same weights: YaRN adds none
    assert model(torch.randint(0, 96, (1, 40))).shape == (1, 40, 96)


@pytest.mark.parametrize("call, error, match", [
    (lambda: yarn_frequencies(64, 10000.0, 0.5, 4096, 32, 1), ValueError, "factor must be >= 1"),
    (lambda: yarn_frequencies(64, 10000.0, 40.0, 4096, 1, 32), ValueError, "beta_fast must exceed beta_slow"),
    (lambda: yarn_frequencies(64, 10000.0, 40.0, 4096, 32, 32), ValueError, "beta_fast must exceed beta_slow"),
    (lambda: yarn_frequencies(63, 10000.0, 40.0, 4096, 32, 1), ValueError, "head_dim must be even"),
    (lambda: yarn_frequencies(64, 10000.0, 40.0, 4096.0, 32, 1), TypeError, "original_seq_len must be an int"),
    (lambda: yarn_mscale(0.5), ValueError, "factor must be >= 1"),
    (lambda: ntk_frequencies(2, 10000.0, 4.0), ValueError, "dim must be >= 4"),
    (lambda: YarnScaling(factor=0.9), ValueError, "factor must be >= 1"),
    (lambda: YarnScaling(beta_fast=1.0, beta_slow=32.0), ValueError, "beta_fast must exceed beta_slow"),
    (lambda: mla(yarn=YarnScaling(original_seq_len=128)), ValueError, "original_seq_len=128 is above the model's"),
    (lambda: mla(yarn=YarnScaling(original_seq_len=16), qk_rope_head_dim=7), ValueError,
     "qk_rope_head_dim must be even"),
    (lambda: mla(yarn={"factor": 4.0}), TypeError, "yarn must be a YarnScaling"),
    (lambda: ModelConfig(yarn=YarnScaling(original_seq_len=16)), ValueError, "needs attention='mla'"),
    (lambda: ModelConfig(attention="mla", max_seq_len=64, yarn=YarnScaling()), ValueError, "above the model's"),
])
def test_bad_yarn_settings(call, error, match):
    with pytest.raises(error, match=match):
        call()
