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

from course_lib.core.validation import boundary
from course_lib.moe import arguments

BALANCE_MODES: tuple[str, ...] = ("none", "aux", "loss_free")  # no balancing, the auxiliary loss, the bias update
SUM_EPS = 1e-20  # added to each token's score sum, as Megatron-LM's aux-loss does: all-zero scores give P = 0, not NaN


@boundary(arguments.expert_load)
def expert_load(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Number of assignments per expert.

    indices: integer tensor of any shape, e.g. [tokens, k] from ``topk_route`` -> float32 [n_experts]. A token
    routed to k experts counts once for each of them, so the loads sum to indices.numel(). Raises TypeError for
    indices that are not an integer tensor or an n_experts that is not an int, ValueError for ids outside
    [0, n_experts) or n_experts < 1.
    """
    return torch.bincount(indices.reshape(-1).long(), minlength=n_experts).to(torch.float32)


@boundary(arguments.max_violation)
def max_violation(load: torch.Tensor) -> float:
    """MaxVio = (max load - mean load) / mean load ([LF] eq. 4). load: [n_experts] -> a float >= 0.

    Raises ValueError for a load that is empty, not 1-D, not finite, negative or all zero.
    """
    load = load.detach().double()
    mean = load.mean()
    return float((load.max() - mean) / mean)


@boundary(arguments.update_bias)
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
    with torch.no_grad():
        load = load.to(device=bias.device, dtype=torch.float32)
        work = torch.promote_types(bias.dtype, torch.float32)
        return (bias.to(work) + gamma * torch.sign(load.mean() - load)).to(bias.dtype)


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


@boundary(arguments.balance_loss)
def balance_loss(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """The classical (batch-wise) auxiliary balance loss alpha * sum_i f_i P_i over all tokens of ``scores``.

    scores: [tokens, n_experts] unbiased affinities (sigmoid) -> scalar tensor. Equals alpha when the load and
    the normalised scores are both uniform; the gradient reaches the scores through P only. Raises TypeError /
    ValueError for scores that are not a non-empty 2-D float tensor of finite affinities >= 0, a k outside
    [1, n_experts] or an alpha that is not a finite number >= 0.
    """
    f, p = _balance_terms(scores, k)
    return alpha * (f * p).sum()


@boundary(arguments.sequence_balance_loss)
def sequence_balance_loss(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """V3's complementary sequence-wise balance loss ([V3] eqs. 17-20), averaged over the batch.

    scores: [batch, T, n_experts] unbiased affinities (sigmoid) -> scalar tensor: the mean over the sequences of
    ``balance_loss`` computed on each sequence's T tokens alone (V3: alpha = 0.0001). Raises as ``balance_loss``
    (scores 3-D).
    """
    f, p = _balance_terms(scores, k)  # [batch, n_experts] each
    return alpha * (f * p).sum(dim=-1).mean()
