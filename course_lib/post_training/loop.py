"""The GRPO loop: sample groups, score them, then update the policy, with the reference model frozen.

One exploration stage ([DSM] 4.2, [V3] 5.2.2):

    rollout    = sample_groups(policy, prompts, G, ...)               # old_logp and the sampled routing too
    rewards    = group_rewards(rollout, answers, tokenizer)           # [n_prompts, G], rule-based
    advantages = group_advantages(rewards).flatten()                  # [n]
    ref_logp   = completion_log_probs(reference, rollout.tokens, P)   # the frozen start, no gradient
    repeat updates_per_batch times:                                   # [DSM]: 1 (then rho = 1 at the update)
        logp = completion_log_probs(policy, rollout.tokens, P)         # under replay_routing when replay=True
        grpo_loss(logp, rollout.old_logp, ref_logp, advantages, rollout.mask, clip_eps, beta).backward(); step

The routing balance bias is left as it is (no bias update during RL). ``GRPOHistory`` records, per stage, the mean
reward, the KL to the reference, the loss, how far the router's own choice in the training forwards is from the
routing sampled (``routing_replay.routing_disagreement``), and the log-probability gap between sampling and the
first training forward (|logp - old_logp|, zero up to rounding when nothing else differs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from course_lib.core.validation import boundary
from course_lib.model.tiny import TinyDeepSeek
from course_lib.post_training import arguments
from course_lib.post_training.grpo import group_advantages, grpo_loss, kl_estimator
from course_lib.post_training.rewards import STOP, group_rewards
from course_lib.post_training.routing_replay import replay_routing, router_choice, routing_disagreement
from course_lib.post_training.sampling import completion_log_probs, sample_groups
from course_lib.training.data import CharTokenizer


@dataclass(frozen=True)
class GRPOConfig:
    """A GRPO run. [DSM] 4.2: beta 0.04, G = 64, lr 1e-6, one update per stage; the tiny model's defaults are
    scaled to a CPU."""

    steps: int = 40  # exploration stages (sample, score, update)
    prompts_per_step: int = 8
    group_size: int = 8  # G
    updates_per_batch: int = 1  # policy updates on each sampled batch
    max_new_tokens: int = 8
    lr: float = 3e-4
    clip_eps: float = 0.2
    beta: float = 0.04  # the KL coefficient
    replay: bool = False  # replay the sampled routing in the training forwards ([V32] "Keep Routing")
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        arguments.grpo_config(self)


@dataclass
class GRPOHistory:
    """Per exploration stage: mean reward of the sampled completions, mean per-token KL estimate to the reference
    (at the last update), the loss of the last update, the routing disagreement (mean over the updates), and the
    mean |logp - old_logp| over the completion tokens at the first update."""

    reward: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    routing_disagreement: list[float] = field(default_factory=list)
    logp_gap: list[float] = field(default_factory=list)

    def __repr__(self) -> str:
        if not self.reward:
            return "GRPOHistory(steps=0)"
        return (f"GRPOHistory(steps={len(self.reward)}, reward {self.reward[0]:.3f} -> {self.reward[-1]:.3f}, "
                f"KL {self.kl[-1]:.4f}, routing disagreement {self.routing_disagreement[-1]:.3f})")


@boundary(arguments.grpo_train)
def grpo_train(policy: TinyDeepSeek, examples: list[tuple[str, str]], tokenizer: CharTokenizer,
               cfg: GRPOConfig = GRPOConfig(), progress: bool = True) -> GRPOHistory:
    """Train ``policy`` in place with GRPO on (prompt, answer) ``examples`` (``rewards.sorting_examples``, all
    prompts of one length); the reference is a frozen copy of the policy as it enters. Each stage draws
    ``prompts_per_step`` examples at random (seeded by ``cfg.seed``). Returns the run's ``GRPOHistory``. Raises
    TypeError / ValueError (``arguments.grpo_train``) for a policy that is not a TinyDeepSeek, examples that are not
    (str, str) pairs of one prompt length, or a cfg that is not a GRPOConfig.
    """
    from tqdm.auto import tqdm

    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    stop, history = tokenizer.encode(STOP).item(), GRPOHistory()
    prompts = torch.stack([tokenizer.encode(prompt) for prompt, _ in examples])  # [n_examples, P]
    answers = [answer for _, answer in examples]
    bar = tqdm(range(cfg.steps), desc="GRPO", disable=not progress)
    for _ in bar:
        chosen = torch.randperm(len(examples), generator=generator)[:cfg.prompts_per_step].tolist()
        rollout = sample_groups(policy, prompts[chosen], cfg.group_size, cfg.max_new_tokens, stop, generator)
        rewards = group_rewards(rollout, [answers[i] for i in chosen], tokenizer)  # [n_prompts, G]
        advantages = group_advantages(rewards).flatten()  # [n]
        P = rollout.prompt_len
        with torch.no_grad():
            ref_logp = completion_log_probs(reference, rollout.tokens, P)
        read = torch.cat([torch.ones(len(rollout.mask), P, dtype=torch.bool), rollout.mask[:, :-1]], dim=1)
        disagreement = []
        policy.train()
        for update in range(cfg.updates_per_batch):
            if cfg.replay:
                with replay_routing(policy, rollout.routing):
                    logp = completion_log_probs(policy, rollout.tokens, P)
            else:
                logp = completion_log_probs(policy, rollout.tokens, P)
            disagreement.append(routing_disagreement(rollout.routing, router_choice(policy), read))
            if update == 0:
                history.logp_gap.append((logp.detach() - rollout.old_logp)[rollout.mask].abs().mean().item())
            loss = grpo_loss(logp, rollout.old_logp, ref_logp, advantages, rollout.mask, cfg.clip_eps, cfg.beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            optimizer.step()
        for layer in policy.moe_layers():
            layer.load.zero_()  # the bias is not updated during RL: drop the count of the training forwards
        policy.eval()
        history.reward.append(rewards.mean().item())
        history.kl.append(kl_estimator(logp.detach(), ref_logp)[rollout.mask].mean().item())
        history.loss.append(loss.item())
        history.routing_disagreement.append(sum(disagreement) / len(disagreement))
        bar.set_postfix(reward=f"{history.reward[-1]:.2f}", kl=f"{history.kl[-1]:.3f}")
    return history
