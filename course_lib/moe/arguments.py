"""The checks of the MoE area's boundaries (``core.validation.boundary``): one validator per boundary, named after
it, taking the boundary's parameters by name. Each raises TypeError for a wrong type and ValueError for a wrong
value (``NonFiniteError``, a ValueError, for NaN or inf in a user's tensor), with a message that names the
argument, what was expected and what was given. The mechanism modules (``routing``, ``balance``, ``dispatch``,
``layer``, ``toy``) hold the computations; a call from inside another boundary skips these checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from course_lib.core.validation import NonFiniteError, check_int, check_number


# --------------------------------------------------------------------------------------------- configuration
def check_route_config(n_experts: int, k: int, n_groups: int = 1, topk_groups: int = 1) -> None:
    """Raise ValueError/TypeError unless top-k of ``n_experts`` over ``topk_groups`` of ``n_groups`` groups is
    possible (``topk_route``, the MoE layer's constructor and the model's config)."""
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


def check_finite(name: str, t: torch.Tensor, message: str) -> None:
    """Raise NonFiniteError(``name`` + message) when ``t`` holds NaN or inf (one read-back to the host)."""
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{name} {message}")


def check_integer_tensor(name: str, t: object, layout: str) -> None:
    """Raise TypeError unless ``t`` is an integer (not bool) tensor of expert ids."""
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor {layout}of expert ids (e.g. int64 from topk), got {t!r:.80}")


def check_expert_ids(indices: torch.Tensor, n_experts: int) -> None:
    """Raise ValueError unless every id of ``indices`` lies in [0, n_experts) (one read-back to the host)."""
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_experts):
        raise ValueError(f"indices must lie in [0, {n_experts - 1}], got values from {int(indices.min())} to "
                         f"{int(indices.max())}")


def check_affinities(scores: torch.Tensor) -> None:
    """Raise unless ``scores`` are finite affinities >= 0 (one read-back to the host when they are)."""
    if not bool(((scores >= 0) & (scores < float("inf"))).all()):  # one check (one device sync) for all kinds
        if torch.isnan(scores).any():
            raise NonFiniteError("scores contain NaN: check the hidden states and centroids that produced them")
        if torch.isinf(scores).any():
            raise NonFiniteError("scores contain inf: affinities are finite sigmoid outputs in [0, 1]")
        raise ValueError("scores must be affinities >= 0 (sigmoid outputs); got negative values: apply sigmoid first")


# --------------------------------------------------------------------------------------------- routing
def affinity_scores(x: torch.Tensor, centroids: torch.Tensor) -> None:
    for name, t in (("x", x), ("centroids", centroids)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch tensor, got {t!r:.80}")
    if centroids.dim() != 2 or centroids.numel() == 0:
        raise ValueError(f"centroids must be a non-empty [n_experts, dim], got shape {list(centroids.shape)}")
    if x.dim() < 1 or x.shape[-1] != centroids.shape[1]:
        raise ValueError(f"x must be [..., {centroids.shape[1]}] to match centroids [n_experts, "
                         f"{centroids.shape[1]}], got shape {list(x.shape)}")
    for name, t in (("x", x), ("centroids", centroids)):
        check_finite(name, t, "contains NaN or inf: affinities need finite hidden states and centroids")


def group_limit(choice: torch.Tensor, n_groups: int, topk_groups: int) -> None:
    if not isinstance(choice, torch.Tensor) or not choice.is_floating_point():
        raise TypeError(f"choice must be a floating-point tensor [tokens, n_experts], got {choice!r:.80}")
    if choice.dim() != 2:
        raise ValueError(f"choice must be [tokens, n_experts], got shape {list(choice.shape)}")
    check_route_config(choice.shape[1], 1, n_groups, topk_groups)


def topk_route(scores: torch.Tensor, k: int, bias: torch.Tensor | None, n_groups: int, topk_groups: int,
               route_scale: float, indices: torch.Tensor | None = None) -> None:
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
    check_affinities(scores)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (n_experts,):
            shape = list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape [{n_experts}] (one per expert), got {shape}")
        if not bias.is_floating_point():
            raise TypeError(f"bias must be a floating-point tensor (float32), got {bias.dtype}")
        check_finite("bias", bias, "contains NaN or inf: every expert's bias must be a finite number")
    if indices is not None:
        check_integer_tensor("indices", indices, f"[{tokens}, {k}] ")
        if indices.shape != (tokens, k):
            raise ValueError(f"indices (the experts to replay) must be [tokens, k] = [{tokens}, {k}], got shape "
                             f"{list(indices.shape)}")
        check_expert_ids(indices, n_experts)


# --------------------------------------------------------------------------------------------- balance
def expert_load(indices: torch.Tensor, n_experts: int) -> None:
    check_int("n_experts", n_experts, 1)
    check_integer_tensor("indices", indices, "")
    check_expert_ids(indices, n_experts)


def max_violation(load: torch.Tensor) -> None:
    if not isinstance(load, torch.Tensor) or load.dim() != 1 or load.numel() == 0:
        raise ValueError(f"load must be a non-empty 1-D tensor [n_experts], got {load!r:.80}")
    counts = load.detach().double()
    if not bool(((counts >= 0) & (counts < float("inf"))).all()):
        raise ValueError(f"load must hold finite counts >= 0, got {counts.tolist()[:8]}")
    if not counts.mean() > 0:
        raise ValueError(f"the mean load is {float(counts.mean())}: MaxVio needs at least one assignment (a positive "
                         f"mean)")


def update_bias(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> None:
    if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or bias.numel() == 0:
        raise ValueError(f"bias must be a non-empty 1-D tensor [n_experts], got {bias!r:.80}")
    if not bias.is_floating_point():
        raise TypeError(f"bias must be a floating-point tensor (float32): a {bias.dtype} bias would round every "
                        f"step of gamma to 0")
    if not isinstance(load, torch.Tensor) or load.shape != bias.shape:
        shape = list(load.shape) if isinstance(load, torch.Tensor) else type(load).__name__
        raise ValueError(f"load must have the shape of bias {list(bias.shape)}, got {shape}")
    check_number("gamma", gamma, 0)
    counts = load.detach().float()
    if not bool(((counts >= 0) & (counts < float("inf"))).all()):
        raise ValueError(f"load must hold finite counts >= 0 (assignments per expert), got {counts.tolist()}")


def _balance_loss_inputs(scores: torch.Tensor, k: int, alpha: float, dims: int, layout: str) -> None:
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


def balance_loss(scores: torch.Tensor, k: int, alpha: float) -> None:
    _balance_loss_inputs(scores, k, alpha, 2, "[tokens, n_experts]")


def sequence_balance_loss(scores: torch.Tensor, k: int, alpha: float) -> None:
    _balance_loss_inputs(scores, k, alpha, 3, "[batch, T, n_experts]")


# --------------------------------------------------------------------------------------------- dispatch
def routed_experts(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, w_gate: torch.Tensor,
                   w_up: torch.Tensor, w_down: torch.Tensor, load: torch.Tensor, implementation: str,
                   linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    from course_lib.moe.dispatch import IMPLEMENTATIONS, grouped_mm_available  # dispatch imports this module

    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation != "grouped_mm":
        return
    if linear is not F.linear:
        raise ValueError("implementation='grouped_mm' computes plain products: it cannot use another linear")
    if not grouped_mm_available(x, w_gate, w_down):
        raise ValueError(f"torch._grouped_mm cannot run this layer here (torch {torch.__version__}, device "
                         f"{x.device}, dtype {x.dtype}, dim {x.shape[-1]}, expert_dim {w_gate.shape[1]}): it needs "
                         f"a float16/bfloat16/float32 build that supports it and rows of a multiple of 16 bytes; "
                         f"use implementation='loop' or 'auto'")


# --------------------------------------------------------------------------------------------- the layer
def deepseek_moe(dim: int, expert_dim: int, n_routed_experts: int, n_shared_experts: int, top_k: int,
                 n_groups: int, topk_groups: int, route_scale: float) -> None:
    """The constructor's sizes (``layer.DeepSeekMoE``)."""
    check_route_config(n_routed_experts, top_k, n_groups, topk_groups)
    check_route_scale(route_scale)
    check_int("dim", dim, 1)
    check_int("expert_dim", expert_dim, 1)
    check_int("n_shared_experts", n_shared_experts, 0)


