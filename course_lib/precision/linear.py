"""The FP8 linear layer of [V3] 3.3 (Figure 7): all three GEMMs on E4M3 operands with fine-grained scales.

``fp8_linear`` (an autograd Function) quantises the inputs of the three GEMMs as Figure 7 shows (the attention
operator is no Linear and stays out of it):

    Fprop  y  = x  W^T   x: 1 x 128 tiles along K (channels)      W: 128 x 128 blocks
    Dgrad  dx = dy W     dy: 1 x 128 tiles along N (out channels)  W: the same 128 x 128 blocks, transposed
    Wgrad  dW = dy^T x   dy^T and x^T: 1 x 128 tiles along M (tokens), i.e. 128 x 1 tiles of dy and x

Every GEMM accumulates in float32 (``scaled_matmul``): with ``torch._scaled_mm``, one 128-wide slice of the inner
dimension at a time, the two scales applied when the slice's partial sum is added to the float32 result (V3's
promotion every N_C = 128 elements, 3.3.2); dequantise-and-matmul gives the same numbers up to float32 rounding.
Outputs, the master weights and the weight gradients are float32. ``to_fp8(model)`` switches a model's attention
projections, dense FFNs and experts to it; the embedding, output head, MoE gating and norms stay float32, as in
V3 (3.3.1). Nothing is checked inside the layer: NaN or inf that arise in training reach the loss, which the
training step checks.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.validation import boundary
from course_lib.precision import arguments
from course_lib.precision.formats import E4M3, TILE, Quantized
from course_lib.precision.quantization import quantize


@boundary(arguments.scaled_matmul)
def scaled_matmul(a: Quantized, b: Quantized, backend: str = "auto") -> torch.Tensor:
    """a @ b^T from FP8 operands: a [M, K], b [N, K] -> float32 [M, N]; each operand's tiles are 1 x 128 or
    128 x 128 along K (or one scale for the tensor).

    The inner dimension is split into 128-wide slices; each slice's FP8 product is scaled by its row and column
    scales and added to a float32 sum, as V3's kernels promote partial sums every N_C = 128 elements ([V3] 3.3.2).
    backend "scaled_mm": each slice with ``torch._scaled_mm`` (row-wise scales); "dequant": dequantise both to
    float32 and matmul, the same numbers up to float32 rounding (tested). "auto": "scaled_mm" on an accelerator
    whose ``torch._scaled_mm`` accepts row-wise scales, a float32 output and these shapes, else "dequant". On the CPU
    ``torch._scaled_mm`` works (torch 2.13) but converts the operands to float itself and is slower than
    "dequant", so "auto" does not use it there. Raises TypeError for operands that are not ``Quantized``,
    ValueError for shapes or tiles that do not fit and an unknown backend.
    """
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
    """y = x W^T with all three GEMMs on E4M3 operands quantised as [V3] Figure 7 shows (see the module doc).

    The backward pass runs outside any boundary (the autograd engine calls it), so it calls the unchecked math of
    ``quantize`` and ``scaled_matmul`` (``__wrapped__``): no check, no read-back, per gradient GEMM."""

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
        tiles, matmul = quantize.__wrapped__, scaled_matmul.__wrapped__
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # Dgrad: dy [M, N] tiles along N, times W [N, K] as blocks of W^T [K, N]
            grad_x = matmul(tiles(grad_out, "tile", E4M3, fmt), Quantized(w_data, w_scale, (TILE, TILE)).t())
        if ctx.needs_input_grad[1]:  # Wgrad: dy^T [N, M] and x^T [K, M], both in tiles along the tokens M
            grad_w = matmul(tiles(grad_out.t(), "tile", E4M3, fmt), tiles(x.t(), "tile", E4M3, fmt))
        return grad_x, grad_w, None


@boundary(arguments.fp8_linear)
def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale_format: str = "float") -> torch.Tensor:
    """F.linear without bias, with the GEMMs of the forward and backward passes in simulated FP8 (E4M3).

    x: float32 [..., K]; weight: float32 [N, K] (the master weight) -> float32 [..., N]; scale_format: "float" or
    "ue8m0" for every scale (``quantization.quantize``). Gradients flow to x and weight (float32). An empty x
    gives an empty output. Raises ValueError for shapes that do not fit or an unknown scale_format, and
    ``validation.NonFiniteError`` for a non-finite x or weight given by a user (called by a model's forward, it
    checks nothing: NaN or inf there reach the loss, which the training step checks).
    """
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


@boundary(arguments.to_fp8)
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
