"""transformer and attention: RoPE and causal multi-head attention against slow loop versions, causality, the
pluggable FFN and attention, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.core.layers import SwiGLU
from course_lib.moe.layer import DeepSeekMoE
from course_lib.attention.mha import MultiHeadAttention
from course_lib.attention.rope import apply_rope, rope_angles
from course_lib.model.block import TransformerBlock


# ------------------------------------------------------------------------------------------ slow references
def slow_rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate each pair (2i, 2i+1) of each position p by the 2x2 rotation matrix of angle p * base^(-2i/d)."""
    out = x.clone()
    d = x.shape[-1]
    for p in range(x.shape[-2]):
        for i in range(d // 2):
            angle = p * base ** (-2 * i / d)
            c, s = math.cos(angle), math.sin(angle)
            a, b = x[..., p, 2 * i], x[..., p, 2 * i + 1]
            out[..., p, 2 * i] = c * a - s * b
            out[..., p, 2 * i + 1] = s * a + c * b
    return out


def slow_attention(attn: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Causal attention written out: for each head and position i, softmax over the scores of positions j <= i."""
    B, T, dim = x.shape
    H, hd = attn.n_heads, attn.head_dim
    q, k, v = attn.qkv(x).split(dim, dim=-1)  # [B, T, dim] each
    heads = []
    for h in range(H):
        qh = slow_rope(q[..., h * hd:(h + 1) * hd])
        kh = slow_rope(k[..., h * hd:(h + 1) * hd])
        vh = v[..., h * hd:(h + 1) * hd]
        out = torch.zeros(B, T, hd, dtype=x.dtype)
        for b in range(B):
            for i in range(T):
                scores = torch.stack([qh[b, i] @ kh[b, j] / math.sqrt(hd) for j in range(i + 1)])
                weights = torch.softmax(scores, dim=0)
                out[b, i] = sum(weights[j] * vh[b, j] for j in range(i + 1))
        heads.append(out)
    return attn.out(torch.cat(heads, dim=-1))


# ------------------------------------------------------------------------------------------ RoPE
def test_rope_matches_rotation_loop():
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    cos, sin = rope_angles(8, 16)
    torch.testing.assert_close(apply_rope(x, cos.double(), sin.double()), slow_rope(x), rtol=1e-6, atol=1e-6)


def test_rope_keeps_norms_and_depends_only_on_relative_position():
    cos, sin = rope_angles(16, 64)
    q, k = torch.randn(16), torch.randn(16)
    at = torch.zeros(64, 16)

    def rotated(vec: torch.Tensor, position: int) -> torch.Tensor:
        return apply_rope(at.index_copy(0, torch.tensor([position]), vec[None]), cos, sin)[position]

    torch.testing.assert_close(rotated(q, 37).norm(), q.norm())
    dot = rotated(q, 10) @ rotated(k, 3)
    torch.testing.assert_close(rotated(q, 50) @ rotated(k, 43), dot, rtol=1e-4, atol=1e-4)
    assert not torch.isclose(rotated(q, 50) @ rotated(k, 40), dot, rtol=1e-3)


def test_rope_position_zero_is_identity():
    cos, sin = rope_angles(4, 3)
    x = torch.randn(1, 4)
    torch.testing.assert_close(apply_rope(x, cos, sin), x)


@pytest.mark.parametrize("head_dim, max_seq_len", [(3, 8), (0, 8), (4, 0)])
def test_rope_bad_sizes(head_dim, max_seq_len):
    with pytest.raises(ValueError, match="head_dim|max_seq_len"):
        rope_angles(head_dim, max_seq_len)


def test_apply_rope_too_long_input():
    cos, sin = rope_angles(4, 3)
    with pytest.raises(ValueError, match=r"\[>= T, head_dim / 2\]"):
        apply_rope(torch.randn(5, 4), cos, sin)


# ------------------------------------------------------------------------------------------ attention, block
def test_attention_matches_loop_version():
    torch.manual_seed(0)
    attn = MultiHeadAttention(12, 3, max_seq_len=16).double()
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    torch.testing.assert_close(attn(x), slow_attention(attn, x), rtol=1e-8, atol=1e-8)


def test_block_is_pre_norm_residual():
    torch.manual_seed(1)
    block = TransformerBlock(8, 2).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    after_attn = x + block.attn(block.attn_norm(x))
    torch.testing.assert_close(block(x), after_attn + block.ffn(block.ffn_norm(after_attn)))
    assert isinstance(block.ffn, SwiGLU) and block.ffn.w_up.out_features == 32  # 4 * dim by default


@settings(max_examples=15, deadline=None)
@given(T=st.integers(2, 10), cut=st.integers(0, 9), n_heads=st.sampled_from([1, 2, 4]), seed=st.integers(0, 1000))
def test_block_is_causal(T, cut, n_heads, seed):
    """Changing the inputs from position `cut` on leaves every output before `cut` unchanged."""
    cut = cut % T
    torch.manual_seed(seed)
    block = TransformerBlock(8, n_heads, max_seq_len=16)
    x = torch.randn(2, T, 8)
    changed = x.clone()
    changed[:, cut:] += torch.randn(2, T - cut, 8)
    y, y_changed = block(x), block(changed)
    torch.testing.assert_close(y[:, :cut], y_changed[:, :cut], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y[:, cut], y_changed[:, cut])


def test_block_takes_a_deepseek_moe_ffn_and_backpropagates():
    torch.manual_seed(2)
    moe = DeepSeekMoE(dim=8, expert_dim=4, n_routed_experts=4, n_shared_experts=1, top_k=2)
    block = TransformerBlock(8, 2, ffn=moe)
    assert block.ffn is moe
    x = torch.randn(2, 5, 8, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and moe.w_up.grad is not None and block.attn.qkv.weight.grad is not None


def test_rope_buffers_are_not_saved():
    assert not any("cos" in key or "sin" in key for key in TransformerBlock(8, 2).state_dict())


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=10, n_heads=4), "multiple of n_heads"),
    (dict(dim=6, n_heads=2), "head_dim must be even"),
    (dict(dim=8, n_heads=2, ffn=SwiGLU(8, 8), ffn_hidden=16), "not both"),
])
def test_block_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerBlock(**kwargs)


@pytest.mark.parametrize("x, error", [
    (torch.randn(2, 5, 6), ValueError),  # wrong width
    (torch.randn(5, 8), ValueError),  # no batch dimension
    (torch.randn(0, 5, 8), ValueError),  # empty batch
    (torch.randn(1, 9, 8), ValueError),  # longer than max_seq_len
    (torch.ones(1, 5, 8, dtype=torch.long), TypeError),
])
def test_block_bad_input(x, error):
    with pytest.raises(error, match="TransformerBlock expects"):
        TransformerBlock(8, 2, max_seq_len=8)(x)
