"""Routing under RL: the experts chosen while sampling, those chosen in the training forward of the same tokens,
and replaying the first in the second ([V32] 3.1, "Keep Routing", used since DeepSeek-V3-0324).

An MoE policy's log-probabilities depend on which experts each token was sent to. The sampling pass (incremental,
with the KV cache, before the update) and the training forward (whole sequences, after zero or more updates of the
same batch) can route a token differently: float rounding differs between the two passes, and every update moves
the router's centroids and the hidden states. A token whose experts flip gets its log-probability from another
sub-network than the one that sampled it, so rho = pi_theta / pi_old measures the flip as well as the policy's
change; [V32] reports that keeping the sampled routing stabilises large-scale RL.

- ``routing_of``: the experts each MoE layer chose in the model's last forward.
- ``router_choice``: the experts each MoE layer's router would have chosen in the last forward (its own top-k of the
  scores, also when the forward replayed another routing).
- ``routing_disagreement``: the share of (layer, position) whose set of chosen experts differs between two routings.
- ``replay_routing``: a context manager under which the model's MoE layers use a recorded routing
  (``DeepSeekMoE.replay_indices``; gate weights still come from the current scores, so the router keeps learning).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from course_lib.core.validation import boundary
from course_lib.model.tiny import TinyDeepSeek
from course_lib.moe.routing import topk_route
from course_lib.post_training import arguments


def routing_of(model: TinyDeepSeek) -> list[torch.Tensor]:
    """The experts each MoE layer of ``model`` chose in its last forward: one int64 [..., top_k] per layer, first
    to last (on the CPU). Raises ValueError when the model has not run a forward yet."""
    chosen = [layer.last_indices for layer in model.moe_layers()]
    if any(indices is None for indices in chosen):
        raise ValueError("the model has not routed any token yet: run a forward first")
    return [indices.cpu() for indices in chosen]


def router_choice(model: TinyDeepSeek) -> list[torch.Tensor]:
    """The experts each MoE layer's router chooses for the tokens of the model's last forward (``topk_route`` on the
    layer's ``last_scores`` with its bias): the same as ``routing_of`` after a free forward, the router's own
    choice after a replayed one. One int64 [..., top_k] per layer, on the CPU. Raises ValueError before a forward."""
    if any(layer.last_scores is None for layer in model.moe_layers()):
        raise ValueError("the model has not routed any token yet: run a forward first")
    chosen = []
    for layer in model.moe_layers():
        scores = layer.last_scores.detach()
        flat = scores.reshape(-1, layer.n_routed_experts)  # [tokens, n_routed]
        indices = topk_route(flat, layer.top_k, layer.bias, layer.n_groups, layer.topk_groups, layer.route_scale)[1]
        chosen.append(indices.view(*scores.shape[:-1], layer.top_k).cpu())
    return chosen


@boundary(arguments.routing_disagreement)
def routing_disagreement(first: list[torch.Tensor], second: list[torch.Tensor],
                         mask: torch.Tensor | None = None) -> float:
    """The share of (layer, position) routings whose SET of chosen experts differs between two routings.

    first, second: one int64 [B, L, top_k] per MoE layer (``Rollout.routing``, ``routing_of``); mask: bool [B, L],
    the positions to count (all when None). Order within a token's top-k does not matter. Returns a float in [0, 1].
    Raises TypeError / ValueError for lists of different lengths or shapes, or a mask of another shape or empty.
    """
    differs = torch.stack([(a.sort(dim=-1).values != b.sort(dim=-1).values).any(dim=-1)
                           for a, b in zip(first, second)])  # [layers, B, L]
    if mask is None:
        return differs.float().mean().item()
    return differs[:, mask].float().mean().item()


@contextmanager
def replay_routing(model: TinyDeepSeek, routing: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, every MoE layer of ``model`` routes each token to the experts recorded in ``routing`` (one
    int64 [B, L, top_k] per layer, e.g. ``Rollout.routing``) instead of its own top-k; forwards must read tokens
    [B, L]. Afterwards the layers route by themselves again (also when the block raises). Raises TypeError /
    ValueError (``arguments.replay_routing``) for a routing of another number of layers, top_k or expert range.
    """
    arguments.replay_routing(model, routing)
    layers = model.moe_layers()
    try:
        for layer, indices in zip(layers, routing):
            layer.replay_indices = indices
        yield
    finally:
        for layer in layers:
            layer.replay_indices = None
