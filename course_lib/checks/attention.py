"""Checkers for notebook 07: Multi-head Latent Attention written from [V3] eqs. 1-11, and its absorbed form.

The catalogue of mistakes: a cache of (per-head) keys instead of the latent c^KV, one RoPE key per head instead of
the one shared key, the softmax scale 1/sqrt(d_h) or MHA's 1/sqrt(dim / n_heads) instead of 1/sqrt(d_h + d_h^R),
RoPE applied to the compressed parts (q^C, k^C) instead of only to the decoupled ones, an RMSNorm on a latent
forgotten, no causal mask, the heads merged without moving the head axis back; in the absorbed form, the default
scale of the attention on the latents (1/sqrt(d_c + d_h^R)), W^UV forgotten and no causal mask.

A "likely cause" is named only when the mistake reproduces the learner's output on EVERY case (several mistakes
can agree with each other on one case); the cases have distinct sizes (d_h != d_h^R, d_c != d_v, batch 2 first),
and every mistake of the catalogue is computed safely for any sizes, so a checker explains and never crashes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from course_lib.attention import MultiHeadLatentAttention, apply_rope, rope_angles
from course_lib.checks._core import call_learner, checker, clone_args, compare, describe_value

# (dim, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim), (batch, T).
# Every case has d_h != d_h^R, d_c != d_v and dim / n_heads different from d_h and d_h + d_h^R (MHA's habit), so
# these mistakes differ from the reference everywhere; the last case is the small one (batch 1, d_h = d_h^R).
_SIZES = [((24, 2, 12, 10, 6, 4, 5), (2, 5)), ((30, 3, 10, 6, 8, 4, 5), (2, 7)), ((32, 4, 16, 12, 6, 6, 8), (1, 9))]
_TOL = dict(rtol=1e-4, atol=1e-5)


def _layer(sizes: Sequence[int], generator: torch.Generator) -> MultiHeadLatentAttention:
    """A layer of these sizes with seeded random weights (RMSNorm weights away from 1, so a missing norm shows)."""
    attn = MultiHeadLatentAttention(*sizes, max_seq_len=16)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[-1]))
        attn.q_norm.weight.uniform_(0.5, 1.5, generator=generator)
        attn.kv_norm.weight.uniform_(0.5, 1.5, generator=generator)
    return attn


def _label(attn: MultiHeadLatentAttention, h: torch.Tensor) -> str:
    return (f"(attn with dim={attn.dim}, n_heads={attn.n_heads}, d_c'={attn.q_lora_rank}, d_c={attn.kv_lora_rank}, "
            f"d_h={attn.qk_nope_head_dim}, d_h^R={attn.qk_rope_head_dim}, d_v={attn.v_head_dim}; "
            f"h of shape {list(h.shape)})")


def _cases() -> list[tuple[MultiHeadLatentAttention, torch.Tensor, str]]:
    cases = []
    for seed, (sizes, (batch, T)) in enumerate(_SIZES):
        generator = torch.Generator().manual_seed(100 + seed)
        attn = _layer(sizes, generator)
        h = torch.randn(batch, T, sizes[0], generator=generator)
        cases.append((attn, h, _label(attn, h)))
    return cases


def _variant(attn: MultiHeadLatentAttention, h: torch.Tensor, *, scale: float | None = None, rope_on_compressed=False,
             q_norm=True, kv_norm=True, causal=True, merge_transposed=True) -> torch.Tensor:
    """MLA's output u with one deliberate change (the mistakes the checker recognises); safe for any sizes."""
    B, T, _ = h.shape
    H, dh, dr, dv = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    c_q, c_kv = attn.w_dq(h), attn.w_dkv(h)
    c_q = attn.q_norm(c_q) if q_norm else c_q
    c_kv = attn.kv_norm(c_kv) if kv_norm else c_kv
    q_c = attn.w_uq(c_q).view(B, T, H, dh).transpose(1, 2)
    k_c = attn.w_uk(c_kv).view(B, T, H, dh).transpose(1, 2)
    if rope_on_compressed:  # the learner's own tables of width d_h (the layer's are d_h^R wide); d_h is even here
        cos, sin = rope_angles(dh, T)
        q_c, k_c = apply_rope(q_c, cos, sin), apply_rope(k_c, cos, sin)
    q_r = apply_rope(attn.w_qr(c_q).view(B, T, H, dr).transpose(1, 2), attn.cos, attn.sin)
    k_r = apply_rope(attn.w_kr(h), attn.cos, attn.sin)[:, None].expand(B, H, T, dr)
    v = attn.w_uv(c_kv).view(B, T, H, dv).transpose(1, 2)
    q, k = torch.cat([q_c, q_r], -1), torch.cat([k_c, k_r], -1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale or attn.scale)  # [B, H, T, d_v]
    o = o.transpose(1, 2) if merge_transposed else o
    return attn.w_o(o.reshape(B, T, H * dv))


