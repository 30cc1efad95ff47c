"""The small building blocks every model of the course shares: RMSNorm and the SwiGLU feed-forward network.

The routed and shared experts of DeepSeekMoE ([V3] 2.1.2) are SwiGLU FFNs, the dense layers of the tiny model
are too, and the MTP modules ([V3] 2.2) normalise with RMSNorm: they all use this module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.validation import check_int, check_number


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x / sqrt(mean(x^2) + eps) * weight, over the last dimension.

    x: [..., dim] -> [..., dim] in the dtype of x (computed in float32 at least, as DeepSeek-V3's code does).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        self.eps = check_number("eps", eps, 0, strict=True)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"RMSNorm expects a floating-point tensor [..., {self.weight.shape[0]}], got {x!r:.80}")
        if x.dim() < 1 or x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"RMSNorm expected inputs [..., {self.weight.shape[0]}], got {list(x.shape)}")
        wide = torch.promote_types(x.dtype, torch.float32)  # bf16 / fp16 inputs are normalised in float32
        return F.rms_norm(x.to(wide), (x.shape[-1],), self.weight.to(wide), self.eps).to(x.dtype)


def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
           linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear) -> torch.Tensor:
    """The SwiGLU FFN as a function of its weights: (silu(x W_gate^T) * (x W_up^T)) W_down^T.

    x: [..., dim]; w_gate, w_up: [hidden, dim]; w_down: [dim, hidden] (nn.Linear's layout) -> [..., dim].
    ``linear(x, w)`` computes the three GEMMs (``fp8.fp8_linear`` to simulate FP8 training).
    Raises TypeError for tensors that are not floating point, ValueError for shapes that do not fit.
    """
    tensors = {"x": x, "w_gate": w_gate, "w_up": w_up, "w_down": w_down}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"swiglu: {name} must be a floating-point tensor, got {t!r:.80}")
    hidden, dim = w_gate.shape if w_gate.dim() == 2 else (-1, -1)
    for name, shape in (("w_gate", [hidden, dim]), ("w_up", [hidden, dim]), ("w_down", [dim, hidden])):
        if list(tensors[name].shape) != shape or hidden < 1 or x.dim() < 1 or x.shape[-1] != dim:
            raise ValueError(f"swiglu expects x [..., dim], w_gate and w_up [hidden, dim], w_down [dim, hidden]; got "
                             f"x {list(x.shape)}, w_gate {list(w_gate.shape)}, w_up {list(w_up.shape)}, "
                             f"w_down {list(w_down.shape)}")
    return linear(F.silu(linear(x, w_gate)) * linear(x, w_up), w_down)


class SwiGLU(nn.Module):
    """A SwiGLU feed-forward network without biases, as in DeepSeek-V3's dense layers and experts.

    x: [..., dim] -> [..., dim]; parameters: 3 * dim * hidden.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        check_int("hidden", hidden, 1)
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)
        self.linear = F.linear  # the GEMM of the three projections (fp8.to_fp8 swaps in fp8_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.w_gate.weight, self.w_up.weight, self.w_down.weight, self.linear)
