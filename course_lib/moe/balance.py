"""Measuring and correcting expert load: counts, MaxVio, the loss-free bias update and the balance losses.

- Load of expert i: how many (token, expert) assignments went to i; with top-k routing every token makes k.
- MaxVio ([LF] eq. 4): (max_i load_i - mean load) / mean load; 0 is perfect balance.
- Auxiliary-loss-free balancing ([V3] 2.1.2, [LF]): after each training step, b_i <- b_i + gamma * sign(mean - c_i).
- Balance loss ([V3] eqs. 17-20; Switch/GShard): alpha * sum_i f_i P_i with
  f_i = N / (K T) * (number of the T tokens whose unbiased top-K contains i) and P_i = mean_t s_{i,t} / sum_j s_{j,t}.
  The classical auxiliary loss takes the T tokens of a whole batch; V3's complementary sequence-wise loss takes
  each sequence on its own and averages over the batch.
"""

from __future__ import annotations

import torch

from course_lib.core.validation import check_int, check_number


def expert_load(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Number of assignments per expert.

    indices: integer tensor of any shape, e.g. [tokens, k] from ``topk_route`` -> float32 [n_experts]. A token
    routed to k experts counts once for each of them, so the loads sum to indices.numel().
    """
    check_int("n_experts", n_experts, 1)
    if not isinstance(indices, torch.Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor of expert ids (e.g. int64 from topk), got {indices!r:.80}")
    flat = indices.reshape(-1).long()
    if flat.numel() and (flat.min() < 0 or flat.max() >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts - 1}], got values from {int(flat.min())} to {int(flat.max())}")
    return _expert_load_unchecked(flat, n_experts)


def _expert_load_unchecked(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``expert_load`` of indices known to lie in [0, n_experts) (an MoE layer's own top-k choices, counted in
    every forward): without the range check, which reads the indices back to the host (a sync on a GPU)."""
    return torch.bincount(indices.reshape(-1).long(), minlength=n_experts).to(torch.float32)


def max_violation(load: torch.Tensor) -> float:
    """MaxVio = (max load - mean load) / mean load ([LF] eq. 4). load: [n_experts] -> a float >= 0."""
    if not isinstance(load, torch.Tensor) or load.dim() != 1 or load.numel() == 0:
        raise ValueError(f"load must be a non-empty 1-D tensor [n_experts], got {load!r:.80}")
    load = load.detach().double()
    if not bool(((load >= 0) & (load < float("inf"))).all()):
        raise ValueError(f"load must hold finite counts >= 0, got {load.tolist()[:8]}")
    mean = load.mean()
    if not mean > 0:
        raise ValueError(f"the mean load is {float(mean)}: MaxVio needs at least one assignment (a positive mean)")
    return float((load.max() - mean) / mean)


def update_bias(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """The auxiliary-loss-free update ([V3] 2.1.2): b + gamma * sign(mean(load) - load), as a new tensor.

    bias, load: [n_experts]; gamma >= 0 (V3: 0.001). Overloaded experts go down by gamma, underloaded ones go up,
    whatever the size of the gap (a sign, not a proportional step). The result has the dtype of ``bias`` and no
    gradient: the bias is state, never trained by backpropagation. The step is taken in float32 (or the
    bias's wider dtype).

    Raises TypeError for a bias that is not floating point (an integer bias would round every step to 0),
    ValueError for shapes that differ or are empty, a load with NaN, inf or negative counts, and a gamma that is
    not a finite number >= 0.
    """
    if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.numel() == 0:
        raise ValueError(f"bias must be a non-empty 1-D tensor [n_experts], got {bias!r:.80}")
    if not bias.is_floating_point():
        raise TypeError(f"bias must be a floating-point tensor (float32): a {bias.dtype} bias would round every "
                        f"step of gamma to 0")
    if not isinstance(load, torch.Tensor) or load.shape != bias.shape:
        shape = list(load.shape) if isinstance(load, torch.Tensor) else type(load).__name__
        raise ValueError(f"load must have the shape of bias {list(bias.shape)}, got {shape}")
    check_number("gamma", gamma, 0)
    with torch.no_grad():
        load = load.to(device=bias.device, dtype=torch.float32)
        if not bool(((load >= 0) & (load < float("inf"))).all()):
            raise ValueError(f"load must hold finite counts >= 0 (assignments per expert), got {load.tolist()}")
        work = torch.promote_types(bias.dtype, torch.float32)
        return (bias.to(work) + gamma * torch.sign(load.mean() - load)).to(bias.dtype)


SUM_EPS = 1e-20  # added to each token's score sum, as Megatron-LM's aux-loss does: all-zero scores give P = 0, not NaN


def _balance_terms(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """f and P of the balance loss over the T tokens of the second-to-last dimension.

    scores: [..., T, n_experts] -> (f [..., n_experts], P [..., n_experts]); f carries no gradient.
    """
    n_experts, tokens = scores.shape[-1], scores.shape[-2]
    chosen = scores.detach().topk(k, dim=-1).indices  # unbiased top-k, [..., T, k]
    hits = torch.zeros_like(scores).scatter(-1, chosen, 1.0)  # [..., T, n_experts]
    f = hits.sum(dim=-2) * (n_experts / (k * tokens))
    wide = scores.to(torch.promote_types(scores.dtype, torch.float32))
    p = (wide / (wide.sum(dim=-1, keepdim=True) + SUM_EPS)).mean(dim=-2)  # a token whose scores all underflow: 0
    return f, p


def _check_loss_inputs(scores: torch.Tensor, k: int, alpha: float, dims: int, layout: str) -> None:
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point torch tensor {layout}, got {scores!r:.80}")
    if scores.dim() != dims:
        raise ValueError(f"scores must be {dims}-D {layout}, got shape {list(scores.shape)}")
    if scores.numel() == 0:
        raise ValueError(f"scores is empty (shape {list(scores.shape)}), expected {layout} with no zero size")
    if not 1 <= check_int("k", k) <= scores.shape[-1]:
        raise ValueError(f"k must be an int in [1, n_experts={scores.shape[-1]}], got {k!r}")
    if not bool(((scores >= 0) & (scores < float("inf"))).all()):
        raise ValueError("scores must be finite affinities >= 0 (sigmoid outputs), without NaN or inf")
    check_number("alpha", alpha, 0)


def balance_loss(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """The classical (batch-wise) auxiliary balance loss alpha * sum_i f_i P_i over all tokens of ``scores``.

    scores: [tokens, n_experts] unbiased affinities (sigmoid) -> scalar tensor. Equals alpha when the load and
    the normalised scores are both uniform; the gradient reaches the scores through P only.
    """
    _check_loss_inputs(scores, k, alpha, 2, "[tokens, n_experts]")
    f, p = _balance_terms(scores, k)
    return alpha * (f * p).sum()


def sequence_balance_loss(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """V3's complementary sequence-wise balance loss ([V3] eqs. 17-20), averaged over the batch.

    scores: [batch, T, n_experts] unbiased affinities (sigmoid) -> scalar tensor: the mean over the sequences of
    ``balance_loss`` computed on each sequence's T tokens alone (V3: alpha = 0.0001).
    """
    _check_loss_inputs(scores, k, alpha, 3, "[batch, T, n_experts]")
    f, p = _balance_terms(scores, k)  # [batch, n_experts] each
    return alpha * (f * p).sum(dim=-1).mean()
