"""Dispatch in DeepSeekMoE ([V3] 2.1.2): sum over chosen i of g_{i,t} FFN_i(u_t), for all tokens at once.

Every token picks ``top_k`` routed experts, so a batch of T tokens makes A = T * top_k (token, expert)
assignments. Both implementations sort the assignments by expert, so that each expert's rows form one
contiguous block, and run each expert once on its block:

- ``expert_loop``: a Python loop over the experts, one SwiGLU per expert on the rows it received. The readable
  version that notebook 01 teaches, and the fallback. It reads the block sizes on the host (``.tolist()``), which
  waits for a GPU to finish the routing.
- ``grouped_experts``: the same products as three grouped GEMMs (``torch._grouped_mm``: one call multiplies
  every block by its own expert's matrix, the blocks given by their end offsets). No Python loop and no host
  sync; a GPU runs each grouped GEMM as one kernel.

``routed_experts`` chooses between them, in this one place: the grouped GEMMs when ``grouped_mm_available``
says this torch build runs them, with gradients, on the device and dtype at hand (probed once per device and
dtype) and the shapes meet its alignment rule; the loop otherwise (older torch, float64, odd sizes).

Shapes: x [T, dim]; weights [T, top_k] (gate weights g, in x's dtype); indices [T, top_k] int64 expert ids;
w_gate, w_up [n_routed, expert_dim, dim] and w_down [n_routed, dim, expert_dim] (nn.Linear's layout, stacked);
load [n_routed], the number of assignments per expert (``balance.expert_load(indices, n_routed)``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib.core.layers import swiglu
from course_lib.core.validation import boundary
from course_lib.moe import arguments

IMPLEMENTATIONS = ("auto", "grouped_mm", "loop")


def expert_loop(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w_gate: torch.Tensor,
                w_up: torch.Tensor, w_down: torch.Tensor, load: torch.Tensor,
                linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear) -> torch.Tensor:
    """sum_i g_{i,t} FFN_i(x_t) by a loop over the experts (shapes in the module docstring) -> [T, dim].

    The assignments are sorted by expert, so each expert gathers its own rows, runs once on them, and adds its
    weighted outputs back to those tokens (``index_add_``). An expert that received no token is skipped.
    ``linear`` is the product each expert's projections use (``precision.linear.fp8_linear`` for FP8 experts).
    """
    top_k = indices.shape[1]
    order = indices.reshape(-1).argsort(stable=True)  # [T * top_k] assignments grouped by expert
    sizes = load.long().tolist()  # block size of each expert (on the host: a GPU waits here)
    tokens_of = (order // top_k).split(sizes)  # per expert: the tokens routed to it
    gates_of = weights.reshape(-1).index_select(0, order).split(sizes)  # per expert: their gate weights
    out = torch.zeros_like(x)
    experts = zip(w_gate.unbind(0), w_up.unbind(0), w_down.unbind(0))  # unbind: one backward node, not n_routed
    for tokens, gates, (gate, up, down) in zip(tokens_of, gates_of, experts):
        if tokens.numel():
            out.index_add_(0, tokens, swiglu(x.index_select(0, tokens), gate, up, down, linear) * gates[:, None])
    return out


def grouped_experts(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w_gate: torch.Tensor,
                    w_up: torch.Tensor, w_down: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """sum_i g_{i,t} FFN_i(x_t) by three grouped GEMMs (shapes in the module docstring) -> [T, dim].

    Needs ``grouped_mm_available(x, w_gate, w_down)``. The rows sorted by expert go through the gate, up and
    down projections of their own expert (``torch._grouped_mm`` with the blocks' end offsets, computed on the
    device: no host sync), and are added back to their tokens (``index_add_``). The gate weight g multiplies
    the expert's hidden vector, before the down projection: the same product, on expert_dim numbers instead of
    dim.
    """
    top_k = indices.shape[1]
    order = indices.reshape(-1).argsort(stable=True)  # [A] assignments grouped by expert
    ends = load.cumsum(0).to(torch.int32)  # [n_routed] end of each expert's block; an empty block repeats an end
    token_of = order // top_k  # [A] the token of each sorted assignment
    rows = x.index_select(0, token_of)  # [A, dim]
    gates = weights.reshape(-1).index_select(0, order).unsqueeze(1)  # [A, 1]
    hidden = (F.silu(torch._grouped_mm(rows, w_gate.transpose(1, 2), offs=ends))
              * torch._grouped_mm(rows, w_up.transpose(1, 2), offs=ends)) * gates  # [A, expert_dim]
    return torch.zeros_like(x).index_add_(0, token_of, torch._grouped_mm(hidden, w_down.transpose(1, 2), offs=ends))


@boundary(arguments.routed_experts)
def routed_experts(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w_gate: torch.Tensor,
                   w_up: torch.Tensor, w_down: torch.Tensor, load: torch.Tensor,
                   implementation: str = "auto",
                   linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear) -> torch.Tensor:
    """sum over chosen i of g_{i,t} FFN_i(x_t) for every token (shapes in the module docstring) -> [T, dim].

    implementation: "auto" (the grouped GEMMs where ``grouped_mm_available``, else the loop), "grouped_mm"
    or "loop". Both give the same outputs and gradients up to float rounding. ``linear``: the product of the
    experts' projections; any other than ``F.linear`` (the FP8 simulation's ``precision.linear.fp8_linear``) runs
    the loop, since the grouped GEMMs are plain products. Raises ValueError for an unknown implementation, and for
    "grouped_mm" where it cannot run (another linear, or ``grouped_mm_available`` says no).
    """
    grouped = implementation == "grouped_mm" or (
        implementation == "auto" and linear is F.linear and grouped_mm_available(x, w_gate, w_down))
    if grouped:
        return grouped_experts(x, weights, indices, w_gate, w_up, w_down, load)
    return expert_loop(x, weights, indices, w_gate, w_up, w_down, load, linear)


def grouped_mm_available(x: torch.Tensor, w_gate: torch.Tensor, w_down: torch.Tensor) -> bool:
    """Whether ``grouped_experts`` can run on these tensors: same dtype and device, rows of dim and expert_dim
    elements a multiple of 16 bytes (the kernel's alignment rule), 16-byte aligned weights, and a torch build
    whose ``_grouped_mm`` runs forward and backward correctly on this device and dtype (``_probe``, run once per
    device and dtype, also when the first call comes from a no_grad or inference_mode forward)."""
    if w_gate.dtype != x.dtype or w_down.dtype != x.dtype or w_gate.device != x.device:
        return False
    row_bytes = x.element_size()
    if (x.shape[-1] * row_bytes) % 16 or (w_gate.shape[1] * row_bytes) % 16:
        return False
    if w_gate.data_ptr() % 16 or w_down.data_ptr() % 16:
        return False
    return _probe(str(x.device), x.dtype)


@functools.cache
def _probe(device: str, dtype: torch.dtype) -> bool:
    """Run ``torch._grouped_mm`` forward and backward on a small case with an empty block and compare it with
    per-block matrix products. False when the function is missing, raises, or disagrees."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        with torch.inference_mode(False), torch.enable_grad():  # the first call may come from a no_grad forward
            generator = torch.Generator().manual_seed(0)
            a, grad = (torch.randn(6, 8, generator=generator).to(device=device, dtype=dtype) for _ in range(2))
            b = torch.randn(3, 8, 8, generator=generator).to(device=device, dtype=dtype)
            ends = torch.tensor([2, 2, 6], dtype=torch.int32, device=device)  # the middle block is empty
            a, b = a.requires_grad_(), b.requires_grad_()
            out = torch._grouped_mm(a, b.transpose(1, 2), offs=ends)
            grad_a, grad_b = torch.autograd.grad(out, (a, b), grad)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False
    with torch.no_grad():
        expected = torch.cat([a[:2] @ b[0].T, a[2:] @ b[2].T])
        expected_a = torch.cat([grad[:2] @ b[0], grad[2:] @ b[2]])
        expected_b = torch.stack([grad[:2].T @ a[:2], torch.zeros_like(b[1]), grad[2:].T @ a[2:]])
    low_precision = dtype in (torch.float16, torch.bfloat16)
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if low_precision else {"rtol": 1e-4, "atol": 1e-4}
    return all(torch.allclose(got.float(), want.float(), **tolerance)
               for got, want in ((out, expected), (grad_a, expected_a), (grad_b, expected_b)))
