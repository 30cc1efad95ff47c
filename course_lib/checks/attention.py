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

from course_lib.attention.mla import MultiHeadLatentAttention
from course_lib.attention.rope import apply_rope, rope_angles
from course_lib.checks.cases import Mistake
from course_lib.checks.comparison import compare, describe_value
from course_lib.checks.learner import call_learner, clone_args
from course_lib.checks.verdict import CheckFailed, checker

# (dim, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim), (batch, T).
# The first two have d_h != d_h^R, d_c != d_v and dim / n_heads different from d_h and d_h + d_h^R (MHA's habit),
# so these mistakes differ from the reference there; the third is the small one (batch 1, d_h = d_h^R).
_SIZES = [((24, 2, 12, 10, 6, 4, 5), (2, 5)), ((30, 3, 10, 6, 8, 4, 5), (2, 7)), ((32, 4, 16, 12, 6, 6, 8), (1, 9))]
# Decoding with a cache: (index into _SIZES, batch, L tokens already cached, T new tokens at positions L..L+T-1).
_DECODE = [(0, 2, 6, 1), (1, 2, 4, 3)]
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


class MLACase:
    """One input: the layer, the new tokens h [B, T, dim] at positions L..L+T-1, the cache of the L tokens before
    them (None when L = 0, else (c_kv [B, L, d_c], k_rope [B, L, d_h^R]) as the layer computes it), the whole
    sequence h_full [B, L + T, dim] and its label."""

    def __init__(self, attn: MultiHeadLatentAttention, h_full: torch.Tensor, past_len: int) -> None:
        self.attn, self.h_full, self.start = attn, h_full, past_len
        self.h = h_full[:, past_len:]
        with torch.no_grad():
            self.past = attn.project(h_full[:, :past_len])[2:] if past_len else None
        B, T, dim = self.h.shape
        positions = f"position {past_len}" if T == 1 else f"positions {past_len}..{past_len + T - 1}"
        where = (f"h of shape {[B, T, dim]}" if not past_len else
                 f"h of shape {[B, T, dim]} at {positions}, after a cache of {past_len} tokens")
        self.label = (f"(attn with dim={attn.dim}, n_heads={attn.n_heads}, d_c'={attn.q_lora_rank}, "
                      f"d_c={attn.kv_lora_rank}, d_h={attn.qk_nope_head_dim}, d_h^R={attn.qk_rope_head_dim}, "
                      f"d_v={attn.v_head_dim}; {where})")


