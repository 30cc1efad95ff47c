"""Group Relative Policy Optimization, the objective of DeepSeek's RL ([V3] 5.2.2 eqs. 26-28; [DSM] 4.1).

For each question q the old policy samples a group of G outputs o_1..o_G with rewards r_1..r_G. GRPO maximises

    J = E[ (1/G) sum_i (1/|o_i|) sum_t ( min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps, 1 + eps) A_i)
                                          - beta D_KL,t(pi_theta || pi_ref) ) ]

    rho_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_theta_old(o_{i,t} | q, o_{i,<t})      (per token, [DSM] eq. 3)
    A_i       = (r_i - mean(r_1..r_G)) / std(r_1..r_G)                                     ([V3] eq. 28)
    D_KL,t    = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1                             ([V3] eq. 27)

No value model: the group's mean reward is the baseline, and with outcome rewards every token of o_i gets A_i.

- ``group_advantages``: A from rewards [n_prompts, G]. The std is the *unbiased* one (divisor G - 1), torch's default
  and what the released implementations (TRL's GRPOTrainer, the Hugging Face LLM course's worked example) use;
  [DSM] writes std(r) without saying which. A group of one output has no std (G - 1 = 0): G >= 2 is required.
  ``eps`` keeps a group of equal rewards (std 0, advantages 0) from giving 0 / 0 = NaN.
- ``kl_estimator``: the per-token estimator above (Schulman's "k3"): >= 0 for every token, 0 where the two policies
  agree, unbiased for KL(pi_theta || pi_ref) under samples of pi_theta. ``log(pi_theta / pi_ref)`` ("k1") is
  unbiased too but negative for many tokens; its gradient is not the KL's.
- ``grpo_loss``: -J on per-token log-probabilities of sampled completions [n, T] (n = n_prompts * G), masked.
  Each completion's tokens are averaged first (1/|o_i|), then the n completions ([DSM]'s normalisation). DAPO
  (arXiv 2503.14476) and TRL's token-level loss types average over all tokens of the batch instead (sum over tokens / total
  tokens): long completions then weigh more, and the loss of a single update with beta = 0 is no longer 0.
"""

from __future__ import annotations

import torch

from course_lib.core.validation import boundary
from course_lib.post_training import arguments


@boundary(arguments.group_advantages)
def group_advantages(rewards: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """A_i = (r_i - mean(group)) / (std(group) + eps) within each group ([V3] eq. 28).

    rewards: float [n_prompts, G], row p the rewards of prompt p's G outputs -> advantages, same shape and dtype.
    std is the unbiased one (divisor G - 1). Raises TypeError for rewards that are not a floating-point tensor,
    ValueError for rewards not 2-D, empty, with G < 2 (the std of one output is undefined), NaN or inf, and for an
    eps that is not a finite number > 0.
    """
    mean = rewards.mean(dim=1, keepdim=True)  # [n_prompts, 1]
    std = rewards.std(dim=1, keepdim=True)  # [n_prompts, 1], unbiased
    return (rewards - mean) / (std + eps)


@boundary(arguments.kl_estimator)
def kl_estimator(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref): pi_ref / pi_theta - log(pi_ref / pi_theta) - 1 ([V3] eq. 27).

    logp, ref_logp: float [...] log-probabilities of the same sampled tokens under the policy and the reference ->
    [...] >= 0 (x - log x - 1 >= 0 for x > 0), exactly 0 where they agree. Differentiable in both. Raises
    TypeError / ValueError for tensors that are not floating point, of different shapes, or NaN or +inf.
    """
    log_ratio = ref_logp - logp  # log(pi_ref / pi_theta)
    return torch.exp(log_ratio) - log_ratio - 1


@boundary(arguments.grpo_loss)
def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04) -> torch.Tensor:
    """-J, GRPO's clipped surrogate objective with the KL penalty ([V3] eq. 26, [DSM] eq. 3), to minimise.

    logp: float [n, T] log pi_theta of each completion's sampled tokens (with gradient); old_logp, ref_logp:
    [n, T] the same under the sampling policy and the frozen reference (constants: no gradient flows into them);
    advantages: [n] one per completion (``group_advantages(...).flatten()``); mask: bool [n, T], True on each
    completion's tokens (padding False). Per token: min(rho A, clip(rho, 1 - clip_eps, 1 + clip_eps) A)
    - beta * ``kl_estimator``; each completion's tokens averaged, then the n completions. Returns a 0-d tensor.
    [DSM] 4.2: beta = 0.04; clip_eps 0.2 as in PPO. Raises TypeError / ValueError (``arguments.grpo_loss``) for
    mismatched shapes, a mask that is not bool or leaves a completion empty, NaN or inf, clip_eps <= 0, beta < 0.
    """
    old_logp, ref_logp = old_logp.detach(), ref_logp.detach()
    ratio = torch.exp(logp - old_logp)  # rho [n, T]
    adv = advantages.detach()[:, None]  # [n, 1]: every token of o_i gets A_i
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)  # [n, T]
    per_token = surrogate - beta * kl_estimator(logp, ref_logp)  # [n, T]
    weights = mask.to(logp.dtype)
    per_completion = (per_token * weights).sum(dim=1) / weights.sum(dim=1)  # [n]: (1/|o_i|) sum_t
    return -per_completion.mean()
