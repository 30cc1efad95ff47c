"""Fine-grained FP8 quantisation ([V3] 3.3.2, Figure 7a), simulated exactly with torch's float8 dtypes.

    quantise:    q = clamp(x / s, -448, 448).to(E4M3),  s = max(max|x over the tile|, 1e-4) / 448   (online)
    dequantise:  x ~ q.float() * s

The floor of 1e-4 on the max is the released kernels' (DeepSeek-V3 inference/kernel.py act_quant and DeepGEMM's
per_token_cast_to_fp8, as updated on 2025-08-27). ``scale_format="ue8m0"`` rounds each scale UP to a power of two,
2^ceil(log2(s)), as the released kernels do from V3.1 on (config scale_fmt "ue8m0"): amax 300 -> 1.0, 448 -> 1.0,
449 -> 2.0. A scale rounded up keeps |x / s| <= 448, so the clamp changes nothing for it. The tiles a scale covers
(``tile_shape``): one for the tensor, 1 x 128 (V3's activations and gradients) or 128 x 128 (V3's weights); sizes
need not be multiples of 128: the last tiles are smaller.
"""

from __future__ import annotations

import math

import torch

from course_lib.core.validation import boundary
from course_lib.precision import arguments
from course_lib.precision.formats import AMAX_FLOOR, E4M3, TILE, Quantized, power_of_two_scale, tiled, untiled


@boundary(arguments.fp8_max)
def fp8_max(dtype: torch.dtype = E4M3) -> float:
    """The largest finite value of an FP8 format: 448 for E4M3, 57344 for E5M2. Raises TypeError for a dtype that
    is not FP8."""
    return float(torch.finfo(dtype).max)


@boundary(arguments.fp8_grid)
def fp8_grid(dtype: torch.dtype = E4M3) -> torch.Tensor:
    """All non-negative finite values of an FP8 format, ascending, float64 (E4M3: 127 values from 0 to 448).
    Raises TypeError for a dtype that is not FP8."""
    values = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(dtype).double()
    return values[torch.isfinite(values) & (values >= 0)].unique()


@boundary(arguments.tile_shape)
def tile_shape(granularity: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The tile one scale covers: "tensor" -> shape, "tile" -> (1, 128), "block" -> (128, 128). Raises ValueError
    for an unknown granularity or a shape that is not a matrix's."""
    return {"tensor": (max(shape[0], 1), max(shape[1], 1)), "tile": (1, TILE), "block": (TILE, TILE)}[granularity]


@boundary(arguments.quantize)
def quantize(x: torch.Tensor, granularity: str = "tile", dtype: torch.dtype = E4M3,
             scale_format: str = "float") -> Quantized:
    """Quantise a matrix to FP8 with one scale per tile, s = max(|x| over the tile) / fp8_max ([V3] 3.3.2).

    x: float [rows, cols] (cols: the GEMM's inner dimension), finite. granularity: "tensor", "tile" (1 x 128) or
    "block" (128 x 128); dtype: E4M3 (max 448) or E5M2 (max 57344); scale_format: "float" (s as computed) or
    "ue8m0" (s rounded up to a power of two, ``formats.power_of_two_scale``). Returns data: dtype [rows, cols] and
    scale: float32 [ceil(rows / r), ceil(cols / c)]. A tile whose max is below AMAX_FLOOR (1e-4, the released
    kernels' floor) uses AMAX_FLOOR (an all-zero tile stays zero). The quotient is clamped to [-fp8_max, fp8_max]
    before the cast, so that a conversion that does not saturate never sees a value out of range (torch 2.13's cast
    saturates; hardware may not): a float scale can leave x / s a rounding error above fp8_max, a ue8m0 scale
    never does.

    Raises TypeError for a non-float x or dtype not FP8; ValueError for x not 2-D or empty or an unknown
    granularity or scale_format, and ``validation.NonFiniteError`` (a ValueError) for x not finite. Inside the FP8
    linear layer nothing is checked: NaN or inf there reach the loss, which the training step checks.
    """
    tile = tile_shape(granularity, tuple(x.shape))
    tiles = tiled(x.detach(), tile)  # [R, r, C, c]
    limit = fp8_max(dtype)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=AMAX_FLOOR) / limit  # [R, C]
    if scale_format == "ue8m0":
        scale = power_of_two_scale(scale)
    data = (tiles / scale[:, None, :, None]).clamp(-limit, limit).to(dtype)
    return Quantized(untiled(data, tuple(x.shape)), scale, tile)


@boundary(arguments.fake_quantize)
def fake_quantize(x: torch.Tensor, granularity: str = "tile", dtype: torch.dtype = E4M3,
                  scale_format: str = "float") -> torch.Tensor:
    """quantize then dequantize: the float32 values x [rows, cols] takes after a trip through FP8. Raises as
    ``quantize``."""
    return quantize(x, granularity, dtype, scale_format).dequantize()


@boundary(arguments.relative_error)
def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius), in float64. Raises ValueError when the shapes differ."""
    approx, exact = approx.detach().double(), exact.detach().double()
    return float((approx - exact).norm() / exact.norm().clamp(min=math.ulp(0.0)))
