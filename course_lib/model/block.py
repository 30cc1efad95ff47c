"""A small causal Transformer block: causal self-attention and a feed-forward network, both pluggable (the
attention is multi-head attention with RoPE by default, ``attention.mla.MultiHeadLatentAttention`` in the tiny model
with MLA; the FFN a dense SwiGLU by default, a DeepSeekMoE layer in the tiny model).

    x -> x + Attention(RMSNorm(x)) -> x + FFN(RMSNorm(x))          (pre-norm residual block)

Position i attends to positions 1..i only, which the MTP modules ([V3] 2.2) and the routing rely on. With a
``attention.cache.KVCache``, the block takes only the new tokens and the attention appends them to the cache.

Shapes: B = batch, T = sequence length (new tokens with a cache), dim = model width.
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.attention.cache import KVCache
from course_lib.attention.mha import MultiHeadAttention
from course_lib.core.layers import RMSNorm, SwiGLU
from course_lib.core.validation import boundary
from course_lib.model import arguments


class TransformerBlock(nn.Module):
    """A pre-norm Transformer block: x + Attention(RMSNorm(x)), then + FFN(RMSNorm(x)).

    x: float [B, T, dim] -> [B, T, dim], 1 <= T <= max_seq_len. Output position i depends on inputs 1..i only.
    ``ffn`` is any module [..., dim] -> [..., dim] (a ``moe.layer.DeepSeekMoE`` layer, say); when None, a
    ``layers.SwiGLU(dim, ffn_hidden)`` with ffn_hidden = 4 * dim unless given. ``attn`` is any attention
    module with forward(x, cache=None), ``dim`` and ``max_seq_len`` (an ``attention.mla.MultiHeadLatentAttention``,
    say); when None, ``attention.mha.MultiHeadAttention(dim, n_heads, max_seq_len, rope_base)``.
    forward(x, cache: KVCache | None = None): with a cache, x holds the new tokens only (see ``attention.cache``).
    Raises TypeError / ValueError for arguments that do not fit (``arguments.transformer_block``) and for an x that
    is not float [B >= 1, T, dim] (``arguments.transformer_block_forward``).
    """

    def __init__(self, dim: int, n_heads: int, ffn: nn.Module | None = None, ffn_hidden: int | None = None,
                 max_seq_len: int = 256, rope_base: float = 10000.0, attn: nn.Module | None = None) -> None:
        super().__init__()
        arguments.transformer_block(dim, n_heads, ffn, ffn_hidden, max_seq_len, rope_base, attn)
        self.dim = dim
        self.attn_norm = RMSNorm(dim)
        self.attn = attn if attn is not None else MultiHeadAttention(dim, n_heads, max_seq_len, rope_base)
        self.ffn_norm = RMSNorm(dim)
        self.ffn = ffn if ffn is not None else SwiGLU(dim, ffn_hidden or 4 * dim)

    @boundary(arguments.transformer_block_forward)
    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache)
        return x + self.ffn(self.ffn_norm(x))
