"""Rotary position embedding ([RoFormer], Su et al. 2021), as DeepSeek-V3's inference code applies it.

Position p turns the pair of features (2i, 2i+1) by the angle p * theta_i, theta_i = base^(-2i / d), i = 0..d/2-1:

    [x_2i; x_2i+1]  ->  [x_2i cos(p theta_i) - x_2i+1 sin(p theta_i);  x_2i sin(p theta_i) + x_2i+1 cos(p theta_i)]

so the dot product of a rotated query at position m and a rotated key at position n depends only on m - n.
``rope_angles`` tabulates cos and sin per position (from the frequencies of ``rope_frequencies``, or from
others, such as YaRN's, ``attention.yarn``), ``apply_rope`` rotates.
"""

from __future__ import annotations

import torch

from course_lib.attention import arguments
from course_lib.core.validation import boundary


@boundary(arguments.rope_frequencies)
def rope_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-2i / head_dim), i = 0..head_dim/2-1: float64 [head_dim / 2], radians per position.

    Raises TypeError for a head_dim that is not an int, ValueError for an odd head_dim or a base that is not a
    finite number > 1.
    """
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


@boundary(arguments.rope_angles)
def rope_angles(head_dim: int, max_seq_len: int, base: float = 10000.0,
                frequencies: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles: position p turns the pair (2i, 2i+1) by p * theta_i.

    frequencies: theta [head_dim / 2] (None: ``rope_frequencies(head_dim, base)``; YaRN passes its own).
    Returns (cos, sin), each float32 [max_seq_len, head_dim / 2]. Raises TypeError for sizes that are not ints,
    ValueError for an odd head_dim (RoPE rotates pairs of features), max_seq_len < 1, a base that is not a
    finite number > 1 or frequencies that are not a float tensor [head_dim / 2].
    """
    if frequencies is None:
        frequencies = rope_frequencies(head_dim, base)
    positions = torch.arange(max_seq_len, dtype=torch.float64)
    angles = torch.outer(positions, frequencies.double())  # [max_seq_len, head_dim / 2]
    return angles.cos().float(), angles.sin().float()


@boundary(arguments.apply_rope)
def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of features (x[..., 2i], x[..., 2i+1]) of position p by its angle.

    x: [..., T, head_dim]; cos, sin: [>= T, head_dim / 2] (from ``rope_angles``; row p is position p, so pass
    cos[start:] for tokens at positions start..start+T-1) -> [..., T, head_dim].
    The pairs are consecutive features, as in DeepSeek-V3's inference code (Hugging Face's Llama rotates the two
    halves instead: the same rotation on permuted features). Raises TypeError for an x that is not a float
    tensor, ValueError for shapes that do not fit.
    """
    T = x.shape[-2]
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)  # [T, head_dim / 2]
    even, odd = x[..., 0::2], x[..., 1::2]  # [..., T, head_dim / 2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
