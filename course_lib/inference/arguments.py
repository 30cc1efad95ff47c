"""The checks of the decoders' boundaries (``speculative``) and of serving's (``eplb``, ``expert_placement``,
``serving_costs``), one validator per decorated function, named after it.

Each takes the function's parameters by name and raises TypeError for a wrong type, ValueError for a wrong value
(``core.validation``'s convention). The prompt's ids are read back to the host once, here, at the entry: the
decoding steps feed the model its own tokens.
"""

from __future__ import annotations

import torch

from course_lib.core.validation import check_int, check_number
from course_lib.model import arguments as model_arguments
from course_lib.model.tiny import TinyDeepSeek


def plain_generate(model: TinyDeepSeek, prompt: torch.Tensor, max_new_tokens: int, temperature: float,
                   generator: torch.Generator | None) -> None:
    if not isinstance(model, TinyDeepSeek):
        raise TypeError(f"model must be a TinyDeepSeek, got {type(model).__name__}")
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.int64 or prompt.dim() != 1:
        raise TypeError(f"prompt must be an int64 tensor [T0] of token ids, got {prompt!r:.80}")
    if prompt.numel() == 0:
        raise ValueError("the prompt is empty: give at least one token (the model predicts from a context)")
    check_int("max_new_tokens", max_new_tokens, 1)
    if prompt.numel() + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt ({prompt.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"context max_seq_len={model.config.max_seq_len}")
    model_arguments.check_tokens(model, prompt[None])  # the ids, once: the decoding steps feed the model its own tokens
    check_number("temperature", temperature, 0)  # 0 = greedy


def speculative_generate(model: TinyDeepSeek, prompt: torch.Tensor, max_new_tokens: int, depth: int | None,
                         temperature: float, generator: torch.Generator | None) -> None:
    plain_generate(model, prompt, max_new_tokens, temperature, generator)
    trained = model.config.mtp_depth
    if trained == 0:
        raise ValueError("the model has no MTP modules (mtp_depth=0): nothing can draft. Train with mtp_depth >= 1")
    if depth is not None and not 1 <= check_int("depth (D, drafts per step)", depth) <= trained:
        raise ValueError(f"depth (D, drafts per step) must be an int in [1, {trained}] (the model's trained MTP "
                         f"depths), got {depth!r}")


def accept_greedy(drafts: torch.Tensor, main_tokens: torch.Tensor) -> None:
    if drafts.dim() != 1 or main_tokens.dim() != 1 or main_tokens.shape[0] != drafts.shape[0] + 1:
        raise ValueError(f"expected drafts [d] and main_tokens [d + 1], got {list(drafts.shape)} and "
                         f"{list(main_tokens.shape)}")


def accept_sampled(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None,
                   u: torch.Tensor | None) -> None:
    if (drafts.dim() != 2 or q.dim() != 3 or p.dim() != 3 or list(q.shape[:2]) != list(drafts.shape)
            or list(p.shape[:2]) != [drafts.shape[0], drafts.shape[1] + 1] or q.shape[2] != p.shape[2]):
        raise ValueError(f"expected drafts [B, d], q [B, d, V], p [B, d + 1, V], got {list(drafts.shape)}, "
                         f"{list(q.shape)}, {list(p.shape)}")
    if not (q.is_floating_point() and p.is_floating_point()):
        raise TypeError(f"q and p must be floating-point probabilities, got {q.dtype} and {p.dtype}")
    if u is not None and not (isinstance(u, torch.Tensor) and u.is_floating_point()
                              and list(u.shape) == list(drafts.shape)):
        raise TypeError(f"u must be a float tensor [B, d] = {list(drafts.shape)} of uniforms in [0, 1), "
                        f"got {u!r:.80}")


def check_loads(name: str, load: object, shape: str = "[layers, n_experts]") -> None:
    """Raise TypeError unless ``load`` is a real (integer or floating-point, not bool) tensor, ValueError unless it
    is 2-D (``shape`` names its dimensions in the message) and non-empty, or for a load that is negative, NaN or
    infinite."""
    if not isinstance(load, torch.Tensor) or load.dtype == torch.bool or load.is_complex():
        raise TypeError(f"{name} must be a real tensor of loads (tokens), got {load!r:.80}")
    if load.dim() != 2 or load.numel() == 0:
        raise ValueError(f"{name} must be a non-empty {shape} tensor, got shape {list(load.shape)}")
    values = load.detach().double()
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} must hold finite loads, got NaN or inf")
    if (values < 0).any():
        raise ValueError(f"{name} must hold loads >= 0 (tokens per expert), got {values.min().item():g}")


def check_deployment(n_experts: int, num_replicas: int, num_gpus: int) -> None:
    """Replicas and GPUs: ints >= 1, at least one replica per expert, the same number of replicas on every GPU."""
    check_int("num_replicas", num_replicas, 1)
    check_int("num_gpus", num_gpus, 1)
    if num_replicas < n_experts:
        raise ValueError(f"num_replicas ({num_replicas}) must be >= the number of experts ({n_experts}): every "
                         "expert needs at least one replica")
    if num_replicas % num_gpus:
        raise ValueError(f"num_gpus ({num_gpus}) must divide num_replicas ({num_replicas}): every GPU holds the same "
                         "number of physical experts")


def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_gpus: int) -> None:
    check_loads("weight", weight)
    n_experts = weight.shape[1]
    check_deployment(n_experts, num_replicas, num_gpus)
    check_int("num_groups", num_groups, 1)
    check_int("num_nodes", num_nodes, 1)
    if n_experts % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide the number of experts ({n_experts})")
    if num_gpus % num_nodes:
        raise ValueError(f"num_nodes ({num_nodes}) must divide num_gpus ({num_gpus}): every node has as many GPUs")


