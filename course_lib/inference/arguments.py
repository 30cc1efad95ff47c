"""The checks of the decoders' boundaries (``speculative``), one validator per decorated function, named after it.

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
