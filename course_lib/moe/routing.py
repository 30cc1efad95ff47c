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

from course_lib.core.validation import NonFiniteError, check_int, check_number


def affinity_scores(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Sigmoid affinities of every token to every routed expert: sigmoid(x @ centroids^T).

    x: [..., dim]; centroids: [n_experts, dim] -> [..., n_experts], each in [0, 1]. Raises TypeError for
    tensors that are not floating point, ValueError for mismatched or empty shapes and NaN or inf values.
    """
    for name, t in (("x", x), ("centroids", centroids)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch tensor, got {t!r:.80}")
    if centroids.dim() != 2 or centroids.numel() == 0:
        raise ValueError(f"centroids must be a non-empty [n_experts, dim], got shape {list(centroids.shape)}")
    if x.dim() < 1 or x.shape[-1] != centroids.shape[1]:
        raise ValueError(f"x must be [..., {centroids.shape[1]}] to match centroids [n_experts, "
                         f"{centroids.shape[1]}], got shape {list(x.shape)}")
    for name, t in (("x", x), ("centroids", centroids)):
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{name} contains NaN or inf: affinities need finite hidden states and centroids")
    return torch.sigmoid(x @ centroids.T)


def check_route_config(n_experts: int, k: int, n_groups: int = 1, topk_groups: int = 1) -> None:
    """Raise ValueError/TypeError unless top-k of ``n_experts`` over ``topk_groups`` of ``n_groups`` groups is
    possible (shared by ``topk_route`` and the MoE layer's constructor)."""
    for name, value in (("n_experts", n_experts), ("k", k), ("n_groups", n_groups), ("topk_groups", topk_groups)):
        check_int(name, value, 1)
    if k > n_experts:
        raise ValueError(f"k={k} experts per token, but there are only n_experts={n_experts}: k <= n_experts expected")
    if n_experts % n_groups:
        raise ValueError(f"n_experts={n_experts} must be divisible by n_groups={n_groups}")
    if topk_groups > n_groups:
        raise ValueError(f"topk_groups={topk_groups} exceeds n_groups={n_groups}: at most n_groups groups can be kept")
    kept = topk_groups * (n_experts // n_groups)
    if k > kept:
        raise ValueError(f"k={k} experts per token, but the {topk_groups} kept group(s) hold only {kept} experts "
                         f"({n_experts // n_groups} per group): raise topk_groups or lower k")


def check_route_scale(route_scale: float) -> None:
    """Raise unless ``route_scale`` (the gate multiplier, V3: 2.5) is a finite number > 0."""
    check_number("route_scale (V3: 2.5)", route_scale, 0, strict=True)


def group_limit(choice: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """Mask with -inf the experts outside each token's ``topk_groups`` best groups.

    choice: [tokens, n_experts] biased scores -> [tokens, n_experts]. A group's score is the sum of its two
    highest biased scores (its one score when a group holds a single expert). -inf, not 0: biased scores can be
    negative, and a 0 would then beat experts of the kept groups.
    """
    if not isinstance(choice, torch.Tensor) or not choice.is_floating_point():
        raise TypeError(f"choice must be a floating-point tensor [tokens, n_experts], got {choice!r:.80}")
    if choice.dim() != 2:
        raise ValueError(f"choice must be [tokens, n_experts], got shape {list(choice.shape)}")
    tokens, n_experts = choice.shape
    check_route_config(n_experts, 1, n_groups, topk_groups)
    grouped = choice.view(tokens, n_groups, n_experts // n_groups)  # [tokens, n_groups, group_size]
    group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)  # [tokens, n_groups]
    kept = group_scores.topk(topk_groups, dim=-1).indices  # [tokens, topk_groups]
    dropped = torch.ones_like(group_scores, dtype=torch.bool).scatter(1, kept, False)  # [tokens, n_groups]
    return grouped.masked_fill(dropped.unsqueeze(-1), float("-inf")).view(tokens, n_experts)


def topk_route(
    scores: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    n_groups: int = 1,
    topk_groups: int = 1,
    route_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose k experts per token and their gate weights, as DeepSeek-V3's router does.

    scores: [tokens, n_experts] affinities (already sigmoid, so >= 0); bias: [n_experts] or None.
    Returns (weights [tokens, k] in the dtype of ``scores``, indices [tokens, k] int64). The experts are chosen
    by ``scores + bias`` (group-limited when ``n_groups > 1``), listed by decreasing biased score; the weights
    are the UNBIASED scores of the chosen experts divided by their sum (so they sum to 1 per token), times
    ``route_scale``. Gradients flow from the weights to ``scores``, never to ``bias``.

    Raises TypeError for scores or a bias that are not floating-point tensors, ValueError for scores that are
    empty, not 2-D, NaN, infinite or negative, a bias of the wrong shape or not finite, a route_scale that is
    not a finite number > 0, and impossible k / group settings (``check_route_config``).
    """
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point torch tensor [tokens, n_experts], got {scores!r:.80}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [tokens, n_experts], got shape {list(scores.shape)}; "
                         f"flatten the leading dimensions first (scores.reshape(-1, n_experts))")
    tokens, n_experts = scores.shape
    if tokens == 0 or n_experts == 0:
        raise ValueError(f"scores is empty (shape {list(scores.shape)}): at least one token and one expert expected")
    check_route_config(n_experts, k, n_groups, topk_groups)
    check_route_scale(route_scale)
    if not bool(((scores >= 0) & (scores < float("inf"))).all()):  # one check (one device sync) for all kinds
        if torch.isnan(scores).any():
            raise NonFiniteError("scores contain NaN: check the hidden states and centroids that produced them")
        if torch.isinf(scores).any():
            raise NonFiniteError("scores contain inf: affinities are finite sigmoid outputs in [0, 1]")
        raise ValueError("scores must be affinities >= 0 (sigmoid outputs); got negative values: apply sigmoid first")
    choice = scores.detach()
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (n_experts,):
            shape = list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape [{n_experts}] (one per expert), got {shape}")
        if not bias.is_floating_point():
            raise TypeError(f"bias must be a floating-point tensor (float32), got {bias.dtype}")
        if not bool(torch.isfinite(bias).all()):
            raise NonFiniteError("bias contains NaN or inf: every expert's bias must be a finite number")
        choice = choice + bias.detach().to(scores.device)
    if n_groups > 1:
        choice = group_limit(choice, n_groups, topk_groups)
    indices = choice.topk(k, dim=-1).indices  # [tokens, k], by decreasing biased score
    chosen = scores.gather(1, indices)  # [tokens, k] unbiased
    weights = chosen / chosen.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return weights * route_scale, indices
