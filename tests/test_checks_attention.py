"""Checkers of notebook 07 against learner-style code: right answers pass, stubs give False, each mistake is named,
and any wrong code is explained, never crashes the checker."""

import itertools
import math

import pytest
import torch

import torch.nn.functional as F

from checking import stub
from course_lib.attention.mla import MultiHeadLatentAttention
from course_lib.attention.rope import apply_rope, rope_angles
from course_lib.checks import CheckFailed, check_attend_absorbed, check_mla_forward, outcome
from course_lib.checks.attention import MLACase, absorbed_mistakes, output_mistakes


def learner_mla(attn, h, past=None, *, scale_dh=False, scale_mha=False, cache_keys=False, per_head_rope_key=False,
                rope_compressed=False, rope_compressed_layer_tables=False, rope_latent=False, no_norm=False,
                no_q_norm=False, no_mask=False, merge_no_transpose=False, split_no_transpose=False, nan=False,
                wrong_shape=False, query_rope_at_zero=False, key_rope_at_zero=False, rotate_cache_again=False,
                is_causal=False, cache_new_only=False, fused_norm=False):
    """MLA as a learner writes it (after a cache of L tokens when past is given), with optional mistakes."""
    B, T, _ = h.shape
    H, d_h, d_r, d_v = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    L = 0 if past is None else past[0].shape[1]
    cos, sin = attn.cos[L:], attn.sin[L:]  # positions L..L+T-1
    c_kv = attn.w_dkv(h) if no_norm else attn.kv_norm(attn.w_dkv(h))
    if fused_norm:  # as with Hugging Face's kv_a_proj_with_mqa: one [c_kv; k_pe], normalised whole, then split
        fused = torch.cat([attn.w_dkv(h), attn.w_kr(h)], dim=-1)
        fused = fused * torch.rsqrt(fused.pow(2).mean(-1, keepdim=True) + attn.kv_norm.eps)
        c_kv = fused[..., :attn.kv_lora_rank] * attn.kv_norm.weight
    if rope_latent:
        c_kv = apply_rope(c_kv, attn.cos, attn.sin)
    k_r = apply_rope(attn.w_kr(h), attn.cos, attn.sin) if key_rope_at_zero else apply_rope(attn.w_kr(h), cos, sin)
    new_cache = (c_kv, k_r)
    if past is not None:
        c_kv = torch.cat([past[0], c_kv], dim=1)
        k_r = torch.cat([past[1], k_r], dim=1)
        if rotate_cache_again:  # everything rotated at once, the cached keys a second time
            k_r = apply_rope(torch.cat([past[1], attn.w_kr(h)], dim=1), attn.cos, attn.sin)
    k_c = attn.w_uk(c_kv).view(B, L + T, H, d_h).transpose(1, 2)
    v = attn.w_uv(c_kv).view(B, L + T, H, d_v).transpose(1, 2)
    c_q = attn.w_dq(h) if no_norm or no_q_norm else attn.q_norm(attn.w_dq(h))
    q_c = attn.w_uq(c_q).view(B, T, H, d_h).transpose(1, 2)
    if split_no_transpose:
        q_c = attn.w_uq(c_q).view(B, H, T, d_h)
    q_cos, q_sin = (attn.cos, attn.sin) if query_rope_at_zero else (cos, sin)
    q_r = apply_rope(attn.w_qr(c_q).view(B, T, H, d_r).transpose(1, 2), q_cos, q_sin)
    if rope_compressed:  # tables of their own, of width d_h
        own_cos, own_sin = rope_angles(d_h, attn.max_seq_len)
        q_c, k_c = apply_rope(q_c, own_cos[L:], own_sin[L:]), apply_rope(k_c, own_cos, own_sin)
    if rope_compressed_layer_tables:  # the layer's tables are d_h^R wide: apply_rope raises
        q_c, k_c = apply_rope(q_c, attn.cos, attn.sin), apply_rope(k_c, attn.cos, attn.sin)
    k_r_heads = k_r[:, None].expand(B, H, L + T, d_r)
    q, k = torch.cat([q_c, q_r], -1), torch.cat([k_c, k_r_heads], -1)
    scale = 1 / math.sqrt(d_h if scale_dh else attn.dim / H if scale_mha else d_h + d_r)
    mask = None if no_mask or is_causal else torch.ones(T, L + T, dtype=torch.bool).tril(L)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)
    u = attn.w_o((o if merge_no_transpose else o.transpose(1, 2)).reshape(B, T, H * d_v))
    if nan:
        u = u * float("nan")
    if wrong_shape:
        u = u[:, -1]
    cache = new_cache if cache_new_only else (c_kv, k_r)
    if cache_keys:
        cache = (k_c, k_r)
    if per_head_rope_key:
        cache = (c_kv, k_r_heads)
    return u, cache


