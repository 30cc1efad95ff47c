"""The small building blocks every model of the course shares: RMSNorm and the SwiGLU feed-forward network.

The routed and shared experts of DeepSeekMoE ([V3] 2.1.2) are SwiGLU FFNs, the dense layers of the tiny model
are too, and the MTP modules ([V3] 2.2) normalise with RMSNorm: they all use this module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core import arguments
from course_lib.core.validation import boundary


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x / sqrt(mean(x^2) + eps) * weight, over the last dimension.

    x: [..., dim] -> [..., dim] in the dtype of x (computed in float32 at least, as DeepSeek-V3's code does).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        arguments.rms_norm(dim, eps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    @boundary(arguments.rms_norm_forward)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)  # bf16 / fp16 inputs are normalised in float32
        return F.rms_norm(x.to(wide), (x.shape[-1],), self.weight.to(wide), self.eps).to(x.dtype)


def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
           linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear) -> torch.Tensor:
    """The SwiGLU FFN as a function of its weights: (silu(x W_gate^T) * (x W_up^T)) W_down^T.

    x: [..., dim]; w_gate, w_up: [hidden, dim]; w_down: [dim, hidden] (nn.Linear's layout) -> [..., dim].
    ``linear(x, w)`` computes the three GEMMs (``precision.linear.fp8_linear`` to simulate FP8 training).

    Checks nothing: it runs once per expert per MoE layer and once per dense layer in every forward, and its
    callers (``SwiGLU.forward``, ``moe.DeepSeekMoE.forward``, the model) are boundaries that checked x; the
    weights are the modules' own. Called directly with tensors that do not fit, it fails in ``linear`` (torch's
    RuntimeError on mismatched shapes or dtypes).
    """
    return linear(F.silu(linear(x, w_gate)) * linear(x, w_up), w_down)


class SwiGLU(nn.Module):
    """A SwiGLU feed-forward network without biases, as in DeepSeek-V3's dense layers and experts.

    x: float [..., dim] -> [..., dim]; parameters: 3 * dim * hidden. forward raises TypeError for an x that is not
    a floating-point tensor, ValueError for a last dimension other than dim (at its boundary,
    ``core.arguments.swiglu_forward``; ``swiglu`` itself checks nothing).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        arguments.swiglu_layer(dim, hidden)
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)
        self.linear = F.linear  # the GEMM of the three projections (precision.linear.to_fp8 swaps in fp8_linear)

    @boundary(arguments.swiglu_forward)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.w_gate.weight, self.w_up.weight, self.w_down.weight, self.linear)
