"""A small causal Transformer block: rotary position embedding, causal multi-head self-attention, and a
feed-forward network that can be swapped (a dense SwiGLU by default, a DeepSeekMoE layer in the tiny model).

    x -> x + Attention(RMSNorm(x)) -> x + FFN(RMSNorm(x))          (pre-norm residual block)

Attention is standard multi-head attention with RoPE ([RoFormer], Su et al. 2021), computed by
``torch.nn.functional.scaled_dot_product_attention`` with ``is_causal=True``: position i attends to positions
1..i only. It is not DeepSeek-V3's Multi-head Latent Attention ([V3] 2.1.1), which compresses the keys and values
to save memory at inference; a tiny model trained on a CPU does not need it, and the causal structure, which is
what the MTP modules ([V3] 2.2) and the routing rely on, is the same.

Shapes: B = batch, T = sequence length, dim = model width, H = heads, head_dim = dim / H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.layers import RMSNorm, SwiGLU
from course_lib.validation import check_int, check_number


def rope_angles(head_dim: int, max_seq_len: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles: position p turns the pair (2i, 2i+1) by p * base^(-2i / head_dim).

    Returns (cos, sin), each float32 [max_seq_len, head_dim / 2]. ``base`` must be a finite number > 1.
    """
    check_int("head_dim", head_dim)
    check_int("max_seq_len", max_seq_len)
    check_number("base", base, 1, strict=True)
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: head_dim must be even and >= 2, got {head_dim}")
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [head_dim / 2]
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # [max_seq_len, head_dim / 2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of features (x[..., 2i], x[..., 2i+1]) of position p by its angle.

    x: [..., T, head_dim]; cos, sin: [>= T, head_dim / 2] (from ``rope_angles``) -> [..., T, head_dim].
    The pairs are consecutive features, as in DeepSeek-V3's inference code (Hugging Face's Llama rotates the two
    halves instead: the same rotation on permuted features). Dot products of rotated queries and keys depend only
    on the distance between their positions.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"apply_rope expects a floating-point tensor x [..., T, head_dim], got {x!r:.80}")
    T, half = x.shape[-2], x.shape[-1] // 2
    if x.shape[-1] % 2 or cos.shape[0] < T or cos.shape[1] != half:
        raise ValueError(f"apply_rope expected x [..., T, head_dim] with an even head_dim and cos, sin "
                         f"[>= T, head_dim / 2]; got x {list(x.shape)} and cos {list(cos.shape)}")
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)  # [T, head_dim / 2]
    even, odd = x[..., 0::2], x[..., 1::2]  # [..., T, head_dim / 2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on queries and keys, without biases.

    x: [B, T, dim] -> [B, T, dim], T <= max_seq_len. Parameters: qkv (dim -> 3 dim) and out (dim -> dim).
    """

    def __init__(self, dim: int, n_heads: int, max_seq_len: int = 256, rope_base: float = 10000.0) -> None:
        super().__init__()
        check_int("dim", dim)
        check_int("n_heads", n_heads)
        if dim < 1 or n_heads < 1 or dim % n_heads:
            raise ValueError(f"dim must be a positive multiple of n_heads, got dim={dim}, n_heads={n_heads}")
        self.n_heads, self.head_dim, self.max_seq_len = n_heads, dim // n_heads, max_seq_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        cos, sin = rope_angles(self.head_dim, max_seq_len, rope_base)
        self.register_buffer("cos", cos, persistent=False)  # computed, not learned: not saved with the weights
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.n_heads * self.head_dim:
            raise ValueError(f"CausalSelfAttention expects x [batch, T, {self.n_heads * self.head_dim}], got "
                             f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        B, T, dim = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, hd]
        q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, head_dim]
        return self.out(y.transpose(1, 2).reshape(B, T, dim))


class TransformerBlock(nn.Module):
    """A pre-norm Transformer block: x + Attention(RMSNorm(x)), then + FFN(RMSNorm(x)).

    x: float [B, T, dim] -> [B, T, dim], 1 <= T <= max_seq_len. Output position i depends on inputs 1..i only.
    ``ffn`` is any module [..., dim] -> [..., dim] (a ``moe.DeepSeekMoE`` layer, say); when None, a
    ``layers.SwiGLU(dim, ffn_hidden)`` with ffn_hidden = 4 * dim unless given.
    """

    def __init__(self, dim: int, n_heads: int, ffn: nn.Module | None = None, ffn_hidden: int | None = None,
                 max_seq_len: int = 256, rope_base: float = 10000.0) -> None:
        super().__init__()
        if ffn is not None and ffn_hidden is not None:
            raise ValueError("give either ffn (a module) or ffn_hidden (the size of the default SwiGLU), not both")
        if ffn_hidden is not None:
            check_int("ffn_hidden", ffn_hidden, 1)
        self.dim = dim
        self.attn_norm = RMSNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, max_seq_len, rope_base)
        self.ffn_norm = RMSNorm(dim)
        self.ffn = ffn if ffn is not None else SwiGLU(dim, ffn_hidden or 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"TransformerBlock expects a floating-point tensor [batch, T, {self.dim}], "
                            f"got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)}")
        if x.dim() != 3 or x.shape[-1] != self.dim or x.shape[0] == 0 or not 1 <= x.shape[1] <= self.attn.max_seq_len:
            raise ValueError(f"TransformerBlock expects [batch >= 1, 1 <= T <= {self.attn.max_seq_len}, {self.dim}], "
                             f"got shape {list(x.shape)}")
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))
