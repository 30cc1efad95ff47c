"""The DeepSeekMoE layer ([V3] 2.1.2): shared experts, sigmoid-routed experts and the loss-free balancing bias.

    out_t = sum_s FFN_s(u_t) + sum_{i chosen} g_{i,t} FFN_i(u_t)

(the residual u_t + ... belongs to the Transformer block around the layer). Routing is ``routing.topk_route``;
the bias update is ``balance.update_bias``; every expert is a SwiGLU FFN (``layers.swiglu``).

Training loop with auxiliary-loss-free balancing ([V3] 2.1.2, [LF]):

    out = moe(x)                       # training forwards count each expert's load into moe.load
    loss = task_loss(out)              # + optionally alpha * balance.sequence_balance_loss(moe.last_scores, k, ...)
    loss.backward(); optimizer.step()
    moe.update_bias(gamma=0.001)       # once per optimizer step, after all micro-batches; resets moe.load

Routing replay ([V32] 3.1, "Keep Routing"): while ``replay_indices`` holds a tensor [..., top_k] (the experts chosen
for the same tokens in an earlier forward, read from its ``last_indices``), the forward uses those experts instead
of the router's choice, with gate weights from the current scores (``routing.topk_route``'s ``indices``).
``post_training.routing_replay.replay_routing`` sets and clears it around a training forward.

The routing statistics of the last forward (``last_scores``, ``last_weights``, ``last_indices``, ``last_load``)
are kept for plots and for the balance losses: in a training forward ``last_scores`` keeps its gradient, so
``balance.sequence_balance_loss(moe.last_scores, moe.top_k, alpha)`` (input [batch, T, dim]) or
``balance.balance_loss(moe.last_scores.reshape(-1, moe.n_routed_experts), moe.top_k, alpha)`` can be added to
the loss.

Precision: the routing state stays float32 whatever the layer's dtype. ``bias`` and ``load`` are float32 buffers
that ``.to(torch.bfloat16)``, ``.half()`` or ``model.to(dtype)`` do not cast (a bf16 bias cannot take steps of
gamma = 0.001 near 1, and a bf16 count stops at 256), and loading a state_dict keeps them float32. Routing (the
centroid product, sigmoid, top-k and normalisation) runs in float32 even under ``torch.autocast``, as the gate of
DeepSeek-V3's released inference code does ([CODE] inference/model.py ``Gate``: ``linear(x.float(), weight.float())``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.layers import SwiGLU
from course_lib.core.validation import boundary
from course_lib.moe import arguments, balance, dispatch
from course_lib.moe.routing import topk_route

ROUTING_STATE = ("bias", "load")  # float32 buffers whatever the module's dtype


class RoutingStateModule(nn.Module):
    """Base of every layer that holds routing state: float32 buffers ``bias`` and ``load`` [n_routed] that keep
    their dtype and values under every cast (``.to(dtype)``, ``.to(device, dtype)``, ``.half()``, ``.bfloat16()``,
    ``.double()``, ``.type(...)``) and when a state_dict in another dtype is loaded. ``DeepSeekMoE`` registers both
    buffers in its ``__init__`` (its expert-parallel part, ``expert_parallel.layer.ExpertParallelMoE``, is a
    DeepSeekMoE). ``training.step.StepRollback`` finds the routing state to restore through this class.
    """

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's signature)
        """Move or cast the module as nn.Module does, but keep ``bias`` and ``load`` float32 with their values."""
        kept = {name: self._buffers[name] for name in ROUTING_STATE}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after.dtype != torch.float32:
                self._buffers[name] = before.to(device=after.device, dtype=torch.float32)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        """Load as nn.Module does; a bias saved in another dtype is read as float32 (also with ``assign=True``)."""
        key = prefix + "bias"
        if isinstance(state_dict.get(key), torch.Tensor) and state_dict[key].dtype != torch.float32:
            if not state_dict[key].is_floating_point():
                raise TypeError(f"{key} must be a floating-point tensor (float32), got {state_dict[key].dtype}")
            state_dict[key] = state_dict[key].float()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DeepSeekMoE(RoutingStateModule):
    """Shared experts plus ``top_k`` of ``n_routed_experts`` SwiGLU experts per token.

    x: [..., dim] -> [..., dim]. Parameters: ``centroids`` [n_routed, dim] (one e_i per routed expert), the
    routed experts' stacked weights ``w_gate``, ``w_up`` [n_routed, expert_dim, dim] and ``w_down``
    [n_routed, dim, expert_dim], and ``shared`` (one SwiGLU of hidden n_shared * expert_dim, which equals the sum
    of n_shared experts; None when n_shared_experts = 0). Buffers: ``bias`` [n_routed] float32, persistent (saved
    in the state_dict), never trained by gradient; ``load`` [n_routed] float32, the assignments counted by the
    training forwards since the last ``update_bias`` (not saved).
    """

    def __init__(self, dim: int, expert_dim: int, n_routed_experts: int, n_shared_experts: int, top_k: int,
                 n_groups: int = 1, topk_groups: int = 1, route_scale: float = 1.0) -> None:
        arguments.deepseek_moe(dim, expert_dim, n_routed_experts, n_shared_experts, top_k, n_groups, topk_groups,
                               route_scale)
        super().__init__()
        self.dim, self.expert_dim = dim, expert_dim
        self.n_routed_experts, self.n_shared_experts, self.top_k = n_routed_experts, n_shared_experts, top_k
        self.n_groups, self.topk_groups, self.route_scale = n_groups, topk_groups, route_scale
        self.expert_linear = F.linear  # the routed experts' GEMM (precision.linear.to_fp8 swaps in fp8_linear)

        def uniform(*shape: int) -> nn.Parameter:  # nn.Linear's default initialisation, fan_in = shape[-1]
            bound = 1 / math.sqrt(shape[-1])
            return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

        self.centroids = uniform(n_routed_experts, dim)
        self.w_gate = uniform(n_routed_experts, expert_dim, dim)
        self.w_up = uniform(n_routed_experts, expert_dim, dim)
        self.w_down = uniform(n_routed_experts, dim, expert_dim)
        self.shared = SwiGLU(dim, n_shared_experts * expert_dim) if n_shared_experts else None
        self.register_buffer("bias", torch.zeros(n_routed_experts, dtype=torch.float32))
        self.register_buffer("load", torch.zeros(n_routed_experts, dtype=torch.float32), persistent=False)
        self.last_scores: torch.Tensor | None = None  # [..., n_routed] sigmoid affinities (with grad in training)
        self.last_weights: torch.Tensor | None = None  # [..., top_k] gate weights (detached)
        self.last_indices: torch.Tensor | None = None  # [..., top_k] chosen experts, int64
        self.last_load: torch.Tensor | None = None  # [n_routed] float32 assignments of the last forward
        self.replay_indices: torch.Tensor | None = None  # [..., top_k] experts to use instead of the router's choice

    def __getstate__(self) -> dict:
        """For copy.deepcopy and pickle: ``last_scores`` is stored without its autograd graph (a non-leaf tensor
        cannot be deep-copied); the layer itself keeps the graph, so balance losses still get their gradient."""
        state = super().__getstate__()
        if isinstance(state.get("last_scores"), torch.Tensor):
            state["last_scores"] = state["last_scores"].detach()
        return state

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, expert_dim={self.expert_dim}, n_routed_experts={self.n_routed_experts}, "
                f"n_shared_experts={self.n_shared_experts}, top_k={self.top_k}, n_groups={self.n_groups}, "
                f"topk_groups={self.topk_groups}, route_scale={self.route_scale}")

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores and routing of flat tokens. x: [tokens, dim] -> (scores [tokens, n_routed] float32,
        weights [tokens, top_k] float32, indices [tokens, top_k] int64). Float32 also under torch.autocast.
        The experts are ``replay_indices`` (flattened) when set, the router's top-k otherwise."""
        replay = None if self.replay_indices is None else self.replay_indices.reshape(-1, self.top_k).to(x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            scores = torch.sigmoid(F.linear(x.float(), self.centroids.float()))
            weights, indices = topk_route(scores, self.top_k, self.bias, self.n_groups, self.topk_groups,
                                          self.route_scale, indices=replay)
        return scores, weights, indices

    @boundary(arguments.moe_forward)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] -> [..., dim]. Raises TypeError for x that is not a floating-point tensor, ValueError for
        a wrong last dimension, an empty x, or NaN or inf in it (checked where a user calls the layer)."""
        lead = x.shape[:-1]
        if self.replay_indices is not None and self.replay_indices.shape != (*lead, self.top_k):
            raise ValueError(f"replay_indices are {list(self.replay_indices.shape)}, but this forward routes tokens "
                             f"{list(lead)}: replay the routing of the same tokens ([..., top_k={self.top_k}])")
        flat = x.reshape(-1, self.dim)  # [tokens, dim]
        scores, weights, indices = self.route(flat)
        load = balance.expert_load(indices, self.n_routed_experts)  # [n_routed] float32
        if self.training and torch.is_grad_enabled():
            self.load += load
        self.last_scores = scores.view(*lead, -1)
        self.last_weights, self.last_indices = weights.detach().view(*lead, -1), indices.view(*lead, -1)
        self.last_load = load
        if torch.is_autocast_enabled(x.device.type):  # the experts run in the autocast dtype, like the shared ones
            flat = flat.to(torch.get_autocast_dtype(x.device.type))
        out = self.routed_experts(flat, weights.to(flat.dtype), indices, load)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(*lead, self.dim)

    def routed_experts(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                       load: torch.Tensor) -> torch.Tensor:
        """sum over chosen i of g_{i,t} FFN_i(x_t), without a per-token loop (``dispatch.routed_experts``).

        x: [tokens, dim]; weights, indices: [tokens, top_k]; load: [n_routed] assignments per expert ->
        [tokens, dim]. The (token, expert) assignments are sorted by expert and each expert runs once on its
        block of rows: as grouped GEMMs (``torch._grouped_mm``) where this torch build supports them, else by
        the loop over experts that notebook 01 teaches (``dispatch.expert_loop``). The one step that the
        expert-parallel layer (``expert_parallel.layer.ExpertParallelMoE``) does another way: dispatch to the
        ranks holding the experts, local experts, combine.
        """
        return dispatch.routed_experts(x, weights, indices, self.w_gate, self.w_up, self.w_down, load,
                                       linear=self.expert_linear)

    @torch.no_grad()
    def update_bias(self, gamma: float = 0.001, load: torch.Tensor | None = None) -> torch.Tensor:
        """Apply b <- b + gamma * sign(mean(load) - load), then reset the count. Call once per optimizer step.

        load: [n_routed] the assignments to balance; None (the single-process layer) takes the count of this
        layer's training forwards since the last call (``expert_parallel.layer.ExpertParallelMoE`` gives the count
        summed over the ranks). Returns the load that was used ([n_routed] float32, a copy). Raises ValueError for a
        gamma that is not a finite number >= 0 or a load that is not finite (``balance.update_bias``; the bias and
        the count are then left as they were)."""
        used = self.load.clone() if load is None else load
        self.bias.copy_(balance.update_bias(self.bias, used, gamma))
        self.load.zero_()
        return used
