"""The small building blocks every model of the course shares: RMSNorm and the SwiGLU feed-forward network.

The routed and shared experts of DeepSeekMoE ([V3] 2.1.2) are SwiGLU FFNs, the dense layers of the tiny model
are too, and the MTP modules ([V3] 2.2) normalise with RMSNorm: they all use this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square layer norm: x / sqrt(mean(x^2) + eps) * weight, over the last dimension.

    x: [..., dim] -> [..., dim] in the dtype of x (computed in float32 at least, as DeepSeek-V3's code does).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"RMSNorm needs dim > 0, got {dim}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"RMSNorm expected inputs [..., {self.weight.shape[0]}], got {list(x.shape)}")
        wide = torch.promote_types(x.dtype, torch.float32)  # bf16 / fp16 inputs are normalised in float32
        return F.rms_norm(x.to(wide), (x.shape[-1],), self.weight.to(wide), self.eps).to(x.dtype)


def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """The SwiGLU FFN as a function of its weights: (silu(x W_gate^T) * (x W_up^T)) W_down^T.

    x: [..., dim]; w_gate, w_up: [hidden, dim]; w_down: [dim, hidden] (nn.Linear's layout) -> [..., dim]
    """
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


class SwiGLU(nn.Module):
    """A SwiGLU feed-forward network without biases, as in DeepSeek-V3's dense layers and experts.

    x: [..., dim] -> [..., dim]; parameters: 3 * dim * hidden.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"SwiGLU needs dim > 0 and hidden > 0, got dim={dim}, hidden={hidden}")
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.w_gate.weight, self.w_up.weight, self.w_down.weight)
