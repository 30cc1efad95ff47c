"""FP8 training with fine-grained scaling ([V3] 3.3, Figure 7), simulated exactly with torch's float8 dtypes.

    quantise:    q = clamp(x / s, -448, 448).to(E4M3),  s = max(max|x over the tile|, 1e-4) / 448   (online)
    dequantise:  x ~ q.float() * s

The floor of 1e-4 on the max is the released kernels' (DeepSeek-V3 inference/kernel.py act_quant and DeepGEMM's
per_token_cast_to_fp8, as updated on 2025-08-27). ``scale_format="ue8m0"`` rounds each scale UP to a power of two,
2^ceil(log2(s)), as the released kernels do from V3.1 on (config scale_fmt "ue8m0"): amax 300 -> 1.0, 448 -> 1.0,
449 -> 2.0. A scale rounded up keeps |x / s| <= 448, so the clamp changes nothing for it.

Granularity of the scales (the tile each scale covers, for a matrix [rows, cols] whose cols are the GEMM's inner
dimension): ``"tensor"`` one scale; ``"tile"`` 1 x 128 (one token, 128 channels: V3's activations and gradients);
``"block"`` 128 x 128 (V3's weights). Sizes need not be multiples of 128: the last tiles are smaller.

The FP8 linear layer ``fp8_linear`` (an autograd Function) quantises the inputs of all three GEMMs as [V3]
Figure 7 shows, E4M3 for every operand (the attention operator is no Linear and stays out of it):

    Fprop  y  = x  W^T   x: 1 x 128 tiles along K (channels)      W: 128 x 128 blocks
    Dgrad  dx = dy W     dy: 1 x 128 tiles along N (out channels)  W: the same 128 x 128 blocks, transposed
    Wgrad  dW = dy^T x   dy^T and x^T: 1 x 128 tiles along M (tokens), i.e. 128 x 1 tiles of dy and x

Every GEMM accumulates in float32: with ``torch._scaled_mm``, one 128-wide slice of the inner dimension at a time,
the two scales applied when the slice's partial sum is added to the float32 result (V3's promotion every
N_C = 128 elements, 3.3.2); dequantise-and-matmul gives the same numbers up to float32 rounding.
Outputs, the master weights and the weight gradients are float32. ``to_fp8(model)`` switches a model's attention
projections, dense FFNs and experts to it; the embedding, output head, MoE gating and norms stay float32, as in
V3 (3.3.1).

``accumulate`` models the tensor cores' limited accumulation precision (about 14 bits on the H800, [V3] 3.3.2).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.validation import NonFiniteError, check_int

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_DTYPES = (E4M3, E5M2)
TILE = 128  # [V3] 3.3.2: 1 x 128 activation tiles, 128 x 128 weight blocks; N_C = 128
GRANULARITIES = ("tensor", "tile", "block")
AMAX_FLOOR = 1e-4  # the released kernels' floor: an all-zero (or all-tiny) tile gets the scale 1e-4 / 448, not 0
SCALE_FORMATS = ("float", "ue8m0")  # float32 scales, or powers of two (8 exponent bits, no mantissa: V3.1 on)


def fp8_max(dtype: torch.dtype = E4M3) -> float:
    """The largest finite value of an FP8 format: 448 for E4M3, 57344 for E5M2."""
    _check_fp8_dtype(dtype)
    return float(torch.finfo(dtype).max)


def fp8_grid(dtype: torch.dtype = E4M3) -> torch.Tensor:
    """All non-negative finite values of an FP8 format, ascending, float64 (E4M3: 127 values from 0 to 448)."""
    _check_fp8_dtype(dtype)
    values = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(dtype).double()
    return values[torch.isfinite(values) & (values >= 0)].unique()


class Quantized(NamedTuple):
    """A matrix in FP8 with its scales. data: fp8 [rows, cols]; scale: float32 [ceil(rows / tile[0]),
    ceil(cols / tile[1])], the factor that brings each tile back (x ~ data * scale); tile: (tile_rows, tile_cols)."""

    data: torch.Tensor
    scale: torch.Tensor
    tile: tuple[int, int]

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols]: data * scale, each scale spread over its tile."""
        return _untiled(_tiled(self.data.float(), self.tile) * self.scale[:, None, :, None], tuple(self.data.shape))

    def t(self) -> Quantized:
        """The transpose, with the same codes and scales (exact: a 128 x 128 block stays a block)."""
        return Quantized(self.data.t(), self.scale.t(), (self.tile[1], self.tile[0]))


