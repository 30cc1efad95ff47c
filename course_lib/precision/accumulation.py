"""The tensor cores' limited accumulation precision ([V3] 3.3.2): about 14 significant bits on the H800, and V3's
remedy, promoting the partial sum to a float32 accumulator every N_C = 128 elements.

``round_mantissa`` rounds to a number of mantissa bits; ``accumulate`` sums a GEMM's products in order with such
an accumulator, with or without promotion; ``fp8_products`` gives those products exactly.
"""

from __future__ import annotations

import torch

from course_lib.core.validation import boundary
from course_lib.precision import arguments


@boundary(arguments.round_mantissa)
def round_mantissa(x: torch.Tensor, mantissa_bits: int, rounding: str = "nearest") -> torch.Tensor:
    """Round float64 values to ``mantissa_bits`` explicit mantissa bits, with an unlimited exponent range
    (float32 is mantissa_bits = 23). rounding: "nearest" (ties to even) or "truncate" (toward zero: the bits
    below the last kept one are dropped). x: float64 [...] -> float64 [...]. Raises TypeError for x not a float
    tensor, ValueError for bits outside 0..52 or an unknown rounding."""
    mantissa, exponent = torch.frexp(x)  # x = mantissa * 2^exponent, 0.5 <= |mantissa| < 1
    steps = 2.0 ** (mantissa_bits + 1)
    kept = torch.round(mantissa * steps) if rounding == "nearest" else torch.trunc(mantissa * steps)
    return torch.ldexp(kept / steps, exponent)


@boundary(arguments.accumulate)
def accumulate(products: torch.Tensor, mantissa_bits: int = 13, promote_every: int | None = None,
               rounding: str = "nearest") -> torch.Tensor:
    """Sum ``products`` [..., K] over the last dimension in order, as a tensor core does, with an accumulator that
    keeps ``mantissa_bits`` explicit bits (13: 14 significant bits, "around 14 bits" on the H800, [V3] 3.3.2):
    after each addition the running sum is rounded (``round_mantissa``; the report does not say how the hardware
    rounds, so both "nearest" and "truncate" are offered). With ``promote_every = N_C`` the limited accumulator
    is added to a float32 sum and restarted every N_C elements (V3: N_C = 128). Returns float64 [...].

    Vectorised over the outputs [...]; a Python loop runs over K only. Raises ValueError for an empty K, bits
    outside 1..52, promote_every < 1, an unknown rounding or non-finite products.
    """
    products = products.double()
    K = products.shape[-1]
    chunk = promote_every or K
    total = products.new_zeros(products.shape[:-1])  # float32 values held in float64
    for start in range(0, K, chunk):
        partial = products.new_zeros(products.shape[:-1])
        for k in range(start, min(start + chunk, K)):
            partial = round_mantissa(partial + products[..., k], mantissa_bits, rounding)
        total = (total + partial).float().double() if promote_every else partial
    return total


@boundary(arguments.fp8_products)
def fp8_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The elementwise products a[m, k] * b[n, k] of an FP8 GEMM's operands, exact in float64.

    a: [M, K], b: [N, K] (any float, e.g. dequantised FP8) -> float64 [M, N, K]. Raises ValueError for other
    shapes."""
    return a.double()[:, None, :] * b.double()[None, :, :]
