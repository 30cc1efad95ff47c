"""Checkers of notebook 07 against learner-style code: right answers pass, stubs give False, each mistake is named."""

import math

import pytest
import torch

import torch.nn.functional as F

from course_lib.attention import apply_rope
from course_lib.checks import check_attend_absorbed, check_mla_forward, outcome


def learner_mla(attn, h, *, scale_dh=False, cache_keys=False, per_head_rope_key=False, rope_compressed=False,
                rope_latent=False, no_norm=False):
    """MLA as a learner writes it, with optional mistakes."""
    B, T, _ = h.shape
    H, d_h, d_r, d_v = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    c_kv = attn.w_dkv(h) if no_norm else attn.kv_norm(attn.w_dkv(h))
    if rope_latent:
        c_kv = apply_rope(c_kv, attn.cos, attn.sin)
    k_c = attn.w_uk(c_kv).view(B, T, H, d_h).transpose(1, 2)
    k_r = apply_rope(attn.w_kr(h), attn.cos, attn.sin)
    v = attn.w_uv(c_kv).view(B, T, H, d_v).transpose(1, 2)
    c_q = attn.w_dq(h) if no_norm else attn.q_norm(attn.w_dq(h))
    q_c = attn.w_uq(c_q).view(B, T, H, d_h).transpose(1, 2)
    q_r = apply_rope(attn.w_qr(c_q).view(B, T, H, d_r).transpose(1, 2), attn.cos, attn.sin)
    if rope_compressed:
        q_c, k_c = apply_rope(q_c, attn.cos, attn.sin), apply_rope(k_c, attn.cos, attn.sin)
    k_r_heads = k_r[:, None].expand(B, H, T, d_r)
    q, k = torch.cat([q_c, q_r], -1), torch.cat([k_c, k_r_heads], -1)
    scale = 1 / math.sqrt(d_h if scale_dh else d_h + d_r)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    u = attn.w_o(o.transpose(1, 2).reshape(B, T, H * d_v))
    cache = (k_c, k_r) if cache_keys else (c_kv, k_r_heads if per_head_rope_key else k_r)
    return u, cache


def learner_absorbed(attn, q_nope, q_rope, c_kv, k_rope, *, default_scale=False, no_w_uv=False, no_mask=False):
    H = attn.n_heads
    w_uk = attn.w_uk.weight.view(H, attn.qk_nope_head_dim, attn.kv_lora_rank)
    w_uv = attn.w_uv.weight.view(H, attn.v_head_dim, attn.kv_lora_rank)
    q = torch.cat([torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk), q_rope], -1)
    k = torch.cat([c_kv, k_rope], -1)[:, None].expand(-1, H, -1, -1)
    v = c_kv[:, None].expand(-1, H, -1, -1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=not no_mask, scale=None if default_scale else attn.scale)
    return o if no_w_uv else torch.einsum("bhtc,hvc->bhtv", o, w_uv)


def stub(*args):
    raise NotImplementedError


def test_right_answers_pass_and_stubs_give_false(capsys):
    assert outcome(check_mla_forward, learner_mla) is True
    assert outcome(check_attend_absorbed, learner_absorbed) is True
    assert outcome(check_mla_forward, stub) is False and outcome(check_attend_absorbed, stub) is False
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, message", [
    ("cache_keys", "a cache of keys instead of the latent"),
    ("per_head_rope_key", "a per-head RoPE key"),
    ("scale_dh", r"the softmax scale is 1/sqrt\(d_h\)"),
    ("rope_compressed", "RoPE was applied to the compressed parts"),
    ("rope_latent", "RoPE goes only on the decoupled parts"),
    ("no_norm", "RMSNorm"),
])
def test_mla_forward_mistakes_are_named(mistake, message):
    with pytest.raises(AssertionError, match=message):
        check_mla_forward(lambda attn, h: learner_mla(attn, h, **{mistake: True}))


@pytest.mark.parametrize("mistake, message", [
    ("default_scale", r"the scale is 1/sqrt\(d_c \+ d_h\^R\)"),
    ("no_w_uv", "W\\^UV is missing"),
    ("no_mask", "no causal mask"),
])
def test_attend_absorbed_mistakes_are_named(mistake, message):
    with pytest.raises(AssertionError, match=message):
        check_attend_absorbed(lambda *args: learner_absorbed(*args, **{mistake: True}))


def test_a_crash_is_explained():
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        check_mla_forward(lambda attn, h: 1 / 0)
    with pytest.raises(AssertionError, match="should return \\(u, \\(c_kv, k_rope\\)\\)"):
        check_mla_forward(lambda attn, h: attn(h))