def tile_shape(granularity: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The tile one scale covers: "tensor" -> shape, "tile" -> (1, 128), "block" -> (128, 128)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if len(shape) != 2:
        raise ValueError(f"tile_shape expects the shape of a matrix [rows, cols], got {list(shape)}")
    return {"tensor": (max(shape[0], 1), max(shape[1], 1)), "tile": (1, TILE), "block": (TILE, TILE)}[granularity]


def _tiled(x: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """x [rows, cols] as float32 [R, r, C, c], zero-padded to whole tiles (R = ceil(rows / r), C = ...)."""
    r, c = tile
    rows, cols = x.shape
    padded = F.pad(x.float(), (0, -cols % c, 0, -rows % r))  # [R * r, C * c]
    return padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)


def _untiled(tiles: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of ``_tiled``: [R, r, C, c] -> [rows, cols], the padding cut off."""
    R, r, C, c = tiles.shape
    return tiles.reshape(R * r, C * c)[:shape[0], :shape[1]]


def quantize(x: torch.Tensor, granularity: str = "tile", dtype: torch.dtype = E4M3,
             scale_format: str = "float") -> Quantized:
    """Quantise a matrix to FP8 with one scale per tile, s = max(|x| over the tile) / fp8_max ([V3] 3.3.2).

    x: float [rows, cols] (cols: the GEMM's inner dimension), finite. granularity: "tensor", "tile" (1 x 128) or
    "block" (128 x 128); dtype: E4M3 (max 448) or E5M2 (max 57344); scale_format: "float" (s as computed) or
    "ue8m0" (s rounded up to a power of two, ``power_of_two_scale``). Returns data: dtype [rows, cols] and scale:
    float32 [ceil(rows / r), ceil(cols / c)]. A tile whose max is below AMAX_FLOOR (1e-4, the released kernels'
    floor) uses AMAX_FLOOR (an all-zero tile stays zero). The quotient is clamped to [-fp8_max, fp8_max] before
    the cast, so that a conversion that does not saturate never sees a value out of range (torch 2.13's cast
    saturates; hardware may not): a float scale can leave x / s a rounding error above fp8_max, a ue8m0 scale
    never does.

    Raises TypeError for a non-float x or dtype not FP8; ValueError for x not 2-D or empty or an unknown
    granularity or scale_format, and ``validation.NonFiniteError`` (a ValueError; ``train.train_step`` reports it
    as TrainingDiverged) for x not finite.
    """
    _check_fp8_dtype(dtype)
    _check_scale_format(scale_format)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype in FP8_DTYPES:
        raise TypeError(f"quantize expects a float tensor (float32, bfloat16, ...), got {x!r:.80}")
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"quantize expects a non-empty matrix [rows, cols], got shape {list(x.shape)}")
    tile = tile_shape(granularity, tuple(x.shape))
    tiles = _tiled(x.detach(), tile)  # [R, r, C, c]
    amax = tiles.abs().amax(dim=(1, 3))  # [R, C]
    if not torch.isfinite(amax).all():
        raise NonFiniteError("quantize got non-finite values (inf or NaN): an FP8 scale cannot represent them; "
                         "find where they come from (a diverged loss, a division by zero) before quantising")
    limit = fp8_max(dtype)
    scale = amax.clamp(min=AMAX_FLOOR) / limit
    if scale_format == "ue8m0":
        scale = power_of_two_scale(scale)
    data = (tiles / scale[:, None, :, None]).clamp(-limit, limit).to(dtype)
    return Quantized(_untiled(data, tuple(x.shape)), scale, tile)


def power_of_two_scale(scale: torch.Tensor) -> torch.Tensor:
    """Each scale rounded UP to a power of two, 2^ceil(log2(s)): the UE8M0 format (an 8-bit exponent, no mantissa)
    of the released kernels from V3.1 on. scale: float32 [...], finite and > 0 -> float32 [...].

    Exact: with s = m * 2^e (0.5 <= m < 1, ``torch.frexp``), a power of two (m = 0.5) is kept and anything else
    becomes 2^e, so the result is never below s (a float32 log2 could round 2^k (1 + 2^-23) down to k).
    """
    mantissa, exponent = torch.frexp(scale)
    return torch.ldexp(torch.ones_like(scale), torch.where(mantissa == 0.5, exponent - 1, exponent))


def fake_quantize(x: torch.Tensor, granularity: str = "tile", dtype: torch.dtype = E4M3,
                  scale_format: str = "float") -> torch.Tensor:
    """quantize then dequantize: the float32 values x [rows, cols] takes after a trip through FP8."""
    return quantize(x, granularity, dtype, scale_format).dequantize()


# --------------------------------------------------------------------------------------------- GEMM
def scaled_matmul(a: Quantized, b: Quantized, backend: str = "auto") -> torch.Tensor:
    """a @ b^T from FP8 operands: a [M, K], b [N, K] -> float32 [M, N]; each operand's tiles are 1 x 128 or
    128 x 128 along K (or one scale for the tensor).

    The inner dimension is split into 128-wide slices; each slice's FP8 product is scaled by its row and column
    scales and added to a float32 sum, as V3's kernels promote partial sums every N_C = 128 elements ([V3] 3.3.2).
    backend "scaled_mm": each slice with ``torch._scaled_mm`` (row-wise scales); "dequant": dequantise both to
    float32 and matmul, the same numbers up to float32 rounding (tested). "auto": "scaled_mm" on an accelerator
    whose ``torch._scaled_mm`` accepts row-wise scales, a float32 output and these shapes, else "dequant". On the CPU
    ``torch._scaled_mm`` works (torch 2.13) but converts the operands to float itself and is slower than
    "dequant", so "auto" does not use it there.
    """
    if not (isinstance(a, Quantized) and isinstance(b, Quantized)):
        raise TypeError(f"scaled_matmul expects two fp8.Quantized operands (from fp8.quantize), got "
                        f"{type(a).__name__} and {type(b).__name__}")
    if a.data.dim() != 2 or b.data.dim() != 2 or a.data.shape[1] != b.data.shape[1]:
        raise ValueError(f"scaled_matmul expects a [M, K] and b [N, K], got {list(a.data.shape)} and "
                         f"{list(b.data.shape)}")
    for name, q in (("a", a), ("b", b)):
        if q.tile[1] % TILE and q.tile[1] < q.data.shape[1]:
            raise ValueError(f"{name}'s tiles {q.tile} do not split its inner dimension into 128-wide slices")
    if backend == "auto":
        device = a.data.device.type
        if device != "cpu" and _rowwise_scaled_mm_works(device):
            try:
                return _scaled_mm_by_slices(a, b)
            except RuntimeError:  # a shape this device's kernel does not take (e.g. not a multiple of 16)
                pass
        backend = "dequant"
    if backend == "dequant":
        return a.dequantize() @ b.dequantize().t()
    if backend != "scaled_mm":
        raise ValueError(f"backend must be 'auto', 'scaled_mm' or 'dequant', got {backend!r}")
    return _scaled_mm_by_slices(a, b)


def _scaled_mm_by_slices(a: Quantized, b: Quantized) -> torch.Tensor:
    """a @ b^T with one torch._scaled_mm per 128-wide slice of K, the scales applied per row and column."""
    (M, K), N = a.data.shape, b.data.shape[0]
    out = torch.zeros(M, N, dtype=torch.float32, device=a.data.device)
    for start in range(0, K, TILE):  # one slice of the inner dimension = one column of the tile scales
        end = min(start + TILE, K)
        scale_a = _slice_scale(a, start)[:, None]  # [M, 1]
        scale_b = _slice_scale(b, start)[None, :]  # [1, N]
        out += torch._scaled_mm(a.data[:, start:end].contiguous(), b.data[:, start:end].contiguous().t(),
                                scale_a=scale_a.contiguous(), scale_b=scale_b.contiguous(), out_dtype=torch.float32)
    return out


def _slice_scale(q: Quantized, start: int) -> torch.Tensor:
    """The per-row scales [rows] float32 of the 128-wide slice of the inner dimension that begins at ``start``."""
    column = q.scale[:, start // q.tile[1]]  # [ceil(rows / tile_rows)]
    return column.repeat_interleave(q.tile[0])[:q.data.shape[0]].float()


@functools.cache
def _rowwise_scaled_mm_works(device_type: str) -> bool:
    """Whether torch._scaled_mm takes E4M3 inputs with row-wise float32 scales and a float32 output here."""
    try:
        a = torch.ones(16, 32, device=device_type).to(E4M3)
        b = torch.ones(16, 32, device=device_type).to(E4M3)
        out = torch._scaled_mm(a, b.t(), scale_a=torch.ones(16, 1, device=device_type),
                               scale_b=torch.ones(1, 16, device=device_type), out_dtype=torch.float32)
        return bool((out == 32).all())
    except (RuntimeError, TypeError, NotImplementedError):
        return False


class _FP8LinearFunction(torch.autograd.Function):
    """y = x W^T with all three GEMMs on E4M3 operands quantised as [V3] Figure 7 shows (see the module doc)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, scale_format: str) -> torch.Tensor:  # x [M, K], W [N, K]
        w_q = quantize(weight, "block", scale_format=scale_format)
        ctx.save_for_backward(x, w_q.data, w_q.scale)  # x for Wgrad; W in FP8 for Dgrad
        ctx.scale_format = scale_format
        return scaled_matmul(quantize(x, "tile", scale_format=scale_format), w_q)  # Fprop [M, N]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, w_data, w_scale = ctx.saved_tensors
        fmt = ctx.scale_format
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # Dgrad: dy [M, N] tiles along N, times W [N, K] as blocks of W^T [K, N]
            grad_x = scaled_matmul(quantize(grad_out, "tile", scale_format=fmt),
                                   Quantized(w_data, w_scale, (TILE, TILE)).t())
        if ctx.needs_input_grad[1]:  # Wgrad: dy^T [N, M] and x^T [K, M], both in tiles along the tokens M
            grad_w = scaled_matmul(quantize(grad_out.t(), "tile", scale_format=fmt),
                                   quantize(x.t(), "tile", scale_format=fmt))
        return grad_x, grad_w, None


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale_format: str = "float") -> torch.Tensor:
    """F.linear without bias, with the GEMMs of the forward and backward passes in simulated FP8 (E4M3).

    x: float32 [..., K]; weight: float32 [N, K] (the master weight) -> float32 [..., N]; scale_format: "float" or
    "ue8m0" for every scale (``quantize``). Gradients flow to x and weight (float32). An empty x gives an empty
    output. Raises ValueError for shapes that do not fit or an unknown scale_format, and
    ``validation.NonFiniteError`` for non-finite inputs, weights or gradients (``quantize``).
    """
    _check_scale_format(scale_format)
    if x.dim() < 1 or weight.dim() != 2 or x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"fp8_linear expects x [..., K] and weight [N, K], got {list(x.shape)} and "
                         f"{list(weight.shape)}")
    if x.numel() == 0:
        return F.linear(x, weight)
    flat = x.reshape(-1, x.shape[-1])
    return _FP8LinearFunction.apply(flat, weight, scale_format).view(*x.shape[:-1], weight.shape[0])


