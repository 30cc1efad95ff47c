"""The checks of the FP8 boundaries (``quantization``, ``linear``, ``accumulation``), one validator per decorated
function, named after it.

Each takes the function's parameters by name and raises TypeError for a wrong type, ValueError for a wrong value
(``core.validation``'s convention); a user's tensor that must be finite is read back to the host once, here.
Inside the FP8 linear layer nothing is checked: NaN or inf that arise in training reach the loss, which the
training step checks (``TrainingDiverged``).
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.core.validation import NonFiniteError, check_int
from course_lib.precision.formats import FP8_DTYPES, GRANULARITIES, ROUNDINGS, SCALE_FORMATS, TILE, Quantized


def check_fp8_dtype(dtype: torch.dtype) -> None:
    if dtype not in FP8_DTYPES:
        raise TypeError(f"dtype must be torch.float8_e4m3fn (E4M3) or torch.float8_e5m2 (E5M2), got {dtype}")


def check_scale_format(scale_format: str) -> None:
    if scale_format not in SCALE_FORMATS:
        raise ValueError(f"scale_format must be one of {SCALE_FORMATS} (float32 scales, or scales rounded up to a "
                         f"power of two as in V3.1's UE8M0), got {scale_format!r}")


def check_finite(function: str, *tensors: torch.Tensor) -> None:
    """One read-back: NonFiniteError unless every value of the user's ``tensors`` is finite."""
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise NonFiniteError(f"{function} got non-finite values (inf or NaN): an FP8 scale cannot represent them; "
                             "find where they come from (a diverged loss, a division by zero) before quantising")


# ------------------------------------------------------------------------------------------ quantization
def fp8_max(dtype: torch.dtype) -> None:
    check_fp8_dtype(dtype)


def fp8_grid(dtype: torch.dtype) -> None:
    check_fp8_dtype(dtype)


def tile_shape(granularity: str, shape: tuple[int, ...]) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if len(shape) != 2:
        raise ValueError(f"tile_shape expects the shape of a matrix [rows, cols], got {list(shape)}")


def quantize(x: torch.Tensor, granularity: str, dtype: torch.dtype, scale_format: str) -> None:
    check_fp8_dtype(dtype)
    check_scale_format(scale_format)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype in FP8_DTYPES:
        raise TypeError(f"quantize expects a float tensor (float32, bfloat16, ...), got {x!r:.80}")
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"quantize expects a non-empty matrix [rows, cols], got shape {list(x.shape)}")
    tile_shape(granularity, tuple(x.shape))
    check_finite("quantize", x)


def fake_quantize(x: torch.Tensor, granularity: str, dtype: torch.dtype, scale_format: str) -> None:
    quantize(x, granularity, dtype, scale_format)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> None:
    if approx.shape != exact.shape:
        raise ValueError(f"relative_error expects two tensors of one shape, got {list(approx.shape)} and "
                         f"{list(exact.shape)}")


# ------------------------------------------------------------------------------------------ the FP8 linear layer
def scaled_matmul(a: Quantized, b: Quantized, backend: str) -> None:
    if not (isinstance(a, Quantized) and isinstance(b, Quantized)):
        raise TypeError(f"scaled_matmul expects two Quantized operands (from quantization.quantize), got "
                        f"{type(a).__name__} and {type(b).__name__}")
    if a.data.dim() != 2 or b.data.dim() != 2 or a.data.shape[1] != b.data.shape[1]:
        raise ValueError(f"scaled_matmul expects a [M, K] and b [N, K], got {list(a.data.shape)} and "
                         f"{list(b.data.shape)}")
    for name, q in (("a", a), ("b", b)):
        if q.tile[1] % TILE and q.tile[1] < q.data.shape[1]:
            raise ValueError(f"{name}'s tiles {q.tile} do not split its inner dimension into 128-wide slices")
    if backend not in ("auto", "scaled_mm", "dequant"):
        raise ValueError(f"backend must be 'auto', 'scaled_mm' or 'dequant', got {backend!r}")


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale_format: str) -> None:
    check_scale_format(scale_format)
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"fp8_linear expects x [..., K] and weight [N, K], got {list(x.shape)} and "
                         f"{list(weight.shape)}")
    check_finite("fp8_linear", x.detach(), weight.detach())


def to_fp8(model: nn.Module, scale_format: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_fp8 expects a torch.nn.Module, got {type(model).__name__}")
    check_scale_format(scale_format)


# ------------------------------------------------------------------------------------------ accumulation
def check_rounding(rounding: str) -> None:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


def round_mantissa(x: torch.Tensor, mantissa_bits: int, rounding: str) -> None:
    check_rounding(rounding)
    if not 0 <= check_int("mantissa_bits", mantissa_bits) <= 52:
        raise ValueError(f"mantissa_bits must be an int in 0..52, got {mantissa_bits!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"round_mantissa expects a float tensor (float64), got {x!r:.80}")


def accumulate(products: torch.Tensor, mantissa_bits: int, promote_every: int | None, rounding: str) -> None:
    if products.dim() < 1 or products.shape[-1] == 0:
        raise ValueError(f"accumulate expects products [..., K] with K >= 1, got shape {list(products.shape)}")
    if not 1 <= check_int("mantissa_bits", mantissa_bits) <= 52:
        raise ValueError(f"mantissa_bits must lie in 1..52, got {mantissa_bits}")
    if promote_every is not None:
        check_int("promote_every", promote_every, 1)
    check_rounding(rounding)
    if not torch.isfinite(products).all():
        raise ValueError("accumulate got non-finite products")


def fp8_products(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"fp8_products expects a [M, K] and b [N, K], got {list(a.shape)} and {list(b.shape)}")