def moe_forward(self: Any, x: torch.Tensor) -> None:
    """The hidden states a user gives an MoE layer's forward (``DeepSeekMoE`` and its expert-parallel part)."""
    name = type(self).__name__
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor [..., {self.dim}], got {x!r:.80}")
    if x.dim() < 1 or x.shape[-1] != self.dim or x.numel() == 0:
        raise ValueError(f"{name} expects a non-empty tensor [..., {self.dim}], got shape {list(x.shape)}")
    check_finite(name, x, "got hidden states with NaN or inf: the layers before it diverged")


# --------------------------------------------------------------------------------------------- the toy MoE
def toy_config(config: Any) -> None:
    """The sizes of ``toy.ToyConfig`` (its ``__post_init__``)."""
    for name in ("dim", "expert_dim", "n_experts", "top_k", "n_clusters", "batch_size"):
        check_int(name, getattr(config, name), 1)
    if config.top_k > config.n_experts:
        raise ValueError(f"top_k={config.top_k} exceeds n_experts={config.n_experts}")
    for name in ("noise", "offset", "skew"):
        check_number(name, getattr(config, name), 0)
    check_number("lr", config.lr, 0, strict=True)


def check_toy_config(name: str, config: object) -> None:
    """Raise TypeError unless ``config`` is a ``toy.ToyConfig``."""
    from course_lib.moe.toy import ToyConfig  # toy imports this module

    if not isinstance(config, ToyConfig):
        raise TypeError(f"{name} needs a ToyConfig, got {type(config).__name__}")


