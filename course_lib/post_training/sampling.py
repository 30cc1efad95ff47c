"""Sampling groups of completions for GRPO, batched with the KV cache, and the log-probabilities of their tokens.

``sample_groups`` repeats each of n_prompts prompts G times and decodes all n = n_prompts * G rows at once: one
forward of the prompts fills the model's KV cache (``TinyDeepSeek.new_cache(n)``), then one forward of one token per
row per step, each token drawn by ``tiny.sample_next`` (the sampling step of ``TinyDeepSeek.generate``). It keeps
what GRPO needs afterwards: the completions and their mask (up to and including the first stop token), the
log-probabilities of the sampled tokens under the sampling policy (``old_logp``), and the experts each MoE layer
chose for every position read (for routing replay, ``routing_replay``). ``completion_log_probs`` is the training
forward: the whole sequences at once, with gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.core.runtime import eval_mode
from course_lib.core.validation import boundary
from course_lib.model.tiny import TinyDeepSeek, sample_next
from course_lib.post_training import arguments


@dataclass
class Rollout:
    """A batch of sampled groups. n = n_prompts * G rows, prompt p's outputs in rows p * G .. p * G + G - 1.

    tokens: int64 [n, P + T] prompt and completion; completion: int64 [n, T] (tokens[:, P:]); mask: bool [n, T],
    True up to and including each row's first stop token (all T when it never stops); old_logp: float32 [n, T]
    log pi_old of the sampled tokens; routing: one int64 [n, P + T - 1, top_k] per MoE layer, the experts chosen
    for each position the model read while sampling (the last token is never read).
    """

    tokens: torch.Tensor
    prompt_len: int
    group_size: int
    mask: torch.Tensor
    old_logp: torch.Tensor
    routing: list[torch.Tensor]

    @property
    def completion(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_len:]

    def __repr__(self) -> str:
        n, T = self.mask.shape
        return (f"Rollout({n // self.group_size} prompts x G={self.group_size}, prompt {self.prompt_len} + up to {T} "
                f"tokens, {int(self.mask.sum())} completion tokens, routing of {len(self.routing)} MoE layers)")


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in float32: logits [..., V], targets int64 [...] -> [...]. The one formula of
    a token's log-probability that sampling (old_logp) and training (logp) share."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)


@torch.no_grad()
@boundary(arguments.sample_groups)
def sample_groups(model: TinyDeepSeek, prompts: torch.Tensor, group_size: int, max_new_tokens: int,
                  stop_token: int | None = None, generator: torch.Generator | None = None) -> Rollout:
    """Sample ``group_size`` completions of each prompt from the model (temperature 1: the policy itself).

    prompts: int64 [n_prompts, P] (all of one length P) -> a ``Rollout`` of n = n_prompts * group_size rows and
    T = max_new_tokens completion tokens (fewer when every row has produced ``stop_token``). ``generator``: a CPU
    torch.Generator for repeatable samples. Raises TypeError / ValueError (``arguments.sample_groups``) for
    prompts that are not int64 [n_prompts >= 1, P >= 1] in the vocabulary, a group_size < 1, max_new_tokens < 1,
    P + max_new_tokens beyond the model's context, or a stop token outside the vocabulary.
    """
    device = next(model.parameters()).device
    tokens = prompts.to(device).repeat_interleave(group_size, dim=0)  # [n, P]
    n, prompt_len = tokens.shape
    cache, new = model.new_cache(n), tokens
    logps, routing = [], [[] for _ in model.moe_layers()]
    done = torch.zeros(n, dtype=torch.bool)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            logits = model(new, cache)[:, -1].float().cpu()  # [n, vocab]
            for layer, chosen in zip(model.moe_layers(), routing):
                chosen.append(layer.last_indices.cpu())  # [n, new positions, top_k]
            choice = sample_next(logits, 1.0, None, generator)  # [n, 1]
            logps.append(token_log_probs(logits, choice[:, 0]))
            new = choice.to(device)
            tokens = torch.cat([tokens, new], dim=1)
            if stop_token is not None:
                done |= choice[:, 0] == stop_token
                if bool(done.all()):
                    break
    completion = tokens[:, prompt_len:].cpu()  # [n, T]
    if stop_token is None:
        mask = torch.ones_like(completion, dtype=torch.bool)
    else:  # True up to and including the first stop token
        stops = (completion == stop_token).long()
        mask = (stops.cumsum(dim=1) - stops) == 0
    return Rollout(tokens.cpu(), prompt_len, group_size, mask, torch.stack(logps, dim=1),
                   [torch.cat(chosen, dim=1) for chosen in routing])


@boundary(arguments.completion_log_probs)
def completion_log_probs(model: TinyDeepSeek, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The training forward: log pi(completion tokens) of whole sequences, with gradient.

    tokens: int64 [n, P + T] (a Rollout's) -> float32 [n, T]: column t is log pi(tokens[:, P + t] | tokens[:, :P + t]).
    The model reads tokens[:, :-1] in one forward; its MoE layers route each position as they do now (or replay a
    recorded routing, ``routing_replay.replay_routing``). Raises TypeError / ValueError for tokens that the model
    cannot read and a prompt_len outside [1, P + T - 1].
    """
    device = next(model.parameters()).device
    tokens = tokens.to(device)
    logits = model(tokens[:, :-1])  # [n, P + T - 1, vocab]
    return token_log_probs(logits[:, prompt_len - 1:], tokens[:, prompt_len:]).cpu()