def _cases() -> list[MLACase]:
    """The cases from position 0, then the ones that decode after a cache."""
    layers, cases = [], []
    for seed, (sizes, (batch, T)) in enumerate(_SIZES):
        generator = torch.Generator().manual_seed(100 + seed)
        layers.append(_layer(sizes, generator))
        cases.append(MLACase(layers[-1], torch.randn(batch, T, sizes[0], generator=generator), 0))
    for index, batch, L, T in _DECODE:
        generator = torch.Generator().manual_seed(200 + index)
        cases.append(MLACase(layers[index], torch.randn(batch, L + T, layers[index].dim, generator=generator), L))
    return cases


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: str) -> torch.Tensor:
    """Eq. 10 for T queries at positions L - T..L - 1 over L keys, with the mask ``mask``: "causal" (query i sees
    keys 0..L - T + i), "none", or "top-left" (``is_causal=True`` with fewer queries than keys: query i sees keys
    0..i, what scaled_dot_product_attention does)."""
    T, L = q.shape[-2], k.shape[-2]
    allowed = {"causal": torch.ones(T, L, dtype=torch.bool).tril(L - T), "none": torch.ones(T, L, dtype=torch.bool),
               "top-left": torch.ones(T, L, dtype=torch.bool).tril()}[mask]
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _variant(case: MLACase, *, scale: float | None = None, rope_on_compressed=False, q_norm=True, kv_norm=True,
             mask="causal", merge_transposed=True, query_rope_at_zero=False) -> torch.Tensor:
    """MLA's output u on a case with one deliberate change (the mistakes the checker recognises); safe for any
    sizes. The cached latents, if any, are the layer's own."""
    attn, h, L = case.attn, case.h, case.start
    B, T, _ = h.shape
    H, dh, dr, dv = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
    c_q, c_kv = attn.w_dq(h), attn.w_dkv(h)
    c_q = attn.q_norm(c_q) if q_norm else c_q
    c_kv = attn.kv_norm(c_kv) if kv_norm else c_kv
    k_r = apply_rope(attn.w_kr(h), attn.cos[L:], attn.sin[L:])  # [B, T, d_h^R]
    if case.past is not None:
        c_kv, k_r = torch.cat([case.past[0], c_kv], 1), torch.cat([case.past[1], k_r], 1)  # L + T positions
    q_c = attn.w_uq(c_q).view(B, T, H, dh).transpose(1, 2)  # [B, H, T, d_h]
    k_c = attn.w_uk(c_kv).view(B, L + T, H, dh).transpose(1, 2)  # [B, H, L + T, d_h]
    if rope_on_compressed:  # the learner's own tables of width d_h (the layer's are d_h^R wide); d_h is even here
        cos, sin = rope_angles(dh, L + T)
        q_c, k_c = apply_rope(q_c, cos[L:], sin[L:]), apply_rope(k_c, cos, sin)
    q_start = 0 if query_rope_at_zero else L
    q_r = apply_rope(attn.w_qr(c_q).view(B, T, H, dr).transpose(1, 2), attn.cos[q_start:], attn.sin[q_start:])
    v = attn.w_uv(c_kv).view(B, L + T, H, dv).transpose(1, 2)
    q, k = torch.cat([q_c, q_r], -1), torch.cat([k_c, k_r[:, None].expand(B, H, L + T, dr)], -1)
    o = _attention(q, k, v, scale or attn.scale, mask)  # [B, H, T, d_v]
    o = o.transpose(1, 2) if merge_transposed else o
    return attn.w_o(o.reshape(B, T, H * dv))


def output_mistakes(case: MLACase) -> list[Mistake]:
    """The forward's catalogue for a case: Mistake(hint in the case's sizes, u of the mistake when called with no
    argument), in the same order for every case (the entry that needs an even d_h last, absent otherwise)."""
    attn = case.attn
    dh, dr, dim, H = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.dim, attn.n_heads
    mistakes = [
        Mistake(
            f"the softmax scale is 1/sqrt(d_h) = 1/sqrt({dh}). In MLA each query and key has d_h + d_h^R features "
            f"(the compressed part and the RoPE part), so [V3] eq. 10 divides by sqrt(d_h + d_h^R) = sqrt({dh + dr}).",
            lambda: _variant(case, scale=1 / math.sqrt(dh))),
        Mistake(
            f"the softmax scale is MHA's 1/sqrt(dim / n_heads) = 1/sqrt({dim / H:g}). In MLA the head size is not "
            f"dim / n_heads: each query and key has d_h + d_h^R features, so [V3] eq. 10 divides by "
            f"sqrt(d_h + d_h^R) = sqrt({dh + dr}).", lambda: _variant(case, scale=1 / math.sqrt(dim / H))),
        Mistake(
            "the q_norm is missing: c^Q = q_norm(w_dq(h)) (the released model normalises both latents, [V3] 4.2).",
            lambda: _variant(case, q_norm=False)),
        Mistake(
            "the RMSNorms on the latents are missing: c^Q = q_norm(w_dq(h)) and c^KV = kv_norm(w_dkv(h)) (the "
            "released model normalises both latents, [V3] 4.2).", lambda: _variant(case, q_norm=False, kv_norm=False)),
        Mistake(
            "there is no causal mask: position t may attend only to positions j <= t.",
            lambda: _variant(case, mask="none")),
        Mistake(
            "the causal mask is aligned to the top-left corner: with L cached tokens and T new ones, "
            "is_causal=True lets new token i see keys 0..i only (scaled_dot_product_attention aligns it that way "
            "when there are more keys than queries). Token i sits at position L + i and sees keys 0..L + i: "
            "attn_mask=torch.ones(T, L + T, dtype=torch.bool).tril(L).",
            lambda: _variant(case, mask="top-left")),
        Mistake(
            "the new queries were rotated for positions 0..T-1: after a cache of L tokens they sit at positions "
            "L..L+T-1, so q^R = RoPE(W^QR c^Q) takes the rows cos[L:], sin[L:] of the tables (as k^R of the new "
            "tokens does).", lambda: _variant(case, query_rope_at_zero=True)),
        Mistake(
            "the heads were merged without moving the head axis back: o is [B, H, T, d_v], and "
            "o.transpose(1, 2).reshape(B, T, H * d_v) puts each token's heads side by side, while "
            "o.reshape(B, T, H * d_v) alone mixes positions and heads.", lambda: _variant(case, merge_transposed=False)),
    ]
    if dh % 2 == 0:  # with RoPE tables of width d_h (with the layer's own, of width d_h^R, apply_rope raises)
        mistakes.append(Mistake(
            "RoPE was applied to the compressed parts q^C and k^C as well. Position goes only into the decoupled parts "
            "q^R = RoPE(W^QR c^Q) and k^R = RoPE(W^KR h): a rotation between W^UQ and W^UK would stop W^UK from "
            "being absorbed into the query at inference (section 3).", lambda: _variant(case, rope_on_compressed=True)))
    return mistakes


