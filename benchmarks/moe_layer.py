"""The MoE layer's benchmark configuration (issue 3), shared by bench_moe_vs_dense.py and bench_moe_vs_hf.py.

dim 256, expert_dim 128, 16 routed experts, top-2, 1 shared expert, 8 x 256 tokens; the dense SwiGLU has hidden
(1 shared + 2 routed) * 128 = 384: the FFN parameters one token activates in the MoE layer (the MoE layer also
runs its router).
"""

from __future__ import annotations


import torch

from course_lib.core.layers import SwiGLU
from course_lib.moe.layer import DeepSeekMoE

DIM, EXPERT_DIM, N_ROUTED, TOP_K, N_SHARED = 256, 128, 16, 2, 1
BATCH, SEQ = 8, 256
QUICK_BATCH, QUICK_SEQ = 2, 16


def layers(quick: bool = False) -> tuple[DeepSeekMoE, SwiGLU, torch.Tensor]:
    """The MoE layer, the dense FFN with its activated parameters, and the input [batch, seq, dim] (seeded)."""
    torch.manual_seed(0)
    moe = DeepSeekMoE(DIM, EXPERT_DIM, N_ROUTED, N_SHARED, TOP_K)
    dense = SwiGLU(DIM, (N_SHARED + TOP_K) * EXPERT_DIM)
    x = torch.randn(QUICK_BATCH if quick else BATCH, QUICK_SEQ if quick else SEQ, DIM)
    return moe, dense, x


def forward_backward(module: torch.nn.Module, x: torch.Tensor) -> None:
    """One forward + backward of ``module`` on ``x`` (gradients reset first)."""
    module.zero_grad(set_to_none=True)
    module(x).square().mean().backward()


def describe(x: torch.Tensor) -> str:
    return (f"forward + backward of {x.shape[0]} x {x.shape[1]} tokens, dim {DIM}, {N_ROUTED} experts of "
            f"{EXPERT_DIM}, top-{TOP_K}, {N_SHARED} shared")
