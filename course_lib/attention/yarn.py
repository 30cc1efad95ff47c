"""Longer contexts for RoPE: position interpolation, NTK-aware scaling and YaRN, on the frequencies theta_i of
``rope.rope_frequencies`` (d = the rotated head dimension, s = factor, L = the original, pre-training length).

- Position interpolation ([PI], Chen et al. 2023, arXiv 2306.15595): every frequency divided by s, so that s L
  positions turn no further than L did.
- NTK-aware scaling (bloc97, 2023; [YARN] 3.1): the base b replaced by b s^(d / (d - 2)): the fastest pair keeps its
  frequency, the slowest is divided by s, geometrically in between.
- YaRN ([YARN], Peng et al. 2023, arXiv 2309.00071, "NTK-by-parts" and the temperature), as DeepSeek-V3's
  released ``precompute_freqs_cis`` computes it ([CODE] inference/model.py; [V3] 4.3). Pair i turns
  r_i = L theta_i / (2 pi) times over the original context; the correction dimension for r rotations is
  d(r) = d ln(L / (2 pi r)) / (2 ln base) (the i with r_i = r, on the scale of the head dimension). With
  low = max(floor(d(beta_fast)), 0), high = min(ceil(d(beta_slow)), d - 1) and the ramp
  gamma_i = clamp((i - low) / (high - low), 0, 1):

      theta'_i = theta_i / s * gamma_i + theta_i * (1 - gamma_i)

  Fast pairs (i < low, more than beta_fast turns in L) keep their frequency: they never see a new angle. Slow
  pairs (i > high, less than beta_slow turns) are interpolated by s. The softmax scale is multiplied by
  mscale^2 with mscale = ``yarn_mscale(s, mscale)`` = 0.1 mscale ln s + 1 (1.8739 at s = 40): attention over a
  longer context gets sharper again. The released code applies both only when the model is set up for more
  positions than L (max_seq_len > original_seq_len).

DeepSeek-V3: d = d_h^R = 64, base 10000, s = 40, L = 4096, beta_fast 32, beta_slow 1, mscale 1 ([V3] 4.3 writes
alpha = 1, beta = 32, sqrt(t) = 0.1 ln s + 1). YaRN touches only MLA's decoupled RoPE parts (q^R, k^R); the cached
latent c^KV carries no position and is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from course_lib.attention import arguments
from course_lib.attention.rope import rope_frequencies
from course_lib.core.validation import boundary


@dataclass(frozen=True)
class YarnScaling:
    """A YaRN setting (DeepSeek-V3's ``ModelArgs``: rope_factor, original_seq_len, beta_fast, beta_slow, mscale;
    Hugging Face's rope_scaling {"type": "yarn", factor, original_max_position_embeddings, beta_fast, beta_slow,
    mscale}). Defaults are V3's. Raises ValueError for factor < 1, beta_fast <= beta_slow or beta_slow <= 0, an
    original_seq_len < 1, mscale < 0; TypeError for values of the wrong type."""

    factor: float = 40.0
    original_seq_len: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0

    def __post_init__(self) -> None:
        arguments.yarn_scaling(self.factor, self.original_seq_len, self.beta_fast, self.beta_slow, self.mscale)


def correction_dim(rotations: float, dim: int, base: float, original_seq_len: int) -> float:
    """d(r) = dim ln(L / (2 pi r)) / (2 ln base): where along the head dimension (0..dim) the pairs turn r times
    within the original context L (pair i sits at 2i). No checks: called by ``yarn_frequencies``' boundary."""
    return dim * math.log(original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


@boundary(arguments.yarn_ramp)
def yarn_ramp(dim: int, base: float, original_seq_len: int, beta_fast: float = 32.0,
              beta_slow: float = 1.0) -> torch.Tensor:
    """gamma_i, float64 [dim / 2]: 0 for the pairs that keep their frequency (more than beta_fast turns in L), 1 for
    the pairs interpolated by s (fewer than beta_slow), linear in i between, as ``precompute_freqs_cis``.
    Raises ValueError as ``yarn_frequencies``."""
    low = max(math.floor(correction_dim(beta_fast, dim, base, original_seq_len)), 0)
    high = min(math.ceil(correction_dim(beta_slow, dim, base, original_seq_len)), dim - 1)
    if low == high:
        high += 0.001  # the released code's guard against a zero-width ramp
    return ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)


@boundary(arguments.yarn_frequencies)
def yarn_frequencies(dim: int, base: float, factor: float, original_seq_len: int, beta_fast: float = 32.0,
                     beta_slow: float = 1.0) -> torch.Tensor:
    """theta'_i = theta_i / s * gamma_i + theta_i (1 - gamma_i): float64 [dim / 2], radians per position.

    dim: the rotated head dimension (d_h^R), even; base: RoPE's theta; factor: s >= 1; original_seq_len: L, the
    pre-training context; beta_fast > beta_slow > 0: rotation counts (not frequencies) that bound the ramp.
    Raises TypeError for values of the wrong type, ValueError for an odd dim, factor < 1, beta_fast <= beta_slow.
    Source: DeepSeek-V3 inference/model.py ``precompute_freqs_cis`` (in float64 here, float32 there).
    """
    ramp = yarn_ramp(dim, base, original_seq_len, beta_fast, beta_slow)
    theta = rope_frequencies(dim, base)
    return theta / factor * ramp + theta * (1 - ramp)


@boundary(arguments.yarn_mscale)
def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """0.1 mscale ln(factor) + 1 (sqrt(t) of [YARN] eq. 22; [CODE] MLA.__init__): the softmax scale of a YaRN
    model is multiplied by its square. 1.8739 at V3's factor 40 (mscale 1). Raises ValueError for factor < 1."""
    return 0.1 * mscale * math.log(factor) + 1.0


@boundary(arguments.interpolated_frequencies)
def interpolated_frequencies(dim: int, base: float, factor: float) -> torch.Tensor:
    """Position interpolation: theta_i / s for every pair, float64 [dim / 2]. Raises ValueError as yarn_frequencies."""
    return rope_frequencies(dim, base) / factor


@boundary(arguments.ntk_frequencies)
def ntk_frequencies(dim: int, base: float, factor: float) -> torch.Tensor:
    """NTK-aware scaling: RoPE's frequencies with the base multiplied by s^(dim / (dim - 2)), float64 [dim / 2]: theta_0
    unchanged, the slowest pair divided by s. Raises ValueError as yarn_frequencies (and for dim = 2)."""
    return rope_frequencies(dim, base * factor ** (dim / (dim - 2)))
