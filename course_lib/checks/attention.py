"""Checkers for notebook 07: Multi-head Latent Attention written from [V3] eqs. 1-11, and its absorbed form.

The catalogue of mistakes: a cache of (per-head) keys instead of the latent c^KV, one RoPE key per head instead of
the one shared key, the softmax scale 1/sqrt(d_h) instead of 1/sqrt(d_h + d_h^R), RoPE applied to the compressed
parts (q^C, k^C) instead of only to the decoupled ones, the RMSNorms on the latents forgotten, no causal mask; in
the absorbed form, the default scale of the attention on the latents (1/sqrt(d_c + d_h^R)) and W^UV forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from course_lib.attention import MultiHeadLatentAttention, apply_rope
from course_lib.checks._core import call_learner, checker, clone_args, compare, describe_value

# (dim, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim), (batch, T)
_SIZES = [((16, 2, 12, 8, 4, 4, 6), (1, 5)), ((24, 3, 10, 6, 8, 4, 5), (2, 7)), ((32, 4, 16, 12, 6, 6, 8), (2, 9))]


def _cases() -> list[tuple[MultiHeadLatentAttention, torch.Tensor, str]]:
    cases = []
    for seed, (sizes, (batch, T)) in enumerate(_SIZES):
        generator = torch.Generator().manual_seed(100 + seed)
        attn = MultiHeadLatentAttention(*sizes, max_seq_len=16)
        with torch.no_grad():
            for p in attn.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
            attn.q_norm.weight.uniform_(0.5, 1.5, generator=generator)
            attn.kv_norm.weight.uniform_(0.5, 1.5, generator=generator)
        h = torch.randn(batch, T, sizes[0], generator=generator)
        label = (f"(attn with dim={sizes[0]}, n_heads={sizes[1]}, d_c'={sizes[2]}, d_c={sizes[3]}, d_h={sizes[4]}, "
                 f"d_h^R={sizes[5]}, d_v={sizes[6]}; h of shape {[batch, T, sizes[0]]})")
        cases.append((attn, h, label))
    return cases


def _variant(attn: MultiHeadLatentAttention, h: torch.Tensor, *, scale: float | None = None, rope_on_compressed=False,
             norms=True, causal=True) -> torch.Tensor:
    """MLA's output u with one deliberate change (the mistakes the checker recognises)."""
    B, T, _ = h.shape
    H, dh, dr, dv = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    c_q, c_kv = attn.w_dq(h), attn.w_dkv(h)
    if norms:
        c_q, c_kv = attn.q_norm(c_q), attn.kv_norm(c_kv)
    q_c = attn.w_uq(c_q).view(B, T, H, dh).transpose(1, 2)
    k_c = attn.w_uk(c_kv).view(B, T, H, dh).transpose(1, 2)
    if rope_on_compressed:
        q_c, k_c = apply_rope(q_c, attn.cos, attn.sin), apply_rope(k_c, attn.cos, attn.sin)
    q_r = apply_rope(attn.w_qr(c_q).view(B, T, H, dr).transpose(1, 2), attn.cos, attn.sin)
    k_r = apply_rope(attn.w_kr(h), attn.cos, attn.sin)[:, None].expand(B, H, T, dr)
    v = attn.w_uv(c_kv).view(B, T, H, dv).transpose(1, 2)
    q, k = torch.cat([q_c, q_r], -1), torch.cat([k_c, k_r], -1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale or attn.scale)
    return attn.w_o(o.transpose(1, 2).reshape(B, T, H * dv))


