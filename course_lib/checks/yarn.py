"""Checkers for notebook 11: YaRN's RoPE frequencies and its softmax scale ([V3] 4.3; [YARN]; [CODE]
inference/model.py ``precompute_freqs_cis`` and ``MLA.__init__``).

The catalogue of mistakes: the ramp reversed (the fast pairs interpolated, the slow ones kept), beta_fast and
beta_slow taken as frequencies instead of rotation counts within the original context, every pair divided by s
(position interpolation), NTK-aware scaling instead, the ramp indexed by the feature 2i instead of the pair i,
the correction range not rounded outwards; for the softmax scale, mscale forgotten, applied once instead of
squared, or divided by.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from course_lib.attention.rope import rope_frequencies
from course_lib.attention.yarn import (correction_dim, interpolated_frequencies, ntk_frequencies, yarn_frequencies,
                                       yarn_mscale)
from course_lib.checks.cases import Case, Mistake
from course_lib.checks.comparison import compare
from course_lib.checks.function import check_function

# (dim, base, factor, original_seq_len, beta_fast, beta_slow): the first two have a ramp strictly inside the pairs.
_FREQ_CASES = [
    Case((16, 10.0, 4.0, 1024, 32.0, 1.0), label="dim=16, base=10, factor=4, original_seq_len=1024, beta_fast=32, "
                                                  "beta_slow=1"),
    Case((8, 100.0, 8.0, 256, 4.0, 2.0), label="dim=8, base=100, factor=8, original_seq_len=256, beta_fast=4, "
                                                "beta_slow=2"),
    Case((64, 10000.0, 40.0, 4096, 32.0, 1.0), label="DeepSeek-V3's: dim=d_h^R=64, base=10000, factor=40, "
                                                      "original_seq_len=4096, beta_fast=32, beta_slow=1"),
]
_COMPARE = functools.partial(compare, rtol=1e-5, atol=0.0)  # the slowest pairs turn ~1e-6 rad per position


def _with_ramp(ramp_of: Callable[..., torch.Tensor], reverse: bool = False) -> Callable[..., torch.Tensor]:
    """theta / s * gamma + theta (1 - gamma) with another ramp gamma (or with the two roles swapped)."""
    def wrong(dim, base, factor, length, fast, slow):
        theta, ramp = rope_frequencies(dim, base), ramp_of(dim, base, length, fast, slow)
        if reverse:
            ramp = 1 - ramp
        return theta / factor * ramp + theta * (1 - ramp)
    return wrong


def _ramp(index: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return ((index - low) / (high - low if high != low else 0.001)).clamp(0, 1)


def _released_ramp(dim, base, length, fast, slow):
    low = max(math.floor(correction_dim(fast, dim, base, length)), 0)
    high = min(math.ceil(correction_dim(slow, dim, base, length)), dim - 1)
    return _ramp(torch.arange(dim // 2, dtype=torch.float64), low, high)


def _ramp_by_frequency(dim, base, length, fast, slow):
    """beta read as a frequency: the pair whose theta_i equals beta (no L / (2 pi))."""
    def where(beta):
        return dim * math.log(1 / beta) / (2 * math.log(base))
    low, high = max(math.floor(where(fast)), 0), min(math.ceil(where(slow)), dim - 1)
    return _ramp(torch.arange(dim // 2, dtype=torch.float64), low, high)


def _ramp_by_feature(dim, base, length, fast, slow):
    low = max(math.floor(correction_dim(fast, dim, base, length)), 0)
    high = min(math.ceil(correction_dim(slow, dim, base, length)), dim - 1)
    return _ramp(torch.arange(0, dim, 2, dtype=torch.float64), low, high)


def _ramp_unrounded(dim, base, length, fast, slow):
    low = max(correction_dim(fast, dim, base, length), 0)
    high = min(correction_dim(slow, dim, base, length), dim - 1)
    return _ramp(torch.arange(dim // 2, dtype=torch.float64), low, high)


_FREQ_MISTAKES = [
    Mistake("the ramp is reversed: your fast pairs (many turns within the original context) are divided by s and "
            "the slow ones kept. YaRN keeps the pairs that turn more than beta_fast times (they have seen every "
            "angle already) and interpolates those that turn fewer than beta_slow times.",
            _with_ramp(_released_ramp, reverse=True)),
    Mistake("beta_fast and beta_slow look used as frequencies (theta_i = beta). They count ROTATIONS within the "
            "original context: pair i turns r_i = L theta_i / (2 pi) times, so the pair for r rotations sits at "
            "d(r) = dim ln(L / (2 pi r)) / (2 ln base).", _with_ramp(_ramp_by_frequency)),
    Mistake("every pair is divided by s: that is position interpolation. YaRN divides only the slow pairs "
            "(fewer than beta_slow turns in L), keeps the fast ones, and ramps linearly between.",
            lambda dim, base, factor, length, fast, slow: interpolated_frequencies(dim, base, factor)),
    Mistake("this is NTK-aware scaling (the base b replaced by b s^(dim / (dim - 2))): YaRN keeps the fast pairs "
            "exactly and interpolates the slow ones by s, with a linear ramp in the pair index between.",
            lambda dim, base, factor, length, fast, slow: ntk_frequencies(dim, base, factor)),
    Mistake("the ramp runs over the feature index 2i. d(r) is on the scale of the head dimension, but the released "
            "precompute_freqs_cis (and transformers) evaluate the ramp at the pair index i = 0..dim/2-1.",
            _with_ramp(_ramp_by_feature)),
    Mistake("low and high are not rounded: the released code takes floor(d(beta_fast)) and ceil(d(beta_slow)) "
            "(clamped to [0, dim - 1]), widening the ramp to whole pairs.", _with_ramp(_ramp_unrounded)),
]


def check_yarn_frequencies(fn) -> None:
    """Check ``fn(dim, base, factor, original_seq_len, beta_fast, beta_slow) -> frequencies [dim / 2]``."""
    return check_function(
        fn, name="yarn_frequencies", reference=yarn_frequencies, cases=_FREQ_CASES, mistakes=_FREQ_MISTAKES,
        compare_fn=_COMPARE,
        generic_hint="compute theta_i = base^(-2i/dim), low = floor(d(beta_fast)), high = ceil(d(beta_slow)), the "
                     "ramp gamma_i = clamp((i - low) / (high - low), 0, 1), then theta_i / s * gamma_i + theta_i "
                     "(1 - gamma_i).")


# --------------------------------------------------------------------------------------------- softmax scale
def yarn_softmax_scale(qk_head_dim: int, factor: float, mscale: float = 1.0) -> float:
    """The released MLA's softmax scale once extended: qk_head_dim^-1/2 * yarn_mscale(factor, mscale)^2."""
    return qk_head_dim ** -0.5 * yarn_mscale(factor, mscale) ** 2