class FP8Linear(nn.Linear):
    """An nn.Linear (no bias) whose forward is ``fp8_linear`` with the scale format ``scale_format`` (an
    attribute, "float" unless set): same parameters, same state_dict."""

    scale_format: str = "float"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.scale_format)


def to_fp8(model: nn.Module, scale_format: str = "float") -> nn.Module:
    """Switch a model's GEMMs to simulated FP8, in place, and return it: the attention projections (every
    bias-free nn.Linear inside an ``attention.MultiHeadAttention`` or
    ``attention.MultiHeadLatentAttention``), the dense SwiGLU FFNs and shared experts
    (``layers.SwiGLU.linear``) and the routed experts (``moe.DeepSeekMoE.expert_linear``). The embedding, output
    head, MoE gating (centroids), norms and the attention operator itself stay float32, as in [V3] 3.3.1. Every
    converted GEMM takes E4M3 inputs, where V3 gives the Linear after attention a custom E5M6 format with
    power-of-two scales ([V3] 3.3.3). scale_format: "float" or "ue8m0" for every scale (see ``quantize``). The
    parameters are the same objects (an optimizer made before still holds them). Calling it twice is harmless;
    the second call's scale_format is the one used.
    Raises TypeError for a model that is not an nn.Module, ValueError for an unknown scale_format.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_fp8 expects a torch.nn.Module, got {type(model).__name__}")
    _check_scale_format(scale_format)
    linear = fp8_linear if scale_format == "float" else functools.partial(fp8_linear, scale_format=scale_format)
    from course_lib.core.layers import SwiGLU
    from course_lib.moe.layer import DeepSeekMoE
    from course_lib.attention.mha import MultiHeadAttention
    from course_lib.attention.mla import MultiHeadLatentAttention

    for module in list(model.modules()):
        if isinstance(module, (MultiHeadAttention, MultiHeadLatentAttention)):
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear and child.bias is None:
                    fp8 = FP8Linear(child.in_features, child.out_features, bias=False, device="meta")
                    fp8.weight = child.weight  # the same Parameter
                    setattr(module, name, fp8)
                    child = fp8
                if isinstance(child, FP8Linear):
                    child.scale_format = scale_format
        elif isinstance(module, SwiGLU):
            module.linear = linear
        elif isinstance(module, DeepSeekMoE):
            module.expert_linear = linear
    return model


# --------------------------------------------------------------------------------------------- accumulation
ROUNDINGS = ("nearest", "truncate")


def round_mantissa(x: torch.Tensor, mantissa_bits: int, rounding: str = "nearest") -> torch.Tensor:
    """Round float64 values to ``mantissa_bits`` explicit mantissa bits, with an unlimited exponent range
    (float32 is mantissa_bits = 23). rounding: "nearest" (ties to even) or "truncate" (toward zero: the bits
    below the last kept one are dropped). x: float64 [...] -> float64 [...]."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not 0 <= check_int("mantissa_bits", mantissa_bits) <= 52:
        raise ValueError(f"mantissa_bits must be an int in 0..52, got {mantissa_bits!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"round_mantissa expects a float tensor (float64), got {x!r:.80}")
    mantissa, exponent = torch.frexp(x)  # x = mantissa * 2^exponent, 0.5 <= |mantissa| < 1
    steps = 2.0 ** (mantissa_bits + 1)
    kept = torch.round(mantissa * steps) if rounding == "nearest" else torch.trunc(mantissa * steps)
    return torch.ldexp(kept / steps, exponent)


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
    if products.dim() < 1 or products.shape[-1] == 0:
        raise ValueError(f"accumulate expects products [..., K] with K >= 1, got shape {list(products.shape)}")
    if not 1 <= check_int("mantissa_bits", mantissa_bits) <= 52:
        raise ValueError(f"mantissa_bits must lie in 1..52, got {mantissa_bits}")
    if promote_every is not None:
        check_int("promote_every", promote_every, 1)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not torch.isfinite(products).all():
        raise ValueError("accumulate got non-finite products")
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


def fp8_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The elementwise products a[m, k] * b[n, k] of an FP8 GEMM's operands, exact in float64.

    a: [M, K], b: [N, K] (any float, e.g. dequantised FP8) -> float64 [M, N, K]. Raises ValueError for other
    shapes."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"fp8_products expects a [M, K] and b [N, K], got {list(a.shape)} and {list(b.shape)}")
    return a.double()[:, None, :] * b.double()[None, :, :]


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius), in float64. Raises ValueError when the shapes differ."""
    if approx.shape != exact.shape:
        raise ValueError(f"relative_error expects two tensors of one shape, got {list(approx.shape)} and "
                         f"{list(exact.shape)}")
    approx, exact = approx.detach().double(), exact.detach().double()
    return float((approx - exact).norm() / exact.norm().clamp(min=math.ulp(0.0)))


def _check_scale_format(scale_format: str) -> None:
    if scale_format not in SCALE_FORMATS:
        raise ValueError(f"scale_format must be one of {SCALE_FORMATS} (float32 scales, or scales rounded up to a "
                         f"power of two as in V3.1's UE8M0), got {scale_format!r}")


def _check_fp8_dtype(dtype: torch.dtype) -> None:
    if dtype not in FP8_DTYPES:
        raise TypeError(f"dtype must be torch.float8_e4m3fn (E4M3) or torch.float8_e5m2 (E5M2), got {dtype}")
