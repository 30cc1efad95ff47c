"""Hugging Face transformers' DeepSeek-V3 MoE layer holding the weights of a course_lib ``DeepSeekMoE``: the peer
implementation that the cross-check tests and the benchmarks compare with (offline: a config built here, no
download).

Needs transformers (the test extra: ``pip install -e '.[test]'``); importing this module does not.
"""

from __future__ import annotations

from typing import Any

import torch

from course_lib.moe.layer import DeepSeekMoE


def _modeling() -> Any:
    try:
        from transformers.models.deepseek_v3 import modeling_deepseek_v3
    except ImportError as error:
        raise ImportError("the Hugging Face cross-checks need transformers: pip install -e '.[test]'") from error
    return modeling_deepseek_v3


def hf_config(dim: int, expert_dim: int, n_routed_experts: int, top_k: int, n_shared_experts: int,
              n_groups: int = 1, topk_groups: int = 1, route_scale: float = 1.0,
              experts_implementation: str = "eager") -> Any:
    """A ``DeepseekV3Config`` for a standalone MoE layer or router with the course's names mapped to HF's:
    hidden_size = dim, moe_intermediate_size = expert_dim, num_experts_per_tok = top_k, n_group = n_groups,
    topk_group = topk_groups, routed_scaling_factor = route_scale, gate weights normalised over the top-k
    (norm_topk_prob, as [V3] eq. 13). experts_implementation: "eager" (a loop over the experts that received
    tokens) or "grouped_mm" (torch's grouped GEMM)."""
    from transformers import DeepseekV3Config

    config = DeepseekV3Config(
        hidden_size=dim, moe_intermediate_size=expert_dim, n_routed_experts=n_routed_experts,
        num_experts_per_tok=top_k, n_shared_experts=n_shared_experts, n_group=n_groups, topk_group=topk_groups,
        routed_scaling_factor=route_scale, norm_topk_prob=True)
    config._experts_implementation = experts_implementation  # the layer is built standalone, not by from_pretrained
    return config


def hf_moe_like(moe: DeepSeekMoE, experts_implementation: str = "eager") -> torch.nn.Module:
    """transformers' ``DeepseekV3MoE`` with the configuration, weights and bias of ``moe`` (which needs at least
    one shared expert). HF stacks the gate and up projections of the routed experts into one ``gate_up_proj``
    [n_routed, 2 expert_dim, dim]; ours are ``w_gate`` and ``w_up`` [n_routed, expert_dim, dim]."""
    if moe.shared is None:
        raise ValueError("hf_moe_like needs a DeepSeekMoE with n_shared_experts >= 1 (HF's layer always has one)")
    config = hf_config(moe.dim, moe.expert_dim, moe.n_routed_experts, moe.top_k, moe.n_shared_experts, moe.n_groups,
                       moe.topk_groups, moe.route_scale, experts_implementation)
    hf = _modeling().DeepseekV3MoE(config)
    with torch.no_grad():
        hf.gate.weight.copy_(moe.centroids)
        hf.gate.e_score_correction_bias.copy_(moe.bias)
        hf.experts.gate_up_proj.copy_(torch.cat([moe.w_gate, moe.w_up], dim=1))
        hf.experts.down_proj.copy_(moe.w_down)
        hf.shared_experts.gate_proj.weight.copy_(moe.shared.w_gate.weight)
        hf.shared_experts.up_proj.weight.copy_(moe.shared.w_up.weight)
        hf.shared_experts.down_proj.weight.copy_(moe.shared.w_down.weight)
    return hf.to(moe.centroids.device)


def hf_router(config: Any, centroids: torch.Tensor, bias: torch.Tensor) -> torch.nn.Module:
    """transformers' ``DeepseekV3TopkRouter`` of ``config`` (``hf_config``) with our centroids [n_routed, dim] and
    bias [n_routed]."""
    router = _modeling().DeepseekV3TopkRouter(config)
    with torch.no_grad():
        router.weight.copy_(centroids)
        router.e_score_correction_bias.copy_(bias)
    return router
