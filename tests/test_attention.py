"""attention: MLA against a loop written from [V3] eqs. 1-11, the absorbed form against the naive one, the KV cache
(incremental decoding equals one full forward, bytes, truncation, growth), cache sizes of [V2] Table 1, bad input."""

import math

import pytest
import torch

from course_lib.attention.cache import KVCache, kv_cache_elements_per_token
from course_lib.attention.mha import MultiHeadAttention, causal_attention
from course_lib.attention.mla import MultiHeadLatentAttention
from course_lib.model.block import TransformerBlock

SIZES = dict(dim=24, n_heads=3, q_lora_rank=10, kv_lora_rank=8, qk_nope_head_dim=6, qk_rope_head_dim=4,
             v_head_dim=5, max_seq_len=32)


def mla(absorb=False, seed=0, **changes):
    torch.manual_seed(seed)
    module = MultiHeadLatentAttention(**{**SIZES, **changes}, absorb=absorb).double()
    with torch.no_grad():  # RMSNorm weights other than 1, so that a missing norm shows
        if module.q_lora_rank:
            module.q_norm.weight.uniform_(0.5, 1.5)
        module.kv_norm.weight.uniform_(0.5, 1.5)
    return module


def rotate(vec: torch.Tensor, position: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE of one vector at one position: pair (2i, 2i+1) turned by position * base^(-2i/d)."""
    out = vec.clone()
    d = vec.shape[-1]
    for i in range(d // 2):
        angle = position * base ** (-2 * i / d)
        c, s = math.cos(angle), math.sin(angle)
        out[2 * i] = c * vec[2 * i] - s * vec[2 * i + 1]
        out[2 * i + 1] = s * vec[2 * i] + c * vec[2 * i + 1]
    return out


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean() + 1e-6) * weight


def slow_mla(m: MultiHeadLatentAttention, x: torch.Tensor) -> torch.Tensor:
    """[V3] eqs. 1-11 token by token and head by head."""
    B, T, _ = x.shape
    H, dh, dr, dv = m.n_heads, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    out = torch.zeros(B, T, m.dim, dtype=x.dtype)
    for b in range(B):
        keys, values = [], []
        for t in range(T):
            h = x[b, t]
            c_kv = rms(m.w_dkv.weight @ h, m.kv_norm.weight)  # (1)
            k_c = (m.w_uk.weight @ c_kv).view(H, dh)  # (2)
            k_r = rotate(m.w_kr.weight @ h, t)  # (3)
            keys.append([torch.cat([k_c[i], k_r]) for i in range(H)])  # (4)
            values.append((m.w_uv.weight @ c_kv).view(H, dv))  # (5)
            if m.q_lora_rank:
                c_q = rms(m.w_dq.weight @ h, m.q_norm.weight)  # (6)
                q_c = (m.w_uq.weight @ c_q).view(H, dh)  # (7)
                q_r = (m.w_qr.weight @ c_q).view(H, dr)  # (8)
            else:  # no query compression: [q^C_i; q^R_i] = W^Q_i h, one matrix (DeepSeek-V2-Lite)
                q_c, q_r = (m.w_q.weight @ h).view(H, dh + dr).split([dh, dr], dim=-1)
            heads = []
            for i in range(H):
                q = torch.cat([q_c[i], rotate(q_r[i], t)])  # (9)
                scores = torch.stack([q @ keys[j][i] / math.sqrt(dh + dr) for j in range(t + 1)])
                weights = torch.softmax(scores, dim=0)
                heads.append(sum(weights[j] * values[j][i] for j in range(t + 1)))  # (10)
            out[b, t] = m.w_o.weight @ torch.cat(heads)  # (11)
    return out


def decode_in_chunks(layer, x, chunks, cache):
    outs, start = [], 0
    for size in chunks:
        outs.append(layer(x[:, start:start + size], cache))
        start += size
    return torch.cat(outs, dim=1)


# ------------------------------------------------------------------------------------------ MLA
@pytest.mark.parametrize("q_lora_rank", [10, 0])
@pytest.mark.parametrize("absorb", [False, True])
def test_mla_matches_the_equations(absorb, q_lora_rank):
    m = mla(absorb, q_lora_rank=q_lora_rank)
    x = torch.randn(2, 5, SIZES["dim"], dtype=torch.float64)
    # 1e-7: the RoPE table is rounded to float32 (rope_angles), the loop computes its angles in float64
    torch.testing.assert_close(m(x), slow_mla(m, x), rtol=1e-7, atol=1e-7)


def test_absorbed_form_equals_naive_form_without_and_with_cache():
    naive, absorbed = mla(False, seed=3), mla(True, seed=3)
    x = torch.randn(2, 11, SIZES["dim"], dtype=torch.float64)
    torch.testing.assert_close(absorbed(x), naive(x), rtol=1e-10, atol=1e-10)
    chunks = [4, 1, 3, 1, 2]
    with torch.no_grad():
        a = decode_in_chunks(absorbed, x, chunks, absorbed.new_cache(2))
        n = decode_in_chunks(naive, x, chunks, naive.new_cache(2))
    torch.testing.assert_close(a, n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a, naive(x), rtol=1e-10, atol=1e-10)


def test_mla_without_query_compression_has_one_query_matrix():
    """q_lora_rank = 0 (DeepSeek-V2-Lite): W^Q, dim -> H (d_h + d_h^R), replaces W^DQ, q_norm, W^UQ and W^QR."""
    m = mla(q_lora_rank=0)
    assert sorted(n for n, _ in m.named_parameters()) == ["kv_norm.weight", "w_dkv.weight", "w_kr.weight",
                                                          "w_o.weight", "w_q.weight", "w_uk.weight", "w_uv.weight"]
    assert m.w_q.weight.shape == (SIZES["n_heads"] * (6 + 4), SIZES["dim"])


def test_mla_caches_the_latent_and_one_shared_rope_key():
    m = mla()
    x = torch.randn(2, 7, SIZES["dim"], dtype=torch.float64)
    cache = m.new_cache(2)
    with torch.no_grad():
        m(x, cache)
        _, _, c_kv, k_rope = m.project(x)
    assert cache.entries == {"c_kv": (8,), "k_rope": (4,)}
    torch.testing.assert_close(cache["c_kv"], c_kv)  # after the RMSNorm
    torch.testing.assert_close(cache["k_rope"], k_rope)  # after RoPE, one per token (not per head)
    assert cache["c_kv"].shape == (2, 7, 8) and cache["k_rope"].shape == (2, 7, 4)
    assert cache.nbytes == 7 * 2 * (8 + 4) * 8  # tokens x batch x (d_c + d_h^R) x float64


@pytest.mark.parametrize("layer", ["mha", "mla", "mla-absorbed", "mla-q_lora_rank-0"])
def test_token_by_token_decoding_equals_one_forward(layer):
    torch.manual_seed(1)
    attn = (MultiHeadAttention(12, 3, max_seq_len=16).double() if layer == "mha" else
            mla(layer == "mla-absorbed", q_lora_rank=0 if layer.endswith("-0") else SIZES["q_lora_rank"]))
    x = torch.randn(2, 9, attn.dim, dtype=torch.float64)
    with torch.no_grad():
        full = attn(x)
        torch.testing.assert_close(decode_in_chunks(attn, x, [1] * 9, attn.new_cache(2)), full, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(decode_in_chunks(attn, x, [5, 4], attn.new_cache(2)), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer", ["mha", "mla", "mla-absorbed"])
def test_decoding_with_the_cache_under_bfloat16_autocast(layer):
    """Under bfloat16 autocast a float32 layer's keys (latents) are bfloat16: the float32 cache stores them (it
    keeps its dtype) and hands them back in bfloat16, so decoding gives the cache-less autocast forward's output.
    Failed before: TypeError "make the cache after moving the model", which does not apply."""
    torch.manual_seed(1)
    attn = MultiHeadAttention(12, 3, max_seq_len=16) if layer == "mha" else mla(layer == "mla-absorbed").float()
    x = torch.randn(2, 9, attn.dim)
    cache = attn.new_cache(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = attn(x)
        decoded = decode_in_chunks(attn, x, [5, 1, 3], cache)
    assert full.dtype == decoded.dtype == torch.bfloat16 and cache.dtype == torch.float32 and cache.length == 9
    assert all(cache[name].dtype == torch.float32 for name in cache.entries)
    torch.testing.assert_close(decoded.float(), full.float(), rtol=2e-2, atol=2e-2)  # bfloat16: 8 bits
    float_cache = attn.new_cache(2)
    with pytest.raises(TypeError, match="make the cache after moving the model"):  # a real mismatch still is one
        attn.double()(x.double(), float_cache)


def test_mha_caches_rotated_keys_and_values():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2, max_seq_len=16)
    cache = attn.new_cache(3)
    with torch.no_grad():
        attn(torch.randn(3, 5, 8), cache)
    assert cache.kind == "mha" and cache["k"].shape == (3, 2, 5, 4) and cache["v"].shape == (3, 2, 5, 4)
    assert cache.nbytes == 5 * 3 * 2 * 8 * 4  # tokens x batch x 2 dim x float32


def test_mla_block_is_causal_and_trains():
    torch.manual_seed(2)
    attn = MultiHeadLatentAttention(**{**SIZES, "max_seq_len": 16})
    block = TransformerBlock(SIZES["dim"], 3, attn=attn)
    x = torch.randn(2, 8, SIZES["dim"], requires_grad=True)
    changed = x.detach().clone()
    changed[:, 5:] += 1
    y = block(x)
    torch.testing.assert_close(y[:, :5], block(changed)[:, :5])
    y.square().sum().backward()
    assert all(p.grad is not None for p in attn.parameters())


def test_causal_attention_with_an_offset_is_the_tail_of_the_full_one():
    q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64) for _ in range(3))
    full = causal_attention(q, k, v)
    torch.testing.assert_close(causal_attention(q[:, :, 3:], k, v, start=3), full[:, :, 3:])
    torch.testing.assert_close(causal_attention(q[:, :, 6:], k, v, start=6), full[:, :, 6:])
    with pytest.raises(ValueError, match="start \\+ T"):
        causal_attention(q[:, :, 3:], k, v, start=2)


# ------------------------------------------------------------------------------------------ KVCache
def test_cache_truncate_rolls_back():
    m = mla()
    x = torch.randn(1, 10, SIZES["dim"], dtype=torch.float64)
    draft = torch.randn(1, 3, SIZES["dim"], dtype=torch.float64)
    cache = m.new_cache(1)
    with torch.no_grad():
        m(x[:, :6], cache)
        m(draft, cache)  # a draft of 3 tokens, rejected
        assert cache.length == 9
        cache.truncate(6)
        assert cache.length == 6 and cache.nbytes == 6 * cache.bytes_per_token
        rest = m(x[:, 6:], cache)
    torch.testing.assert_close(rest, m(x)[:, 6:], rtol=1e-10, atol=1e-10)
    for bad in (-1, 11):
        with pytest.raises(ValueError, match="truncate"):
            cache.truncate(bad)
    for bad in (2.0, True):
        with pytest.raises(TypeError, match="length must be an int"):
            cache.truncate(bad)


def test_cache_grows_by_doubling_not_per_token():
    cache = KVCache("mla", {"c_kv": (4,), "k_rope": (2,)}, batch_size=1, max_len=100)
    capacities = set()
    for _ in range(70):
        cache.append(c_kv=torch.randn(1, 1, 4), k_rope=torch.randn(1, 1, 2))
        capacities.add(cache.capacity)
    assert sorted(capacities) == [16, 32, 64, 100] and cache.length == 70
    assert cache["c_kv"].shape == (1, 70, 4)


def test_empty_cache():
    cache = MultiHeadAttention(8, 2).new_cache(2)
    assert cache.length == 0 and cache.nbytes == 0 and cache["k"].shape == (2, 2, 0, 4)
    assert cache.bytes_per_token == 2 * 2 * 8 * 4


def test_cache_bad_use():
    torch.manual_seed(0)
    mha, latent = MultiHeadAttention(24, 3, max_seq_len=8), MultiHeadLatentAttention(**{**SIZES, "max_seq_len": 8})
    x = torch.randn(1, 5, 24)
    with pytest.raises(ValueError, match="mla cache, but the layer is mha: a cache from another model"):
        mha(x, latent.new_cache(1))
    with pytest.raises(ValueError, match="batch_size=2"):
        mha(x, mha.new_cache(2))
    cache = mha.new_cache(1)
    mha(x, cache)
    with pytest.raises(ValueError, match="longer than the context max_len=8"):
        mha(x, cache)
    assert cache.length == 5  # nothing appended by the failed call
    with pytest.raises(TypeError, match="KVCache"):
        mha(x, {"k": None})
    float_cache = mha.new_cache(1)
    with pytest.raises(TypeError, match="make the cache after moving the model"):
        mha.double()(x.double(), float_cache)
    mha.float()
    with pytest.raises(KeyError, match="not 'c_kv'"):
        cache["c_kv"]
    with pytest.raises(ValueError, match="exactly the entries"):
        cache.append(k=torch.randn(1, 3, 1, 8))
    with pytest.raises(ValueError, match="cache entry 'k' expects"):
        cache.append(k=torch.randn(1, 3, 1, 5), v=torch.randn(1, 3, 1, 8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(qk_rope_head_dim=5), "qk_rope_head_dim must be even"),
    (dict(kv_lora_rank=0), "kv_lora_rank must be an int >= 1"),
    (dict(q_lora_rank=-1), "q_lora_rank must be an int >= 0"),
])
def test_mla_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadLatentAttention(**{**SIZES, **kwargs})


def test_mla_size_of_a_wrong_type():
    with pytest.raises(TypeError, match="n_heads must be an int"):
        MultiHeadLatentAttention(**{**SIZES, "n_heads": 2.0})


def test_attention_bad_input():
    m = mla()
    with pytest.raises(ValueError, match=r"expects a floating-point tensor \[B, T, 24\]"):
        m(torch.randn(2, 5, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="exceeds max_seq_len=32"):
        m(torch.randn(1, 33, 24, dtype=torch.float64))
    with pytest.raises(ValueError, match="attn must work on width dim=16"):
        TransformerBlock(16, 2, attn=m)


# ------------------------------------------------------------------------------------------ sizes, [V2] Table 1
def test_cache_elements_per_token_at_v3_sizes():
    mha = kv_cache_elements_per_token("mha", n_heads=128, head_dim=128)
    latent = kv_cache_elements_per_token("mla", kv_lora_rank=512, qk_rope_head_dim=64)
    assert (mha, latent) == (32768, 576) and round(mha / latent, 1) == 56.9
    assert latent * 61 * 2 == 70272  # bytes per token in BF16 over 61 layers ([V3])
    assert kv_cache_elements_per_token("gqa", n_groups=8, head_dim=128) == 2048
    assert kv_cache_elements_per_token("mqa", head_dim=128) == 256
    with pytest.raises(ValueError, match="mla needs kv_lora_rank"):
        kv_cache_elements_per_token("mla", qk_rope_head_dim=64)
    with pytest.raises(ValueError, match="attention must be one of"):
        kv_cache_elements_per_token("sliding")


def test_layer_cache_bytes_follow_table_1():
    m = MultiHeadLatentAttention(**{**SIZES})
    assert m.new_cache(1).bytes_per_token == 4 * kv_cache_elements_per_token("mla", kv_lora_rank=8, qk_rope_head_dim=4)
    a = MultiHeadAttention(24, 3)
    assert a.new_cache(1).bytes_per_token == 4 * kv_cache_elements_per_token("mha", n_heads=3, head_dim=8)
