"""Causal scaled dot-product attention, and standard multi-head attention (MHA) with RoPE on queries and keys.

forward(x [B, T, dim], cache=None) -> [B, T, dim]. Without a cache, x is a whole sequence at positions 0..T-1.
With a cache holding L tokens, x holds T new tokens at positions L..L+T-1: they attend to the L cached positions
and causally to each other, and the layer appends their keys and values to the cache (2 n_h d_h elements per token
per layer). Shapes: B = batch, T = new tokens, L = cached tokens, H = heads. ``attention.mla`` is DeepSeek's
alternative; both share ``causal_attention`` and the ``KVCache``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention import arguments
from course_lib.attention.cache import KVCache
from course_lib.attention.rope import apply_rope, rope_angles
from course_lib.core.validation import boundary


@boundary(arguments.causal_attention)
def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int = 0,
                     scale: float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v, where query i sits at position start + i and key j at position j.

    q: [B, H, T, d_qk]; k: [B, H, start + T, d_qk]; v: [B, H, start + T, d_v] -> [B, H, T, d_v].
    scale: None = 1/sqrt(d_qk). Query i attends to keys 0..start+i (all cached ones and the new ones up to itself).
    mask: None, or bool [B, T, start + T], True at the keys each query may attend to besides the causal rule (the
    tokens DeepSeek Sparse Attention selects, ``attention.dsa``); every query must keep at least one key.
    Raises ValueError when k does not hold start + T positions or the mask does not fit.
    """
    T, L = q.shape[-2], k.shape[-2]
    if mask is not None:
        positions = torch.arange(T, device=q.device)[:, None] + start  # [T, 1]
        allowed = (positions >= torch.arange(L, device=q.device)[None, :]) & mask  # [B, T, L]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scale)
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if T == 1:  # one new token sees every position
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    positions = torch.arange(T, device=q.device)[:, None] + start  # [T, 1]
    mask = positions >= torch.arange(L, device=q.device)[None, :]  # [T, L]: True where attention is allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class MultiHeadAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on queries and keys, without biases.

    forward(x [B, T, dim], cache: KVCache | None = None) -> [B, T, dim]; positions up to max_seq_len.
    Parameters: qkv (dim -> 3 dim, queries, keys, values of all heads) and out (dim -> dim).
    Cache: keys (after RoPE) and values, cache["k"], cache["v"]: [B, H, L, head_dim]; 2 dim elements per token.
    Raises ValueError when dim is not a positive multiple of n_heads or head_dim = dim / n_heads is odd; forward
    raises ValueError (TypeError) for an input or cache that does not fit (see ``arguments.attention_forward``).
    """

    kind = "mha"

    def __init__(self, dim: int, n_heads: int, max_seq_len: int = 256, rope_base: float = 10000.0) -> None:
        super().__init__()
        arguments.multi_head_attention(dim, n_heads, max_seq_len, rope_base)
        self.dim, self.n_heads, self.head_dim, self.max_seq_len = dim, n_heads, dim // n_heads, max_seq_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        cos, sin = rope_angles(self.head_dim, max_seq_len, rope_base)
        self.register_buffer("cos", cos, persistent=False)  # computed, not learned: not saved with the weights
        self.register_buffer("sin", sin, persistent=False)

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty cache for this layer, in the dtype and on the device of its weights."""
        weight = self.qkv.weight
        return KVCache(self.kind, {"k": (self.n_heads, self.head_dim), "v": (self.n_heads, self.head_dim)},
                       batch_size, self.max_seq_len, weight.dtype, weight.device)

    @boundary(arguments.attention_forward)
    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, dim = x.shape
        start = 0 if cache is None else cache.length
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, hd]
        cos, sin = self.cos[start:], self.sin[start:]  # positions start .. start + T - 1
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k=k, v=v)  # [B, H, start + T, head_dim]
        y = causal_attention(q, k, v, start)  # [B, H, T, head_dim]
        return self.out(y.transpose(1, 2).reshape(B, T, dim))