def _output_mistakes(attn: MultiHeadLatentAttention, h: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    dh, dr = attn.qk_nope_head_dim, attn.qk_rope_head_dim
    mistakes = [
        (f"the softmax scale is 1/sqrt(d_h) = 1/sqrt({dh}). In MLA each query and key has d_h + d_h^R features "
         f"(the compressed part and the RoPE part), so [V3] eq. 10 divides by sqrt(d_h + d_h^R) = sqrt({dh + dr}).",
         _variant(attn, h, scale=1 / math.sqrt(dh))),
        ("RoPE was applied to the compressed parts q^C and k^C as well. Position goes only into the decoupled parts "
         "q^R = RoPE(W^QR c^Q) and k^R = RoPE(W^KR h): a rotation between W^UQ and W^UK would stop W^UK from being "
         "absorbed into the query at inference (section 3).", _variant(attn, h, rope_on_compressed=True)),
        ("the RMSNorms on the latents are missing: c^Q = q_norm(w_dq(h)) and c^KV = kv_norm(w_dkv(h)) (the released "
         "model normalises both latents, [V3] 4.2).", _variant(attn, h, norms=False)),
        ("there is no causal mask: position t may attend only to positions j <= t (is_causal=True).",
         _variant(attn, h, causal=False)),
    ]
    return mistakes


def _check_cache(got_cache: Any, attn: MultiHeadLatentAttention, h: torch.Tensor, label: str) -> None:
    B, T, _ = h.shape
    H, dh, dr, dc = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.kv_lora_rank
    if not isinstance(got_cache, (tuple, list)) or len(got_cache) != 2:
        raise AssertionError(f"For the input {label}: the second item you return should be the cache, a tuple "
                             f"(c_kv, k_rope), but it is {describe_value(got_cache)}.")
    c_kv, k_rope = got_cache
    for name, value in (("c_kv", c_kv), ("k_rope", k_rope)):
        if not isinstance(value, torch.Tensor):
            raise AssertionError(f"For the input {label}: {name} should be a tensor, but it is {describe_value(value)}.")
    if list(c_kv.shape) != [B, T, dc]:
        per_head = c_kv.dim() == 4 or c_kv.shape[-1] in (H * dh, dh, dh + dr, H * (dh + dr))
        raise AssertionError(
            f"For the input {label}: your cached c_kv has shape {list(c_kv.shape)}, but MLA caches the latent "
            f"c^KV of shape [B, T, d_c] = {[B, T, dc]}.\n" + (
                "Likely cause: a cache of keys instead of the latent. Caching the up-projected keys k^C = W^UK c^KV "
                "(and values) costs 2 n_h d_h elements per token, as in MHA; MLA keeps only c^KV (d_c elements) and "
                "recomputes or absorbs the rest ([V3] eq. 1)." if per_head else "Hint: c_kv = kv_norm(w_dkv(h))."))
    if list(k_rope.shape) != [B, T, dr]:
        per_head = k_rope.numel() == B * T * H * dr
        raise AssertionError(
            f"For the input {label}: your cached k_rope has shape {list(k_rope.shape)}, but it should be "
            f"[B, T, d_h^R] = {[B, T, dr]}.\n" + (
                "Likely cause: a per-head RoPE key. [V3] eq. 3 computes ONE k^R_t = RoPE(W^KR h_t), shared by every "
                "head (k_{t,i} = [k^C_{t,i}; k^R_t]); cache it once, not once per head." if per_head else
                "Hint: k_rope = apply_rope(w_kr(h), cos, sin)."))
    with torch.no_grad():
        _, _, want_c, want_k = attn.project(h)
        problem = compare(c_kv, want_c, rtol=1e-4, atol=1e-5, what="your cached c_kv")
        if problem:
            hint = ("the RMSNorm is missing: c^KV = kv_norm(w_dkv(h))."
                    if compare(c_kv, attn.w_dkv(h), rtol=1e-4, atol=1e-5) is None else "c_kv = kv_norm(w_dkv(h)).")
            raise AssertionError(f"For the input {label}: {problem}.\nHint: {hint}")
        problem = compare(k_rope, want_k, rtol=1e-4, atol=1e-5, what="your cached k_rope")
        if problem:
            hint = ("k_rope is not rotated: k^R = RoPE(W^KR h) (apply_rope(w_kr(h), cos, sin))."
                    if compare(k_rope, attn.w_kr(h), rtol=1e-4, atol=1e-5) is None else
                    "k^R = RoPE(W^KR h), computed from h (not from the latent c^KV).")
            raise AssertionError(f"For the input {label}: {problem}.\nHint: {hint}")


def _rows(value: Any, shape: torch.Size) -> Any:
    """A tensor of the expected shape as rows of its last axis (short checker messages); anything else as it is."""
    if isinstance(value, torch.Tensor) and value.shape == shape:
        return value.reshape(-1, shape[-1])
    return value


_RoPE_CRASH = ("apply_rope expected", "RoPE goes only on the decoupled parts, of size d_h^R: q^R = RoPE(W^QR c^Q) "
                                      "and k^R = RoPE(W^KR h). The compressed latent and q^C, k^C carry no position.")


def _call(fn: Callable[..., Any], *args: Any, name: str, label: str) -> Any:
    try:
        return call_learner(fn, *args, name=name, label=label)
    except AssertionError as error:
        if _RoPE_CRASH[0] in str(error):
            raise AssertionError(f"{error}\nLikely cause: {_RoPE_CRASH[1]}") from None
        raise


def check_mla_forward(fn: Callable[..., Any]) -> None:
    """Check ``fn(attn, h) -> (u [B, T, dim], (c_kv [B, T, d_c], k_rope [B, T, d_h^R]))``: [V3] eqs. 1-11 on a
    ``MultiHeadLatentAttention``'s weights, with the RMSNorms on the latents, from position 0, and the cache."""

    @checker("mla_forward")
    def body() -> str:
        cases = _cases()
        for attn, h, label in cases:
            got = _call(fn, *clone_args((attn, h)), name="Your mla_forward", label=label)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise AssertionError(f"For the input {label}: mla_forward should return (u, (c_kv, k_rope)), but it "
                                     f"returned {describe_value(got)}.")
            _check_cache(got[1], attn, h, label)
            with torch.no_grad():
                problem = compare(_rows(got[0], h.shape), _rows(attn(h), h.shape), rtol=1e-4, atol=1e-5,
                                  what="your u (rows: the tokens of the batch, one after the other)")
                if problem is None:
                    continue
                message = f"For the input {label}: {problem}."
                for hint, wrong in _output_mistakes(attn, h):
                    if compare(got[0], wrong, rtol=1e-4, atol=1e-5) is None:
                        raise AssertionError(f"{message}\nLikely cause: {hint}")
            raise AssertionError(f"{message}\nHint: go through eqs. 1-11 one by one and check each shape: q and k of "
                                 f"head i are [q^C_i; q^R_i] and [k^C_i; k^R], the value v^C_i.")
        return f"it agrees with MultiHeadLatentAttention on all {len(cases)} cases, output and cache"

    return body()


def check_attend_absorbed(fn: Callable[..., Any]) -> None:
    """Check ``fn(attn, q_nope, q_rope, c_kv, k_rope) -> o [B, H, T, d_v]`` (causal, positions from 0) against the
    naive form ``attn.attend_naive``."""

    @checker("attend_absorbed")
    def body() -> str:
        cases = _cases()
        for attn, h, label in cases:
            with torch.no_grad():
                inputs = attn.project(h)
                expected = attn.attend_naive(*inputs)
            got = _call(fn, *clone_args((attn, *inputs)), name="Your attend_absorbed", label=label)
            with torch.no_grad():
                problem = compare(_rows(got, expected.shape), _rows(expected, expected.shape), rtol=1e-4, atol=1e-5,
                                  what="your o (rows: batch, head, position, flattened)")
                if problem is None:
                    continue
                message = f"For the input {label}: {problem}."
                dc, dv = attn.kv_lora_rank, attn.v_head_dim
                if isinstance(got, torch.Tensor) and got.dim() == 4 and got.shape[-1] == dc and dc != dv:
                    raise AssertionError(f"{message}\nLikely cause: W^UV is missing. Attention on the latents gives "
                                         f"sum_j a_j c^KV_j (d_c = {dc} features per head); head i's output is "
                                         f"W^UV_i times that ({dv} features).")
                wide = 1 / math.sqrt(dc + attn.qk_rope_head_dim)
                for hint, scale, causal in (
                        (f"the scale is 1/sqrt(d_c + d_h^R) = 1/sqrt({dc + attn.qk_rope_head_dim}), the default of "
                         f"scaled_dot_product_attention for the absorbed query's width. The scores are the same dot "
                         f"products as in the naive form, so the scale stays 1/sqrt(d_h + d_h^R): pass scale=attn.scale.",
                         wide, True),
                        ("there is no causal mask: position t may attend only to positions j <= t.", attn.scale, False)):
                    if compare(got, _absorbed_variant(attn, *inputs, scale=scale, causal=causal),
                               rtol=1e-4, atol=1e-5) is None:
                        raise AssertionError(f"{message}\nLikely cause: {hint}")
            raise AssertionError(f"{message}\nHint: q_latent[b, i, t] = (W^UK_i)^T q^C_{{t,i}} with W^UK_i = "
                                 f"attn.w_uk.weight.view(H, d_h, d_c)[i]; the keys are [c^KV; k^R], the values c^KV; "
                                 f"then apply W^UV_i = attn.w_uv.weight.view(H, d_v, d_c)[i].")
        return f"it equals the naive form on all {len(cases)} cases"

    return body()


def _absorbed_variant(attn: MultiHeadLatentAttention, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor,
                      k_rope: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """The absorbed form with another scale or without the causal mask (mistakes the checker recognises)."""
    H, T = q_nope.shape[1], q_nope.shape[2]
    w_uk = attn.w_uk.weight.view(H, attn.qk_nope_head_dim, attn.kv_lora_rank)
    w_uv = attn.w_uv.weight.view(H, attn.v_head_dim, attn.kv_lora_rank)
    q = torch.cat([torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk), q_rope], -1)  # [B, H, T, d_c + d_h^R]
    k = torch.cat([c_kv, k_rope], -1)[:, None]  # [B, 1, T, d_c + d_h^R]
    scores = q @ k.transpose(-1, -2) * scale  # [B, H, T, T]
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhtc,hvc->bhtv", torch.softmax(scores, dim=-1) @ c_kv[:, None], w_uv)
