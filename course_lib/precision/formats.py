"""The number formats of FP8 training ([V3] 3.3): E4M3 and E5M2, the tiles a scale covers, the scale formats.

    E4M3: 4 exponent bits, 3 mantissa bits, largest value 448 (V3 uses it for every GEMM operand, 3.3.2)
    E5M2: 5 exponent bits, 2 mantissa bits, largest value 57344 (more range, less precision)

A scale covers a tile of a matrix [rows, cols] (cols: the GEMM's inner dimension): ``"tensor"`` one scale,
``"tile"`` 1 x 128 (V3's activations and gradients), ``"block"`` 128 x 128 (V3's weights). Scales are float32
(``"float"``) or powers of two (``"ue8m0"``: 8 exponent bits, no mantissa, as the released kernels use from V3.1
on, ``power_of_two_scale``). A matrix in FP8 is its codes and one scale per tile (``Quantized``). The accumulator
model rounds its running sum to nearest or by truncation (ROUNDINGS).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_DTYPES = (E4M3, E5M2)
TILE = 128  # [V3] 3.3.2: 1 x 128 activation tiles, 128 x 128 weight blocks; N_C = 128
GRANULARITIES = ("tensor", "tile", "block")
AMAX_FLOOR = 1e-4  # the released kernels' floor: an all-zero (or all-tiny) tile gets the scale 1e-4 / 448, not 0
SCALE_FORMATS = ("float", "ue8m0")  # float32 scales, or powers of two (8 exponent bits, no mantissa: V3.1 on)
ROUNDINGS = ("nearest", "truncate")  # how the limited accumulator of ``accumulation`` rounds


def power_of_two_scale(scale: torch.Tensor) -> torch.Tensor:
    """Each scale rounded UP to a power of two, 2^ceil(log2(s)): the UE8M0 format (an 8-bit exponent, no mantissa)
    of the released kernels from V3.1 on. scale: float32 [...], finite and > 0 -> float32 [...].

    Exact: with s = m * 2^e (0.5 <= m < 1, ``torch.frexp``), a power of two (m = 0.5) is kept and anything else
    becomes 2^e, so the result is never below s (a float32 log2 could round 2^k (1 + 2^-23) down to k).
    """
    mantissa, exponent = torch.frexp(scale)
    return torch.ldexp(torch.ones_like(scale), torch.where(mantissa == 0.5, exponent - 1, exponent))


def tiled(x: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """x [rows, cols] as float32 [R, r, C, c], zero-padded to whole tiles (R = ceil(rows / r), C = ...)."""
    r, c = tile
    rows, cols = x.shape
    padded = F.pad(x.float(), (0, -cols % c, 0, -rows % r))  # [R * r, C * c]
    return padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)


def untiled(tiles: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of ``tiled``: [R, r, C, c] -> [rows, cols], the padding cut off."""
    R, r, C, c = tiles.shape
    return tiles.reshape(R * r, C * c)[:shape[0], :shape[1]]


class Quantized(NamedTuple):
    """A matrix in FP8 with its scales. data: fp8 [rows, cols]; scale: float32 [ceil(rows / tile[0]),
    ceil(cols / tile[1])], the factor that brings each tile back (x ~ data * scale); tile: (tile_rows, tile_cols).
    Made by ``quantization.quantize``."""

    data: torch.Tensor
    scale: torch.Tensor
    tile: tuple[int, int]

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols]: data * scale, each scale spread over its tile."""
        return untiled(tiled(self.data.float(), self.tile) * self.scale[:, None, :, None], tuple(self.data.shape))

    def t(self) -> Quantized:
        """The transpose, with the same codes and scales (exact: a 128 x 128 block stays a block)."""
        return Quantized(self.data.t(), self.scale.t(), (self.tile[1], self.tile[0]))
