"""Routing in DeepSeekMoE ([V3] 2.1.2): affinity scores, the (group-limited) top-k choice and the gate weights.

For token t and routed expert i:

    s_{i,t} = sigmoid(u_t . e_i)                       affinity (V3 uses sigmoid; V2 used softmax)
    chosen  = top-K_r of { s_{j,t} + b_j }             the bias b only decides WHO is chosen ...
    g_{i,t} = s_{i,t} / sum_{j chosen} s_{j,t}          ... the weight uses the UNBIASED score

and the released code multiplies g by ``route_scale`` (2.5 in V3, not in the paper). With group-limited
routing ([V3] 2.1.2, [CODE] inference/model.py ``Gate``) the experts are split into ``n_groups`` groups (V3:
nodes); a group's score is the sum of its two highest biased scores, only the best ``topk_groups`` groups
stay, and the experts of the other groups are masked with -inf before the top-k. (The released code scores a
group by its single best expert when the layer has no bias, as DeepSeek-V2 did; here a group is always scored
by its two best, with or without a bias, as V3 and transformers' DeepseekV3TopkRouter do.)
"""

from __future__ import annotations

import torch

from course_lib.core.validation import boundary
from course_lib.moe import arguments


@boundary(arguments.affinity_scores)
def affinity_scores(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Sigmoid affinities of every token to every routed expert: sigmoid(x @ centroids^T).

    x: [..., dim]; centroids: [n_experts, dim] -> [..., n_experts], each in [0, 1]. Raises TypeError for
    tensors that are not floating point, ValueError for mismatched or empty shapes and NaN or inf values.
    """
    return torch.sigmoid(x @ centroids.T)


@boundary(arguments.group_limit)
def group_limit(choice: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Mask with -inf the experts outside each token's ``topk_groups`` best groups.

    choice: [tokens, n_experts] biased scores -> [tokens, n_experts]. A group's score is the sum of its two
    highest biased scores (its one score when a group holds a single expert). -inf, not 0: biased scores can be
    negative, and a 0 would then beat experts of the kept groups. Raises TypeError for a choice that is not a
    floating-point tensor, ValueError for one not 2-D or impossible group settings.
    """
    tokens, n_experts = choice.shape
    grouped = choice.view(tokens, n_groups, n_experts // n_groups)  # [tokens, n_groups, group_size]
    group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)  # [tokens, n_groups]
    kept = group_scores.topk(topk_groups, dim=-1).indices  # [tokens, topk_groups]
    dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter(1, kept, False)  # [tokens, n_groups]
    return grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).view(tokens, n_experts)


@boundary(arguments.topk_route)
def topk_route(
    scores: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    n_groups: int = 1,
    topk_groups: int = 1,
    route_scale: float = 1.0,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose k experts per token and their gate weights, as DeepSeek-V3's router does.

    scores: [tokens, n_experts] affinities (already sigmoid, so >= 0); bias: [n_experts] or None.
    Returns (weights [tokens, k] in the dtype of ``scores``, indices [tokens, k] int64). The experts are chosen
    by ``scores + bias`` (group-limited when ``n_groups > 1``), listed by decreasing biased score; the weights
    are the UNBIASED scores of the chosen experts divided by their sum (so they sum to 1 per token), times
    ``route_scale``. Gradients flow from the weights to ``scores``, never to ``bias``.

    ``indices`` [tokens, k] int64, when given, are the experts to use instead of the router's own choice (bias
    and groups then play no part), with the weights computed as above from ``scores``: routing replay, what
    [V32] 3.1 calls "Keep Routing" (the experts chosen while sampling kept in the training forward,
    ``post_training.routing_replay``).

    Raises TypeError for scores or a bias that are not floating-point tensors, ValueError for scores that are
    empty, not 2-D, NaN, infinite or negative, a bias of the wrong shape or not finite, a route_scale that is
    not a finite number > 0, impossible k / group settings (``arguments.check_route_config``), and indices
    that are not integer [tokens, k] expert ids.
    """
    if indices is None:
        choice = scores.detach()
        if bias is not None:
            choice = choice + bias.detach().to(scores.device)
        if n_groups > 1:
            choice = group_limit(choice, n_groups, topk_groups)
        indices = choice.topk(k, dim=-1).indices  # [tokens, k], by decreasing biased score
    chosen = scores.gather(1, indices)  # [tokens, k] unbiased
    weights = chosen / chosen.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return weights * route_scale, indices