def _output_mistakes(attn: MultiHeadLatentAttention, h: torch.Tensor) -> dict[str, tuple[str, Callable[[], Any]]]:
    """The forward's catalogue for these sizes: {name: (hint, u of the mistake on h, computed when called)}."""
    dh, dr, dim, H = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.dim, attn.n_heads
    mistakes = {
        "scale d_h": (
            f"the softmax scale is 1/sqrt(d_h) = 1/sqrt({dh}). In MLA each query and key has d_h + d_h^R features "
            f"(the compressed part and the RoPE part), so [V3] eq. 10 divides by sqrt(d_h + d_h^R) = sqrt({dh + dr}).",
            lambda: _variant(attn, h, scale=1 / math.sqrt(dh))),
        "scale dim / n_heads": (
            f"the softmax scale is MHA's 1/sqrt(dim / n_heads) = 1/sqrt({dim / H:g}). In MLA the head size is not "
            f"dim / n_heads: each query and key has d_h + d_h^R features, so [V3] eq. 10 divides by "
            f"sqrt(d_h + d_h^R) = sqrt({dh + dr}).", lambda: _variant(attn, h, scale=1 / math.sqrt(dim / H))),
        "no q_norm": (
            "the q_norm is missing: c^Q = q_norm(w_dq(h)) (the released model normalises both latents, [V3] 4.2).",
            lambda: _variant(attn, h, q_norm=False)),
        "no norms": (
            "the RMSNorms on the latents are missing: c^Q = q_norm(w_dq(h)) and c^KV = kv_norm(w_dkv(h)) (the "
            "released model normalises both latents, [V3] 4.2).", lambda: _variant(attn, h, q_norm=False, kv_norm=False)),
        "no causal mask": (
            "there is no causal mask: position t may attend only to positions j <= t (is_causal=True).",
            lambda: _variant(attn, h, causal=False)),
        "heads merged without transpose": (
            "the heads were merged without moving the head axis back: o is [B, H, T, d_v], and "
            "o.transpose(1, 2).reshape(B, T, H * d_v) puts each token's heads side by side, while "
            "o.reshape(B, T, H * d_v) alone mixes positions and heads.", lambda: _variant(attn, h, merge_transposed=False)),
    }
    if dh % 2 == 0:  # with RoPE tables of width d_h (with the layer's own, of width d_h^R, apply_rope raises)
        mistakes["RoPE on q^C, k^C"] = (
            "RoPE was applied to the compressed parts q^C and k^C as well. Position goes only into the decoupled parts "
            "q^R = RoPE(W^QR c^Q) and k^R = RoPE(W^KR h): a rotation between W^UQ and W^UK would stop W^UK from "
            "being absorbed into the query at inference (section 3).", lambda: _variant(attn, h, rope_on_compressed=True))
    return mistakes


def _named_cause(outputs: Sequence[Any], catalogues: Sequence[dict[str, tuple[str, Callable[[], Any]]]],
                 shown: int) -> str | None:
    """The hint (in the sizes of case ``shown``) of the first mistake whose output equals the learner's on EVERY
    case, or None: one case alone may not tell mistakes apart, and a hint that explains one case and not the
    next would send the learner the wrong way."""
    with torch.no_grad():
        for name in catalogues[0]:
            if all(name in catalogue and compare(got, catalogue[name][1](), **_TOL) is None
                   for got, catalogue in zip(outputs, catalogues)):
                return catalogues[shown][name][0]
    return None


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
        problem = compare(c_kv, want_c, **_TOL, what="your cached c_kv")
        if problem:
            hint = ("the RMSNorm is missing: c^KV = kv_norm(w_dkv(h))."
                    if compare(c_kv, attn.w_dkv(h), **_TOL) is None else "c_kv = kv_norm(w_dkv(h)).")
            raise AssertionError(f"For the input {label}: {problem}.\nHint: {hint}")
        problem = compare(k_rope, want_k, **_TOL, what="your cached k_rope")
        if problem:
            hint = ("k_rope is not rotated: k^R = RoPE(W^KR h) (apply_rope(w_kr(h), cos, sin))."
                    if compare(k_rope, attn.w_kr(h), **_TOL) is None else
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
        outputs, first_problem = [], None
        for attn, h, label in cases:
            got = _call(fn, *clone_args((attn, h)), name="Your mla_forward", label=label)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise AssertionError(f"For the input {label}: mla_forward should return (u, (c_kv, k_rope)), but it "
                                     f"returned {describe_value(got)}.")
            _check_cache(got[1], attn, h, label)
            with torch.no_grad():
                problem = compare(_rows(got[0], h.shape), _rows(attn(h), h.shape), **_TOL,
                                  what="your u (rows: the tokens of the batch, one after the other)")
            if problem and first_problem is None:
                first_problem = (len(outputs), f"For the input {label}: {problem}.")
            outputs.append(got[0])
        if first_problem is None:
            return f"it agrees with MultiHeadLatentAttention on all {len(cases)} cases, output and cache"
        cause = _named_cause(outputs, [_output_mistakes(attn, h) for attn, h, _ in cases], first_problem[0])
        if cause is not None:
            raise AssertionError(f"{first_problem[1]}\nLikely cause: {cause}")
        raise AssertionError(f"{first_problem[1]}\nHint: go through eqs. 1-11 one by one and check each shape: q "
                             f"and k of head i are [q^C_i; q^R_i] and [k^C_i; k^R], the value v^C_i; the heads are "
                             f"split with view(B, T, H, d).transpose(1, 2) and merged back with transpose(1, 2).")

    return body()


def _absorbed_variant(attn: MultiHeadLatentAttention, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor,
                      k_rope: torch.Tensor, *, scale: float, causal: bool = True, w_uv: bool = True) -> torch.Tensor:
    """The absorbed form with another scale, without the causal mask or without W^UV (mistakes the checker
    recognises); safe for any sizes."""
    H, T = q_nope.shape[1], q_nope.shape[2]
    w_uk = attn.w_uk.weight.view(H, attn.qk_nope_head_dim, attn.kv_lora_rank)
    q = torch.cat([torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk), q_rope], -1)  # [B, H, T, d_c + d_h^R]
    k = torch.cat([c_kv, k_rope], -1)[:, None]  # [B, 1, T, d_c + d_h^R]
    scores = q @ k.transpose(-1, -2) * scale  # [B, H, T, T]
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    o_latent = torch.softmax(scores, dim=-1) @ c_kv[:, None]  # [B, H, T, d_c]
    if not w_uv:
        return o_latent
    return torch.einsum("bhtc,hvc->bhtv", o_latent, attn.w_uv.weight.view(H, attn.v_head_dim, attn.kv_lora_rank))


