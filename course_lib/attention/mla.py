"""DeepSeek's Multi-head Latent Attention (MLA, [V3] 2.1.1 eqs. 1-11; [V2] 2.1): keys and values from one
compressed latent c^KV, RoPE carried by a separate ("decoupled") key k^R shared by every head.

Its cache holds c^KV and k^R only: d_c + d_h^R elements per token per layer ([V2] Table 1). Two forms give the
same output: the naive one up-projects the latent to per-head keys and values; the absorbed one folds W^UK into
the query and W^UV into the output, and attends over the latent cache directly. Inputs and the cache as in
``attention.mha``: forward(x [B, T, dim], cache=None) -> [B, T, dim], x at positions cache.length.. .
"""

from __future__ import annotations

import math

import torch
from torch import nn

from course_lib.attention import arguments
from course_lib.attention.cache import KVCache
from course_lib.attention.mha import causal_attention
from course_lib.attention.rope import apply_rope, rope_angles
from course_lib.attention.yarn import YarnScaling, yarn_frequencies, yarn_mscale
from course_lib.core.layers import RMSNorm
from course_lib.core.validation import boundary


class MultiHeadLatentAttention(nn.Module):
    """Multi-head Latent Attention exactly as [V3] 2.1.1 eqs. 1-11, with the released model's RMSNorms on the
    compressed latents ([V3] 4.2). For the input h_t of each token (x[:, t]):

        c^Q_t = RMSNorm(W^DQ h_t)                 [d_c']             (6)   w_dq, q_norm
        q^C_t = W^UQ c^Q_t                         [H, d_h]           (7)   w_uq
        q^R_t = RoPE(W^QR c^Q_t)                   [H, d_h^R]         (8)   w_qr   (one per head)
        c^KV_t = RMSNorm(W^DKV h_t)                [d_c]              (1)   w_dkv, kv_norm   -> cached
        k^C_t = W^UK c^KV_t                        [H, d_h]           (2)   w_uk
        k^R_t = RoPE(W^KR h_t)                     [d_h^R]            (3)   w_kr   (ONE, shared by every head) -> cached
        v^C_t = W^UV c^KV_t                        [H, d_v]           (5)   w_uv
        q_{t,i} = [q^C_{t,i}; q^R_{t,i}],  k_{t,i} = [k^C_{t,i}; k^R_t]    (9), (4)
        o_{t,i} = sum_{j<=t} softmax_j(q_{t,i} . k_{j,i} / sqrt(d_h + d_h^R)) v^C_{j,i}   (10)
        u_t = W^O [o_{t,1}; ...; o_{t,H}]                              (11)  w_o

    Sizes (paper / Hugging Face names): d_c' = q_lora_rank, d_c = kv_lora_rank, d_h = qk_nope_head_dim,
    d_h^R = qk_rope_head_dim (even), d_v = v_head_dim. V3: dim 7168, H 128, 1536, 512, 128, 64, 128.
    q_lora_rank = 0 turns the query compression off, as DeepSeek-V2-Lite does (its inference/configs/config_16B.json
    in the DeepSeek-V3 repository) and as the released MLA supports: one matrix W^Q (``w_q``, dim -> H (d_h + d_h^R),
    per head the rows of [q^C_i; q^R_i], the released ``wq`` and Hugging Face's ``q_proj``) takes the place of
    eqs. 6-8, q_{t,i} = [q^C_{t,i}; RoPE(q^R_{t,i})] with [q^C_t; q^R_t] = W^Q h_t; no c^Q, no q_norm.

    forward(x [B, T, dim], cache: KVCache | None = None) -> [B, T, dim]. ``absorb`` picks the form: False (naive)
    up-projects the latents to per-head keys and values; True (absorbed) attends over the latents, with W^UK
    folded into the query, (W^UK_i)^T q^C_{t,i} . c^KV_j = q^C_{t,i} . k^C_{j,i}, and W^UV applied to the
    attention-weighted latent (so it can be folded into W^O). The two give the same output.
    Cache: cache["c_kv"] [B, L, d_c] and cache["k_rope"] [B, L, d_h^R]: d_c + d_h^R elements per token.
    yarn: a ``YarnScaling`` to read past the pre-training context ([V3] 4.3): when max_seq_len exceeds its
    original_seq_len, the RoPE frequencies of q^R and k^R become ``yarn_frequencies`` and the softmax scale is
    multiplied by yarn_mscale(factor, mscale)^2, as the released ``precompute_freqs_cis`` and ``MLA.__init__`` do;
    the latent c^KV, and so the cache, is unchanged (the weights too: a trained model loads as it is).
    Raises TypeError for a size that is not an int, ValueError for a size < 1 (q_lora_rank < 0) or an odd
    qk_rope_head_dim; forward raises ValueError (TypeError) for an input or cache that does not fit (see
    ``arguments.attention_forward``).
    """

    kind = "mla"

    def __init__(self, dim: int, n_heads: int, q_lora_rank: int, kv_lora_rank: int, qk_nope_head_dim: int,
                 qk_rope_head_dim: int, v_head_dim: int, max_seq_len: int = 256, rope_base: float = 10000.0,
                 absorb: bool = False, yarn: YarnScaling | None = None) -> None:
        super().__init__()
        arguments.multi_head_latent_attention(dim, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim,
                                              qk_rope_head_dim, v_head_dim, max_seq_len, rope_base, yarn)
        self.dim, self.n_heads, self.max_seq_len, self.absorb, self.yarn = dim, n_heads, max_seq_len, absorb, yarn
        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.scale = 1.0 / math.sqrt(qk_nope_head_dim + qk_rope_head_dim)  # (10): d_h + d_h^R, not d_h
        H = n_heads
        if q_lora_rank:
            self.w_dq = nn.Linear(dim, q_lora_rank, bias=False)  # W^DQ
            self.q_norm = RMSNorm(q_lora_rank)
            self.w_uq = nn.Linear(q_lora_rank, H * qk_nope_head_dim, bias=False)  # W^UQ
            self.w_qr = nn.Linear(q_lora_rank, H * qk_rope_head_dim, bias=False)  # W^QR
        else:  # W^Q: per head [q^C_i; q^R_i] straight from h
            self.w_q = nn.Linear(dim, H * (qk_nope_head_dim + qk_rope_head_dim), bias=False)
        self.w_dkv = nn.Linear(dim, kv_lora_rank, bias=False)  # W^DKV
        self.kv_norm = RMSNorm(kv_lora_rank)
        self.w_uk = nn.Linear(kv_lora_rank, H * qk_nope_head_dim, bias=False)  # W^UK
        self.w_uv = nn.Linear(kv_lora_rank, H * v_head_dim, bias=False)  # W^UV
        self.w_kr = nn.Linear(dim, qk_rope_head_dim, bias=False)  # W^KR
        self.w_o = nn.Linear(H * v_head_dim, dim, bias=False)  # W^O
        frequencies = None  # RoPE's own
        if yarn is not None and max_seq_len > yarn.original_seq_len:  # as the released code: only when extended
            frequencies = yarn_frequencies(qk_rope_head_dim, rope_base, yarn.factor, yarn.original_seq_len,
                                           yarn.beta_fast, yarn.beta_slow)
            self.scale *= yarn_mscale(yarn.factor, yarn.mscale) ** 2
        cos, sin = rope_angles(qk_rope_head_dim, max_seq_len, rope_base, frequencies)  # q^R and k^R only
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, q_lora_rank={self.q_lora_rank}, kv_lora_rank={self.kv_lora_rank}, "
                f"qk_nope_head_dim={self.qk_nope_head_dim}, qk_rope_head_dim={self.qk_rope_head_dim}, "
                f"v_head_dim={self.v_head_dim}, absorb={self.absorb}, yarn={self.yarn}")

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty cache for this layer, in the dtype and on the device of its weights."""
        weight = self.w_dkv.weight
        return KVCache(self.kind, {"c_kv": (self.kv_lora_rank,), "k_rope": (self.qk_rope_head_dim,)},
                       batch_size, self.max_seq_len, weight.dtype, weight.device)

    def project(self, x: torch.Tensor, start: int = 0,
                c_q: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eqs. 1, 3, 6-8 (or W^Q when q_lora_rank = 0) for tokens at positions start..start+T-1: x [B, T, dim] ->
        (q_nope [B, H, T, d_h], q_rope [B, H, T, d_h^R], c_kv [B, T, d_c], k_rope [B, T, d_h^R]). c_q: the query
        latent c^Q [B, T, d_c'] when the caller has it already (DeepSeek Sparse Attention's indexer reads it too)."""
        B, T, _ = x.shape
        H = self.n_heads
        cos, sin = self.cos[start:], self.sin[start:]
        dh, dr = self.qk_nope_head_dim, self.qk_rope_head_dim
        if self.q_lora_rank:
            c_q = self.q_norm(self.w_dq(x)) if c_q is None else c_q  # [B, T, d_c']
            q_nope = self.w_uq(c_q).view(B, T, H, dh).transpose(1, 2)  # [B, H, T, d_h]
            q_rope = self.w_qr(c_q).view(B, T, H, dr).transpose(1, 2)  # [B, H, T, d_h^R], before RoPE
        else:
            q_nope, q_rope = self.w_q(x).view(B, T, H, dh + dr).transpose(1, 2).split([dh, dr], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin)
        c_kv = self.kv_norm(self.w_dkv(x))  # [B, T, d_c]
        k_rope = apply_rope(self.w_kr(x), cos, sin)  # [B, T, d_h^R]: one key for all heads
        return q_nope, q_rope, c_kv, k_rope

    @boundary(arguments.attention_forward)
    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        start = 0 if cache is None else cache.length
        q_nope, q_rope, c_kv, k_rope = self.project(x, start)
        if cache is not None:
            c_kv, k_rope = cache.append(c_kv=c_kv, k_rope=k_rope)  # [B, start + T, d_c], [B, start + T, d_h^R]
        attend = self.attend_absorbed if self.absorb else self.attend_naive
        o = attend(q_nope, q_rope, c_kv, k_rope, start)  # [B, H, T, d_v]
        return self.w_o(o.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim))

    def attend_naive(self, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor, k_rope: torch.Tensor,
                     start: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Eqs. 2, 4, 5, 9, 10 by up-projecting the latents: q_nope [B, H, T, d_h], q_rope [B, H, T, d_h^R],
        c_kv [B, L, d_c], k_rope [B, L, d_h^R] (L = start + T) -> o [B, H, T, d_v]. mask: None, or bool
        [B, T, L], the keys each query may attend to besides the causal rule (``mha.causal_attention``)."""
        B, H, L = c_kv.shape[0], self.n_heads, c_kv.shape[1]
        k_nope = self.w_uk(c_kv).view(B, L, H, self.qk_nope_head_dim).transpose(1, 2)  # k^C: [B, H, L, d_h]
        v = self.w_uv(c_kv).view(B, L, H, self.v_head_dim).transpose(1, 2)  # v^C: [B, H, L, d_v]
        k = torch.cat([k_nope, k_rope[:, None].expand(B, H, L, self.qk_rope_head_dim)], dim=-1)  # [B, H, L, d_h + d_h^R]
        q = torch.cat([q_nope, q_rope], dim=-1)  # [B, H, T, d_h + d_h^R]
        return causal_attention(q, k, v, start, self.scale, mask)

    def attend_absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor, k_rope: torch.Tensor,
                        start: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The same as ``attend_naive``, attending over the latents: q^C_i . (W^UK_i c) = ((W^UK_i)^T q^C_i) . c,
        and sum_j a_j (W^UV_i c_j) = W^UV_i (sum_j a_j c_j). Shapes and mask as attend_naive -> o [B, H, T, d_v]."""
        B, H, L = c_kv.shape[0], self.n_heads, c_kv.shape[1]
        w_uk = self.w_uk.weight.view(H, self.qk_nope_head_dim, self.kv_lora_rank)  # W^UK_i: [d_h, d_c] per head
        w_uv = self.w_uv.weight.view(H, self.v_head_dim, self.kv_lora_rank)  # W^UV_i: [d_v, d_c] per head
        q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # (W^UK_i)^T q^C_i: [B, H, T, d_c]
        q = torch.cat([q_latent, q_rope], dim=-1)  # [B, H, T, d_c + d_h^R]
        k = torch.cat([c_kv, k_rope], dim=-1)[:, None].expand(B, H, L, self.kv_lora_rank + self.qk_rope_head_dim)
        o_latent = causal_attention(q, k, c_kv[:, None].expand(B, H, L, self.kv_lora_rank), start, self.scale, mask)
        return torch.einsum("bhtc,hvc->bhtv", o_latent, w_uv)  # W^UV_i: [B, H, T, d_v]