def _named_cause(outputs: Sequence[Any], catalogues: Sequence[list[Mistake]], shown: int) -> str | None:
    """The hint (in the sizes of case ``shown``) of the first mistake whose output equals the learner's on EVERY
    case, or None: one case alone may not tell mistakes apart, and a hint that explains one case and not the
    next would send the learner the wrong way."""
    with torch.no_grad():
        for i in range(len(catalogues[0])):
            if all(i < len(catalogue) and compare(got, catalogue[i].fn(), **_TOL) is None
                   for got, catalogue in zip(outputs, catalogues)):
                return catalogues[shown][i].hint
    return None


def _check_cache(got_cache: Any, case: MLACase) -> None:
    """The returned cache against the layer's, for the L cached and the T new tokens."""
    attn, label, L = case.attn, case.label, case.start
    B, T, _ = case.h.shape
    H, dh, dr, dc = attn.n_heads, attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.kv_lora_rank
    if not isinstance(got_cache, (tuple, list)) or len(got_cache) != 2:
        raise CheckFailed(f"For the input {label}: the second item you return should be the cache, a tuple "
                             f"(c_kv, k_rope), but it is {describe_value(got_cache)}.")
    c_kv, k_rope = got_cache
    for name, value in (("c_kv", c_kv), ("k_rope", k_rope)):
        if not isinstance(value, torch.Tensor):
            raise CheckFailed(f"For the input {label}: {name} should be a tensor, but it is {describe_value(value)}.")
    if L and list(c_kv.shape) == [B, T, dc]:
        raise CheckFailed(
            f"For the input {label}: your cached c_kv has shape {list(c_kv.shape)}, the new tokens only, but the "
            f"cache you return holds every token so far, [B, L + T, d_c] = {[B, L + T, dc]}.\nHint: append the new "
            f"latents to the past ones, torch.cat([past_c_kv, c_kv], dim=1), and the same for k_rope.")
    if list(c_kv.shape) != [B, L + T, dc]:
        per_head = c_kv.dim() == 4 or c_kv.shape[-1] in (H * dh, dh, dh + dr, H * (dh + dr))
        raise CheckFailed(
            f"For the input {label}: your cached c_kv has shape {list(c_kv.shape)}, but MLA caches the latent "
            f"c^KV of shape [B, L + T, d_c] = {[B, L + T, dc]}.\n" + (
                "Likely cause: a cache of keys instead of the latent. Caching the up-projected keys k^C = W^UK c^KV "
                "(and values) costs 2 n_h d_h elements per token, as in MHA; MLA keeps only c^KV (d_c elements) and "
                "recomputes or absorbs the rest ([V3] eq. 1)." if per_head else "Hint: c_kv = kv_norm(w_dkv(h))."))
    if list(k_rope.shape) != [B, L + T, dr]:
        per_head = k_rope.numel() == B * (L + T) * H * dr
        raise CheckFailed(
            f"For the input {label}: your cached k_rope has shape {list(k_rope.shape)}, but it should be "
            f"[B, L + T, d_h^R] = {[B, L + T, dr]}.\n" + (
                "Likely cause: a per-head RoPE key. [V3] eq. 3 computes ONE k^R_t = RoPE(W^KR h_t), shared by every "
                "head (k_{t,i} = [k^C_{t,i}; k^R_t]); cache it once, not once per head." if per_head else
                "Hint: k_rope = apply_rope(w_kr(h), cos, sin)."))
    with torch.no_grad():
        _, _, want_c, want_k = attn.project(case.h_full)
        problem = compare(c_kv, want_c, **_TOL, what="your cached c_kv")
        if problem:
            cause = _cause(c_kv[:, L:], case, _LATENT_MISTAKES)
            raise CheckFailed(f"For the input {label}: {problem}.\n" + (
                f"Likely cause: {cause}" if cause else
                "Hint: c_kv = kv_norm(w_dkv(h)), the RMSNorm over the d_c features of the latent alone."))
        problem = compare(k_rope, want_k, **_TOL, what="your cached k_rope")
        if problem:
            cause = _cause(k_rope, case, _KEY_MISTAKES)
            hint = (f"Likely cause: {cause}" if cause else
                    "Hint: k^R = RoPE(W^KR h), computed from h (not from the latent c^KV).")
            raise CheckFailed(f"For the input {label}: {problem}.\n{hint}")