def _absorbed_mistakes(attn: MultiHeadLatentAttention, inputs: tuple[torch.Tensor, ...]
                       ) -> dict[str, tuple[str, Callable[[], Any]]]:
    """The absorbed form's catalogue for these sizes: {name: (hint, o of the mistake, computed when called)}."""
    dc, dr, dv = attn.kv_lora_rank, attn.qk_rope_head_dim, attn.v_head_dim
    return {
        "default scale": (
            f"the scale is 1/sqrt(d_c + d_h^R) = 1/sqrt({dc + dr}), the default of scaled_dot_product_attention for "
            f"the absorbed query's width. The scores are the same dot products as in the naive form, so the scale "
            f"stays 1/sqrt(d_h + d_h^R): pass scale=attn.scale.",
            lambda: _absorbed_variant(attn, *inputs, scale=1 / math.sqrt(dc + dr))),
        "no W^UV": (
            f"W^UV is missing. Attention on the latents gives sum_j a_j c^KV_j (d_c = {dc} features per head); head "
            f"i's output is W^UV_i times that ({dv} features).",
            lambda: _absorbed_variant(attn, *inputs, scale=attn.scale, w_uv=False)),
        "no causal mask": (
            "there is no causal mask: position t may attend only to positions j <= t.",
            lambda: _absorbed_variant(attn, *inputs, scale=attn.scale, causal=False)),
    }


def check_attend_absorbed(fn: Callable[..., Any]) -> None:
    """Check ``fn(attn, q_nope, q_rope, c_kv, k_rope) -> o [B, H, T, d_v]`` (causal, positions from 0) against the
    naive form ``attn.attend_naive``."""

    @checker("attend_absorbed")
    def body() -> str:
        cases = _cases()
        outputs, catalogues, first_problem = [], [], None
        for attn, h, label in cases:
            with torch.no_grad():
                inputs = attn.project(h)
                expected = attn.attend_naive(*inputs)
            got = _call(fn, *clone_args((attn, *inputs)), name="Your attend_absorbed", label=label)
            with torch.no_grad():
                problem = compare(_rows(got, expected.shape), _rows(expected, expected.shape), **_TOL,
                                  what="your o (rows: batch, head, position, flattened)")
            if problem and first_problem is None:
                first_problem = (len(outputs), f"For the input {label}: {problem}.")
            outputs.append(got)
            catalogues.append(_absorbed_mistakes(attn, inputs))
        if first_problem is None:
            return f"it equals the naive form on all {len(cases)} cases"
        cause = _named_cause(outputs, catalogues, first_problem[0])
        if cause is not None:
            raise AssertionError(f"{first_problem[1]}\nLikely cause: {cause}")
        raise AssertionError(f"{first_problem[1]}\nHint: q_latent[b, i, t] = (W^UK_i)^T q^C_{{t,i}} with W^UK_i = "
                             f"attn.w_uk.weight.view(H, d_h, d_c)[i]; the keys are [c^KV; k^R], the values c^KV; "
                             f"then apply W^UV_i = attn.w_uv.weight.view(H, d_v, d_c)[i].")

    return body()