_SCALE_CASES = [
    Case((14, 4.0, 1.0), label="qk_head_dim=14, factor=4, mscale=1"),
    Case((192, 40.0, 1.0), label="DeepSeek-V3's: qk_head_dim=d_h+d_h^R=192, factor=40, mscale=1"),
    Case((24, 8.0, 0.5), label="qk_head_dim=24, factor=8, mscale=0.5"),
]
_SCALE_MISTAKES = [
    Mistake("mscale is forgotten: 1 / sqrt(qk_head_dim) is the scale before extension. The released MLA multiplies "
            "it by mscale^2, mscale = 0.1 mscale_cfg ln(s) + 1.", lambda d, s, m: d ** -0.5),
    Mistake("mscale is applied once. [YARN] scales BOTH q and k by sqrt(1/t) = mscale, so their dot product, and the "
            "softmax scale in the released code, by mscale^2.", lambda d, s, m: d ** -0.5 * yarn_mscale(s, m)),
    Mistake("the scale is divided by mscale^2: a longer context flattens attention, and YaRN sharpens it again "
            "by a LARGER scale.", lambda d, s, m: d ** -0.5 / yarn_mscale(s, m) ** 2),
]


def check_yarn_softmax_scale(fn) -> None:
    """Check ``fn(qk_head_dim, factor, mscale) -> softmax scale`` of MLA extended with YaRN."""
    return check_function(
        fn, name="yarn_softmax_scale", reference=yarn_softmax_scale, cases=_SCALE_CASES, mistakes=_SCALE_MISTAKES,
        generic_hint="1 / sqrt(qk_head_dim) times (0.1 * mscale * ln(factor) + 1) squared.")