def _fused_norm(case: MLACase, weighted: bool) -> torch.Tensor:
    """The new tokens' latents [B, T, d_c] normalised over the fused [c^KV; k^R] (with or without kv_norm's weight)."""
    attn, h = case.attn, case.h
    dc = attn.kv_lora_rank
    fused = F.rms_norm(torch.cat([attn.w_dkv(h), attn.w_kr(h)], -1), (dc + attn.qk_rope_head_dim,),
                       eps=attn.kv_norm.eps)[..., :dc]
    return fused * attn.kv_norm.weight if weighted else fused


_FUSED_NORM = ("the RMSNorm was taken over the fused [c^KV; k^R] (what Hugging Face's kv_a_proj_with_mqa computes in "
               "one matrix). Only the d_c features of the latent are normalised: split first, then c^KV = "
               "kv_norm(w_dkv(h)) (HF: kv_a_layernorm on the c^KV part alone); k^R is rotated, never normalised "
               "([V3] eqs. 1 and 3, 4.2).")
# The cache's mistakes: Mistake(hint, fn(case) -> what that mistake caches): the new tokens' latents [B, T, d_c],
# and the whole k_rope [B, L + T, d_h^R].
_LATENT_MISTAKES = [
    Mistake("the RMSNorm is missing: c^KV = kv_norm(w_dkv(h)).", lambda case: case.attn.w_dkv(case.h)),
    Mistake(_FUSED_NORM, lambda case: _fused_norm(case, weighted=True)),
    Mistake(_FUSED_NORM, lambda case: _fused_norm(case, weighted=False)),
]
_KEY_MISTAKES = [
    Mistake("the cached keys were rotated a second time. The k^R in the cache are already rotated for their "
            "positions 0..L-1; rotate only the new tokens' keys (rows cos[L:], sin[L:] of the tables) and append "
            "them.", lambda case: torch.cat([apply_rope(case.past[1], case.attn.cos, case.attn.sin),
                                             case.attn.project(case.h_full)[3][:, case.start:]], 1)),
    Mistake("the new keys were rotated for positions 0..T-1. After a cache of L tokens they sit at positions "
            "L..L+T-1: k^R = apply_rope(w_kr(h), attn.cos[L:], attn.sin[L:]).",
            lambda case: torch.cat([case.past[1], apply_rope(case.attn.w_kr(case.h), case.attn.cos, case.attn.sin)],
                                   1)),
    Mistake("k_rope is not rotated: k^R = RoPE(W^KR h) (apply_rope(w_kr(h), cos, sin)).",
            lambda case: torch.cat([case.past[1], case.attn.w_kr(case.h)], 1) if case.past is not None
            else case.attn.w_kr(case.h)),
]


def _cause(got: Any, case: MLACase, mistakes: Sequence[Mistake]) -> str | None:
    """The hint of the first mistake whose ``fn(case)`` equals ``got``, or None."""
    with torch.no_grad():
        for mistake in mistakes:
            try:
                wrong = mistake.fn(case)
            except Exception:  # a mistake model may not apply to every input (no cache before position 0)
                continue
            if compare(got, wrong, **_TOL) is None:
                return mistake.hint
    return None