def cluster_task(self: Any, config: Any, seed: int) -> None:
    check_toy_config("ClusterTask", config)


def sample(self: Any, n_tokens: int, generator: torch.Generator) -> None:
    """``toy.ClusterTask.sample``."""
    check_int("n_tokens", n_tokens)
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens}")


def make_toy_moe(config: Any, task: Any, seed: int) -> None:
    from course_lib.moe.toy import ClusterTask, ToyConfig  # toy imports this module

    if not isinstance(config, ToyConfig) or not isinstance(task, ClusterTask):
        raise TypeError(f"make_toy_moe(config: ToyConfig, task: ClusterTask), got {type(config).__name__}, "
                        f"{type(task).__name__}")


def train_toy_moe(mode: str, steps: int, alpha: float, gamma: float, seed: int, config: Any, n_eval_tokens: int,
                  device: str | torch.device) -> None:
    from course_lib.moe.balance import BALANCE_MODES  # balance imports this module

    if mode not in BALANCE_MODES:
        raise ValueError(f"mode must be one of {BALANCE_MODES}, got {mode!r}")
    check_int("steps", steps, 1)
    check_number("alpha", alpha, 0)
    check_number("gamma", gamma, 0)
    check_int("n_eval_tokens", n_eval_tokens, 1)
    from course_lib.moe.toy import ToyConfig

    if not isinstance(config, ToyConfig):
        raise TypeError(f"config must be a ToyConfig, got {type(config).__name__}")


def smooth(values: torch.Tensor, window: int) -> None:
    check_int("window", window)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"smooth expects a tensor [steps], got {values!r:.80}")
    if values.dim() == 1 and values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise ValueError("smooth got NaN or inf values: a running sum would spread them over the whole curve")
    if values.dim() != 1 or window < 1:
        raise ValueError(f"smooth expects a 1-D tensor and window >= 1, got shape {list(values.shape)}, {window}")


def expert_popularity(n_experts: int) -> None:
    check_int("n_experts", n_experts, 1)


def skewed_scores(n_tokens: int, n_experts: int, skew: float, generator: torch.Generator) -> None:
    check_int("n_tokens", n_tokens, 1)
    check_int("n_experts", n_experts, 1)
    check_number("skew", skew)


def simulate_bias_balancing(steps: int, gamma: float, skew: float, n_experts: int, top_k: int, n_tokens: int,
                            seed: int) -> None:
    check_int("steps", steps, 1)
    check_number("gamma", gamma, 0)
    check_number("skew", skew)
    check_int("n_tokens", n_tokens, 1)
    check_int("n_experts", n_experts, 1)
    check_int("top_k", top_k, 1)
    if top_k > n_experts:
        raise ValueError(f"top_k={top_k} exceeds n_experts={n_experts}")