def check_phy2log(phy2log: object, num_gpus: int) -> None:
    """phy2log: a 2-D integer tensor [layers, num_replicas] with entries >= 0; num_gpus an int >= 1 dividing
    num_replicas."""
    if not isinstance(phy2log, torch.Tensor) or phy2log.dtype.is_floating_point or phy2log.dtype == torch.bool \
            or phy2log.is_complex():
        raise TypeError(f"phy2log must be an integer tensor [layers, num_replicas], got {phy2log!r:.80}")
    if phy2log.dim() != 2 or phy2log.numel() == 0:
        raise ValueError(f"phy2log must be a non-empty [layers, num_replicas] tensor, got shape {list(phy2log.shape)}")
    if (phy2log < 0).any():
        raise ValueError("phy2log must hold expert ids >= 0 (the logical expert in each slot)")
    check_int("num_gpus", num_gpus, 1)
    if phy2log.shape[1] % num_gpus:
        raise ValueError(f"num_gpus ({num_gpus}) must divide the {phy2log.shape[1]} slots of phy2log: every GPU holds "
                         "the same number of physical experts")


def static_placement(layers: int, n_experts: int, num_gpus: int) -> None:
    check_int("layers", layers, 1)
    check_int("n_experts", n_experts, 1)
    check_deployment(n_experts, n_experts, num_gpus)


def gpu_experts(phy2log: torch.Tensor, num_gpus: int) -> None:
    check_phy2log(phy2log, num_gpus)


def gpu_loads(expert_load: torch.Tensor, phy2log: torch.Tensor, num_gpus: int) -> None:
    check_loads("expert_load", expert_load)
    check_phy2log(phy2log, num_gpus)
    layers, n = expert_load.shape
    if phy2log.shape[0] != layers:
        raise ValueError(f"phy2log has {phy2log.shape[0]} layers, expert_load {layers}")
    if (phy2log >= n).any():
        raise ValueError(f"phy2log must hold expert ids in [0, {n - 1}] (expert_load has {n} experts)")
    held = torch.zeros(layers, n, dtype=torch.bool).scatter_(1, phy2log.long().cpu(), True)
    if not held.all():
        raise ValueError("every expert needs at least one slot in phy2log: an expert with no replica cannot serve "
                         "its tokens")


def imbalance(gpu_load: torch.Tensor) -> None:
    check_loads("gpu_load", gpu_load, "[layers, num_gpus]")
    if (gpu_load.detach().double().sum(dim=-1) == 0).any():
        raise ValueError("gpu_load has a layer with no load at all: max / mean is undefined")


def serving_day(day: object) -> None:
    """``serving_costs.ServingDay``: finite numbers >= 0; nodes, GPUs and throughputs > 0; hits <= input tokens."""
    import dataclasses

    for f in dataclasses.fields(day):
        value = getattr(day, f.name)
        if f.name == "gpus_per_node":
            check_int(f.name, value, 1)
        else:
            check_number(f.name, value, 0, strict=f.name in ("nodes", "prefill_tokens_per_node",
                                                               "decode_tokens_per_node"))
    if day.cache_hit_tokens > day.input_tokens:
        raise ValueError(f"cache_hit_tokens ({day.cache_hit_tokens:g}) cannot exceed input_tokens "
                         f"({day.input_tokens:g})")
    if day.input_tokens == 0:
        raise ValueError("input_tokens must be > 0: a day of serving reads some input")


def check_day(day: object) -> None:
    """Raise TypeError unless ``day`` is a ServingDay (e.g. serving_costs.DAY6)."""
    from course_lib.inference.serving_costs import ServingDay

    if not isinstance(day, ServingDay):
        raise TypeError(f"day must be a ServingDay (e.g. serving_costs.DAY6), got {type(day).__name__}")


def gpu_cost(day: object) -> None:
    check_day(day)


def revenue(day: object) -> None:
    check_day(day)


def cost_profit_margin(day: object) -> None:
    check_day(day)


def nodes_implied(day: object) -> None:
    check_day(day)


def revenue_rounding(day: object, step: float) -> None:
    check_day(day)
    check_number("step", step, 0)


def with_cache_hit_share(day: object, share: float) -> None:
    check_day(day)
    if not 0 <= check_number("share", share) < 1:
        raise ValueError(f"share (of input tokens that hit the cache) must be in [0, 1), got {share}")


def with_decode_speedup(day: object, speedup: float) -> None:
    check_day(day)
    check_number("speedup", speedup, 0, strict=True)


def kv_cache_bytes(kv_lora_rank: int, qk_rope_head_dim: int, fp8: bool, tile: int) -> None:
    check_int("kv_lora_rank", kv_lora_rank, 1)
    check_int("qk_rope_head_dim", qk_rope_head_dim, 1)
    check_int("tile", tile, 1)
    if not isinstance(fp8, bool):
        raise TypeError(f"fp8 must be a bool, got {fp8!r}")
    if fp8 and kv_lora_rank % tile:
        raise ValueError(f"tile ({tile}) must divide kv_lora_rank ({kv_lora_rank}): one scale per tile")


def tokens_cached(memory_bytes: float, bytes_per_token_per_layer: int, n_layers: int) -> None:
    check_number("memory_bytes", memory_bytes, 0)
    check_int("bytes_per_token_per_layer", bytes_per_token_per_layer, 1)
    check_int("n_layers", n_layers, 1)