def _rows(value: Any, shape: torch.Size) -> Any:
    """A tensor of the expected shape as rows of its last axis (short checker messages); anything else as it is."""
    if isinstance(value, torch.Tensor) and value.shape == shape:
        return value.reshape(-1, shape[-1])
    return value


_ROPE_CRASH = {"apply_rope expected": "RoPE goes only on the decoupled parts, of size d_h^R: q^R = RoPE(W^QR c^Q) "
                                     "and k^R = RoPE(W^KR h). The compressed latent and q^C, k^C carry no position."}
_NO_PAST_CRASH = {"positional argument": "the function takes no cache. After a cache of L tokens the checker calls "
                                         "mla_forward(attn, h, past): give it the parameter past=None."}


def check_mla_forward(fn: Callable[..., Any]) -> None:
    """Check ``fn(attn, h, past=None) -> (u [B, T, dim], (c_kv [B, L + T, d_c], k_rope [B, L + T, d_h^R]))``:
    [V3] eqs. 1-11 on a ``MultiHeadLatentAttention``'s weights, with the RMSNorms on the latents, for a whole
    sequence (``fn(attn, h)``, positions 0..T-1) and after a cache of L tokens (``fn(attn, h, past)`` with past =
    (c_kv [B, L, d_c], k_rope [B, L, d_h^R]), the new tokens at positions L..L+T-1)."""

    @checker("mla_forward")
    def body() -> str:
        cases = _cases()
        outputs, first_problem = [], None
        for case in cases:
            args = (case.attn, case.h) if case.past is None else (case.attn, case.h, case.past)
            crash_hints = _ROPE_CRASH if case.past is None else {**_ROPE_CRASH, **_NO_PAST_CRASH}
            got = call_learner(fn, *clone_args(args), name="Your mla_forward", label=case.label,
                               crash_hints=crash_hints)
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"For the input {case.label}: mla_forward should return (u, (c_kv, k_rope)), "
                                     f"but it returned {describe_value(got)}.")
            _check_cache(got[1], case)
            with torch.no_grad():
                want = case.attn(case.h_full)[:, case.start:]
                problem = compare(_rows(got[0], want.shape), _rows(want, want.shape), **_TOL,
                                  what="your u (rows: the tokens of the batch, one after the other)")
            if problem and first_problem is None:
                first_problem = (len(outputs), f"For the input {case.label}: {problem}.")
            outputs.append(got[0])
        if first_problem is None:
            return (f"it agrees with MultiHeadLatentAttention on all {len(cases)} cases (from position 0 and after "
                    f"a cache), output and cache")
        cause = _named_cause(outputs, [output_mistakes(case) for case in cases], first_problem[0])
        if cause is not None:
            raise CheckFailed(f"{first_problem[1]}\nLikely cause: {cause}")
        raise CheckFailed(f"{first_problem[1]}\nHint: go through eqs. 1-11 one by one and check each shape: q "
                             f"and k of head i are [q^C_i; q^R_i] and [k^C_i; k^R], the value v^C_i; the heads are "
                             f"split with view(B, T, H, d).transpose(1, 2) and merged back with transpose(1, 2); "
                             f"after a cache of L tokens, the new ones sit at positions L..L+T-1.")

    return body()


def _absorbed_variant(attn: MultiHeadLatentAttention, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor,
                      k_rope: torch.Tensor, *, scale: float, mask: str = "causal", w_uv: bool = True) -> torch.Tensor:
    """The absorbed form with another scale, another mask (see ``_attention``) or without W^UV (mistakes the
    checker recognises); safe for any sizes. q_nope, q_rope hold the T newest of the L positions of c_kv."""
    H = q_nope.shape[1]
    w_uk = attn.w_uk.weight.view(H, attn.qk_nope_head_dim, attn.kv_lora_rank)
    q = torch.cat([torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk), q_rope], -1)  # [B, H, T, d_c + d_h^R]
    k = torch.cat([c_kv, k_rope], -1)[:, None]  # [B, 1, L, d_c + d_h^R]
    o_latent = _attention(q, k, c_kv[:, None], scale, mask)  # [B, H, T, d_c]
    if not w_uv:
        return o_latent
    return torch.einsum("bhtc,hvc->bhtv", o_latent, attn.w_uv.weight.view(H, attn.v_head_dim, attn.kv_lora_rank))