def learner_absorbed(attn, q_nope, q_rope, c_kv, k_rope, *, default_scale=False, no_w_uv=False, no_mask=False,
                     w_uk_layout=False, is_causal=False):
    H, T, L = attn.n_heads, q_nope.shape[2], c_kv.shape[1]
    w_uk = attn.w_uk.weight.view(H, attn.qk_nope_head_dim, attn.kv_lora_rank)
    if w_uk_layout:  # [H, d_c, d_h], then "transposed" back: the numbers of the wrong rows
        w_uk = attn.w_uk.weight.view(H, attn.kv_lora_rank, attn.qk_nope_head_dim).transpose(1, 2)
    w_uv = attn.w_uv.weight.view(H, attn.v_head_dim, attn.kv_lora_rank)
    q = torch.cat([torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk), q_rope], -1)
    k = torch.cat([c_kv, k_rope], -1)[:, None].expand(-1, H, -1, -1)
    v = c_kv[:, None].expand(-1, H, -1, -1)
    mask = None if no_mask or is_causal else torch.ones(T, L, dtype=torch.bool).tril(L - T)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                       scale=None if default_scale else attn.scale)
    return o if no_w_uv else torch.einsum("bhtc,hvc->bhtv", o, w_uv)


def test_right_answers_pass_and_stubs_give_false(capsys):
    assert outcome(check_mla_forward, learner_mla) is True
    assert outcome(check_attend_absorbed, learner_absorbed) is True
    assert outcome(check_mla_forward, stub) is False and outcome(check_attend_absorbed, stub) is False
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, message", [
    ("cache_keys", "a cache of keys instead of the latent"),
    ("per_head_rope_key", "a per-head RoPE key"),
    ("scale_dh", r"the softmax scale is 1/sqrt\(d_h\)"),
    ("scale_mha", r"the softmax scale is MHA's 1/sqrt\(dim / n_heads\)"),
    ("rope_compressed", "RoPE was applied to the compressed parts"),
    ("rope_compressed_layer_tables", "RoPE goes only on the decoupled parts"),
    ("rope_latent", "RoPE goes only on the decoupled parts"),
    ("no_norm", "RMSNorm"),
    ("no_q_norm", "the q_norm is missing"),
    ("no_mask", "no causal mask"),
    ("merge_no_transpose", "heads were merged without moving the head axis back"),
    ("query_rope_at_zero", "the new queries were rotated for positions 0..T-1"),
    ("key_rope_at_zero", "the new keys were rotated for positions 0..T-1"),
    ("rotate_cache_again", "the cached keys were rotated a second time"),
    ("is_causal", "the causal mask is aligned to the top-left corner"),
    ("cache_new_only", "the new tokens only"),
    ("fused_norm", r"the RMSNorm was taken over the fused \[c\^KV; k\^R\]"),
])
def test_mla_forward_mistakes_are_named(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_mla_forward(lambda attn, h, past=None: learner_mla(attn, h, past, **{mistake: True}))


@pytest.mark.parametrize("mistake, message", [
    ("default_scale", r"the scale is 1/sqrt\(d_c \+ d_h\^R\)"),
    ("no_w_uv", "W\\^UV is missing"),
    ("no_mask", "no causal mask"),
    ("is_causal", "the causal mask is aligned to the top-left corner"),
])
def test_attend_absorbed_mistakes_are_named(mistake, message):
    with pytest.raises(CheckFailed, match=message):
        check_attend_absorbed(lambda *args: learner_absorbed(*args, **{mistake: True}))


def test_a_function_without_the_cache_argument_is_explained():
    with pytest.raises(CheckFailed, match="raised TypeError(.|\n)*give it the parameter past=None"):
        check_mla_forward(lambda attn, h: learner_mla(attn, h))


def test_a_crash_is_explained():
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        check_mla_forward(lambda attn, h: 1 / 0)
    with pytest.raises(CheckFailed, match="should return \\(u, \\(c_kv, k_rope\\)\\)"):
        check_mla_forward(lambda attn, h: attn(h))


# Wrong code of every kind: each must be explained (CheckFailed), never crash the checker.
WRONG_MLA = {
    "raises": lambda attn, h: 1 / 0,
    "returns None": lambda attn, h: None,
    "returns u alone": lambda attn, h: attn(h),
    "returns a list of three": lambda attn, h: [attn(h), None, None],
    "cache of the wrong type": lambda attn, h: (attn(h), "cache"),
    "cache of one tensor": lambda attn, h: (attn(h), (attn.project(h)[2],)),
    "NaN output": lambda attn, h, past=None: learner_mla(attn, h, past, nan=True),
    "output of the wrong shape": lambda attn, h, past=None: learner_mla(attn, h, past, wrong_shape=True),
    "output an int": lambda attn, h, past=None: (3, learner_mla(attn, h, past)[1]),
    "heads split without transpose": lambda attn, h, past=None: learner_mla(attn, h, past, split_no_transpose=True),
    "heads merged without transpose": lambda attn, h, past=None: learner_mla(attn, h, past, merge_no_transpose=True),
    "MHA's scale": lambda attn, h, past=None: learner_mla(attn, h, past, scale_mha=True),
    "integer output": lambda attn, h, past=None: (learner_mla(attn, h, past)[0].long(), learner_mla(attn, h, past)[1]),
    "scale 1/d_h, no mask": lambda attn, h, past=None: learner_mla(attn, h, past, scale_dh=True, no_mask=True),
    "past ignored": lambda attn, h, past=None: learner_mla(attn, h),
    "query at 0 and key rotated twice": lambda attn, h, past=None: learner_mla(attn, h, past, query_rope_at_zero=True,
                                                                              rotate_cache_again=True),
    "past cache as a list": lambda attn, h, past=None: (learner_mla(attn, h, past)[0], list(learner_mla(attn, h)[1])),
    "right on the first case only": lambda attn, h, past=None: learner_mla(attn, h, past, scale_dh=attn.n_heads != 2),
}


@pytest.mark.parametrize("name", list(WRONG_MLA))
def test_mla_forward_explains_any_wrong_code(name):
    with pytest.raises(CheckFailed) as error:
        check_mla_forward(WRONG_MLA[name])
    assert str(error.value).startswith("For the input") or "raised" in str(error.value)


WRONG_ABSORBED = {
    "raises": lambda *args: 1 / 0,
    "returns None": lambda *args: None,
    "returns a tuple": lambda *args: (learner_absorbed(*args), None),
    "NaN": lambda *args: learner_absorbed(*args) * float("nan"),
    "heads and positions swapped": lambda *args: learner_absorbed(*args).transpose(1, 2),
    "the latent output, heads merged": lambda *args: learner_absorbed(*args, no_w_uv=True).flatten(1, 2),
    "W^UK viewed as [H, d_c, d_h]": lambda *args: learner_absorbed(*args, w_uk_layout=True),
    "default scale and no mask": lambda *args: learner_absorbed(*args, default_scale=True, no_mask=True),
    "right on the first case only": lambda attn, *rest: learner_absorbed(attn, *rest,
                                                                          default_scale=attn.n_heads != 2),
    "is_causal and no W^UV": lambda *args: learner_absorbed(*args, is_causal=True, no_w_uv=True),
    "only the last T latents": lambda attn, q_nope, q_rope, c_kv, k_rope: learner_absorbed(
        attn, q_nope, q_rope, c_kv[:, -q_nope.shape[2]:], k_rope[:, -q_nope.shape[2]:]),
}


@pytest.mark.parametrize("name", list(WRONG_ABSORBED))
def test_attend_absorbed_explains_any_wrong_code(name):
    with pytest.raises(CheckFailed) as error:
        check_attend_absorbed(WRONG_ABSORBED[name])
    assert str(error.value).startswith("For the input") or "raised" in str(error.value)


def test_a_cause_is_named_only_when_it_explains_every_case():
    """Wrong only from the second case on, as a mistake of the catalogue is: the first case rules it out."""
    with pytest.raises(CheckFailed) as error:
        check_mla_forward(WRONG_MLA["right on the first case only"])
    assert "Likely cause" not in str(error.value) and "Hint: go through eqs. 1-11" in str(error.value)
    with pytest.raises(CheckFailed) as error:
        check_attend_absorbed(WRONG_ABSORBED["right on the first case only"])
    assert "Likely cause" not in str(error.value)
    with pytest.raises(CheckFailed, match="MHA's 1/sqrt"):  # right on no case: named
        check_mla_forward(WRONG_MLA["MHA's scale"])


@pytest.mark.parametrize("sizes, shape", [
    ((8, 1, 4, 4, 2, 2, 2), (1, 1)), ((12, 2, 5, 3, 3, 4, 7), (1, 4)), ((16, 2, 6, 8, 4, 6, 3), (3, 6)),
    ((10, 5, 3, 9, 5, 2, 1), (2, 16)), ((64, 4, 16, 16, 16, 16, 16), (1, 16)),
])
def test_every_catalogue_entry_runs_for_any_sizes(sizes, shape):
    """The catalogues are computed for whatever sizes a case has (odd d_h, d_h != d_h^R, one token, one head)."""
    torch.manual_seed(0)
    attn = MultiHeadLatentAttention(*sizes, max_seq_len=16)
    h = torch.randn(*shape, sizes[0])
    for past_len in (0, shape[1] // 2):
        case = MLACase(attn, h, past_len)
        with torch.no_grad():
            inputs = (*attn.project(case.h, past_len)[:2], *attn.project(h)[2:])
            for mistake in itertools.chain(output_mistakes(case), absorbed_mistakes(attn, inputs)):
                assert mistake.fn().isfinite().all()
