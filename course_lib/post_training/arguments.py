"""The checks of the post-training area's boundaries (``core.validation.boundary``): one validator per boundary,
named after it, taking the boundary's parameters by name. TypeError for a wrong type, ValueError for a wrong value
(``NonFiniteError``, a ValueError, for NaN or inf), with a message naming the argument, what was expected and what
was given. The mechanism modules (``grpo``, ``sampling``, ``rewards``, ``routing_replay``, ``loop``) hold the
computations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from course_lib.core.validation import NonFiniteError, check_int, check_number


def check_float_tensor(name: str, t: Any, layout: str) -> None:
    """Raise TypeError unless ``t`` is a floating-point tensor (``layout`` says the expected shape)."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor {layout}, got {t!r:.80}")


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise NonFiniteError when ``t`` holds NaN or inf (one read-back to the host)."""
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{name} contains NaN or inf")


# --------------------------------------------------------------------------------------------- grpo
def group_advantages(rewards: Any, eps: Any) -> None:
    check_float_tensor("rewards", rewards, "[n_prompts, G]")
    if rewards.dim() != 2 or rewards.numel() == 0:
        raise ValueError(f"rewards must be a non-empty [n_prompts, G] (one row per prompt's group), got shape "
                         f"{list(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"groups of G = {rewards.shape[1]} output: the std of a group needs G >= 2 outputs "
                         f"(GRPO's baseline is the mean of the OTHER outputs of the same prompt)")
    check_finite("rewards", rewards)
    check_number("eps", eps, 0, strict=True)


def kl_estimator(logp: Any, ref_logp: Any) -> None:
    check_float_tensor("logp", logp, "[...] of log-probabilities")
    check_float_tensor("ref_logp", ref_logp, "[...] of log-probabilities")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must have the same shape (the same tokens), got {list(logp.shape)} and "
                         f"{list(ref_logp.shape)}")
    check_finite("logp", logp)
    check_finite("ref_logp", ref_logp)


def grpo_loss(logp: Any, old_logp: Any, ref_logp: Any, advantages: Any, mask: Any, clip_eps: Any,
              beta: Any) -> None:
    check_number("clip_eps", clip_eps, 0, strict=True)
    check_number("beta", beta, 0)
    for name, t in (("logp", logp), ("old_logp", old_logp), ("ref_logp", ref_logp)):
        check_float_tensor(name, t, "[n, T] (per-token log-probabilities of the completions)")
    if logp.dim() != 2 or logp.numel() == 0:
        raise ValueError(f"logp must be a non-empty [n, T] (n completions of T tokens), got shape {list(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t.shape != logp.shape:
            raise ValueError(f"{name} must have logp's shape {list(logp.shape)}, got {list(t.shape)}")
    check_float_tensor("advantages", advantages, f"[n] = [{logp.shape[0]}]")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [n] = [{logp.shape[0]}] (one per completion; flatten the [n_prompts, "
                         f"G] of group_advantages), got {list(advantages.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor [n, T] (True on each completion's tokens), got {mask!r:.80}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask must have logp's shape {list(logp.shape)}, got {list(mask.shape)}")
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"completion(s) {empty[:5]} have no token in the mask: each completion's tokens are "
                         f"averaged (1/|o_i|), which needs |o_i| >= 1")
    for name, t in (("logp", logp), ("old_logp", old_logp), ("ref_logp", ref_logp), ("advantages", advantages)):
        check_finite(name, t)


# --------------------------------------------------------------------------------------------- sampling
def check_model(model: Any) -> None:
    from course_lib.model.tiny import TinyDeepSeek

    if not isinstance(model, TinyDeepSeek):
        raise TypeError(f"model must be a TinyDeepSeek, got {type(model).__name__}")


def sample_groups(model: Any, prompts: Any, group_size: Any, max_new_tokens: Any, stop_token: Any,
                  generator: Any) -> None:
    from course_lib.model.arguments import check_tokens

    check_model(model)
    check_tokens(model, prompts, what="prompt token ids")
    check_int("group_size", group_size, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    if prompts.shape[1] + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompts of {prompts.shape[1]} tokens + max_new_tokens={max_new_tokens} exceed the model's "
                         f"context max_seq_len={model.config.max_seq_len}")
    if stop_token is not None and not 0 <= check_int("stop_token", stop_token) < model.config.vocab_size:
        raise ValueError(f"stop_token must be a token id in [0, {model.config.vocab_size}), got {stop_token}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (on the CPU) or None, got {type(generator).__name__}")


def completion_log_probs(model: Any, tokens: Any, prompt_len: Any) -> None:
    from course_lib.model.arguments import check_tokens

    check_model(model)
    check_tokens(model, tokens, windows=True)
    if not 1 <= check_int("prompt_len", prompt_len) < tokens.shape[1]:
        raise ValueError(f"prompt_len must lie in [1, {tokens.shape[1] - 1}] (at least one prompt token and one "
                         f"completion token), got {prompt_len}")


# --------------------------------------------------------------------------------------------- routing replay
def check_routing(name: str, routing: Any) -> None:
    """Raise unless ``routing`` is a non-empty list of integer tensors [B, L, top_k]."""
    if not isinstance(routing, Sequence) or not routing or not all(
            isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dtype != torch.bool for t in routing):
        raise TypeError(f"{name} must be a non-empty list of int64 tensors [B, L, top_k], one per MoE layer, got "
                        f"{routing!r:.80}")
    if any(t.dim() != 3 for t in routing):
        raise ValueError(f"{name} must hold tensors [B, L, top_k], got shapes {[list(t.shape) for t in routing]}")


def routing_disagreement(first: Any, second: Any, mask: Any) -> None:
    check_routing("first", first)
    check_routing("second", second)
    if len(first) != len(second) or any(a.shape != b.shape for a, b in zip(first, second)):
        raise ValueError(f"first and second must route the same tokens in the same layers, got shapes "
                         f"{[list(t.shape) for t in first]} and {[list(t.shape) for t in second]}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor [B, L] or None, got {mask!r:.80}")
        if mask.shape != first[0].shape[:2] or not bool(mask.any()):
            raise ValueError(f"mask must be a bool [B, L] = {list(first[0].shape[:2])} with at least one True, got "
                             f"shape {list(mask.shape)}")


def replay_routing(model: Any, routing: Any) -> None:
    """``routing_replay.replay_routing`` (a context manager, so called directly rather than as a boundary)."""
    check_model(model)
    check_routing("routing", routing)
    layers = model.moe_layers()
    if len(routing) != len(layers):
        raise ValueError(f"routing holds {len(routing)} layers' experts, the model has {len(layers)} MoE layers")
    top_k, n_experts = model.config.top_k, model.config.n_routed_experts
    for t in routing:
        if t.shape[-1] != top_k:
            raise ValueError(f"routing must choose top_k={top_k} experts per token, got shape {list(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_experts):
            raise ValueError(f"routing's expert ids must lie in [0, {n_experts}), got {int(t.min())}..{int(t.max())}")


# --------------------------------------------------------------------------------------------- rewards
def sorting_examples(n: Any, word_len: Any, seed: Any, exclude: Any) -> None:
    check_int("n", n, 1)
    check_int("word_len", word_len, 1)
    check_int("seed", seed)
    if not isinstance(exclude, (set, frozenset, list, tuple, dict)):
        raise TypeError(f"exclude must be a collection of words, got {type(exclude).__name__}")
    available = 26 ** word_len - len(set(exclude))
    if n > available:
        raise ValueError(f"n={n} distinct words of {word_len} letters asked, only {available} exist outside exclude")


def group_rewards(rollout: Any, answers: Any, tokenizer: Any) -> None:
    from course_lib.post_training.sampling import Rollout
    from course_lib.training.data import CharTokenizer

    if not isinstance(rollout, Rollout):
        raise TypeError(f"rollout must be a Rollout (from sample_groups), got {type(rollout).__name__}")
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer must be a CharTokenizer, got {type(tokenizer).__name__}")
    n_prompts = rollout.tokens.shape[0] // rollout.group_size
    if isinstance(answers, str) or not isinstance(answers, Sequence) or not all(isinstance(a, str) for a in answers):
        raise TypeError(f"answers must be a list of strings, one per prompt, got {answers!r:.80}")
    if len(answers) != n_prompts:
        raise ValueError(f"answers must hold one string per prompt ({n_prompts}), got {len(answers)}")


# --------------------------------------------------------------------------------------------- the loop
def grpo_config(config: Any) -> None:
    """``GRPOConfig``'s fields (its ``__post_init__``)."""
    for name in ("steps", "prompts_per_step", "group_size", "updates_per_batch", "max_new_tokens"):
        check_int(name, getattr(config, name), 1)
    if config.group_size < 2:
        raise ValueError(f"group_size must be >= 2 (the group's std needs two outputs), got {config.group_size}")
    check_number("lr", config.lr, 0, strict=True)
    check_number("clip_eps", config.clip_eps, 0, strict=True)
    check_number("beta", config.beta, 0)
    check_number("grad_clip", config.grad_clip, 0, strict=True)
    if not isinstance(config.replay, bool):
        raise TypeError(f"replay must be True or False, got {config.replay!r}")
    check_int("seed", config.seed)


def grpo_train(policy: Any, examples: Any, tokenizer: Any, cfg: Any, progress: Any) -> None:
    from course_lib.post_training.loop import GRPOConfig
    from course_lib.training.data import CharTokenizer

    check_model(policy)
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"tokenizer must be a CharTokenizer, got {type(tokenizer).__name__}")
    if not isinstance(cfg, GRPOConfig):
        raise TypeError(f"cfg must be a GRPOConfig, got {type(cfg).__name__}")
    if not isinstance(examples, Sequence) or not examples or not all(
            isinstance(e, tuple) and len(e) == 2 and all(isinstance(s, str) for s in e) for e in examples):
        raise TypeError(f"examples must be a non-empty list of (prompt, answer) string pairs, got {examples!r:.80}")
    lengths = {len(prompt) for prompt, _ in examples}
    if len(lengths) > 1:
        raise ValueError(f"every prompt must have the same length (groups decode in one batch), got {sorted(lengths)}")
    if cfg.prompts_per_step > len(examples):
        raise ValueError(f"cfg.prompts_per_step={cfg.prompts_per_step} exceeds the {len(examples)} examples")