def absorbed_mistakes(attn: MultiHeadLatentAttention, inputs: tuple[torch.Tensor, ...]
                       ) -> list[Mistake]:
    """The absorbed form's catalogue for these sizes: Mistake(hint, o of the mistake when called with no argument)."""
    dc, dr, dv = attn.kv_lora_rank, attn.qk_rope_head_dim, attn.v_head_dim
    return [
        Mistake(
            f"the scale is 1/sqrt(d_c + d_h^R) = 1/sqrt({dc + dr}), the default of scaled_dot_product_attention for "
            f"the absorbed query's width. The scores are the same dot products as in the naive form, so the scale "
            f"stays 1/sqrt(d_h + d_h^R): pass scale=attn.scale.",
            lambda: _absorbed_variant(attn, *inputs, scale=1 / math.sqrt(dc + dr))),
        Mistake(
            f"W^UV is missing. Attention on the latents gives sum_j a_j c^KV_j (d_c = {dc} features per head); head "
            f"i's output is W^UV_i times that ({dv} features).",
            lambda: _absorbed_variant(attn, *inputs, scale=attn.scale, w_uv=False)),
        Mistake(
            "there is no causal mask: position t may attend only to positions j <= t.",
            lambda: _absorbed_variant(attn, *inputs, scale=attn.scale, mask="none")),
        Mistake(
            "the causal mask is aligned to the top-left corner: with L cached latents and T new queries, "
            "is_causal=True lets query i see positions 0..i only (scaled_dot_product_attention aligns it that way "
            "when there are more keys than queries). Query i sits at position L - T + i and sees positions "
            "0..L - T + i: attn_mask=torch.ones(T, L, dtype=torch.bool).tril(L - T).",
            lambda: _absorbed_variant(attn, *inputs, scale=attn.scale, mask="top-left")),
    ]


def check_attend_absorbed(fn: Callable[..., Any]) -> None:
    """Check ``fn(attn, q_nope, q_rope, c_kv, k_rope) -> o [B, H, T, d_v]`` against the naive form
    ``attn.attend_naive``: causal, the T queries being the newest of the L positions of c_kv (L = T for a whole
    sequence, L > T when decoding after a cache)."""

    @checker("attend_absorbed")
    def body() -> str:
        cases = _cases()
        outputs, catalogues, first_problem = [], [], None
        for case in cases:
            attn = case.attn
            with torch.no_grad():
                q_nope, q_rope = attn.project(case.h, case.start)[:2]
                inputs = (q_nope, q_rope, *attn.project(case.h_full)[2:])
                expected = attn.attend_naive(*inputs, case.start)
            got = call_learner(fn, *clone_args((attn, *inputs)), name="Your attend_absorbed", label=case.label,
                               crash_hints=_ROPE_CRASH)
            with torch.no_grad():
                problem = compare(_rows(got, expected.shape), _rows(expected, expected.shape), **_TOL,
                                  what="your o (rows: batch, head, position, flattened)")
            if problem and first_problem is None:
                first_problem = (len(outputs), f"For the input {case.label}: {problem}.")
            outputs.append(got)
            catalogues.append(absorbed_mistakes(attn, inputs))
        if first_problem is None:
            return f"it equals the naive form on all {len(cases)} cases (from position 0 and after a cache)"
        cause = _named_cause(outputs, catalogues, first_problem[0])
        if cause is not None:
            raise CheckFailed(f"{first_problem[1]}\nLikely cause: {cause}")
        raise CheckFailed(f"{first_problem[1]}\nHint: q_latent[b, i, t] = (W^UK_i)^T q^C_{{t,i}} with W^UK_i = "
                             f"attn.w_uk.weight.view(H, d_h, d_c)[i]; the keys are [c^KV; k^R], the values c^KV; "
                             f"then apply W^UV_i = attn.w_uv.weight.view(H, d_v, d_c)[i].")

    return body()
