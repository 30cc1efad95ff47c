"""Checkers for notebook 14: group-relative advantages and the GRPO loss ([V3] 5.2.2 eqs. 26-28; [DSM] 4.1).

The catalogue of mistakes: for the advantages, the std over the whole batch instead of each group, no eps (a group
of equal rewards gives 0 / 0 = NaN), the mean subtracted but not divided by the std, the rewards divided but not
centred, the population std (divisor G) where the unbiased one is the convention; for the loss, the clip applied
to the advantage instead of the ratio, min and max swapped for negative advantages, the KL added with the wrong
sign, the k1 estimator log(pi / pi_ref) instead of pi_ref / pi - log(pi_ref / pi) - 1, a mean over all tokens of
the batch where the mean of per-completion means was asked, and gradients flowing into old_logp or ref_logp.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from course_lib.checks.cases import Case, Mistake
from course_lib.checks.comparison import compare
from course_lib.checks.function import check_function
from course_lib.post_training.grpo import group_advantages, grpo_loss

_COMPARE = functools.partial(compare, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------- advantages
def _advantage_cases() -> list[Case]:
    g = torch.Generator().manual_seed(14)
    scaled = torch.cat([torch.rand(1, 6, generator=g), 10 * torch.rand(1, 6, generator=g)]).double()
    return [
        Case((torch.tensor([[1.0, 0, 0, 1], [0, 0, 1, 1]]), 1e-8),
             label="rewards [[1, 0, 0, 1], [0, 0, 1, 1]] (groups of G = 4), eps=1e-8"),
        Case((scaled, 1e-8), label="rewards of two groups of 6 on different scales (one in [0, 1], one in [0, 10])"),
        Case((torch.tensor([[1.0, 1, 1, 1], [0, 1, 0, 0]]), 1e-8),
             label="rewards [[1, 1, 1, 1], [0, 1, 0, 0]]: the first group all right, eps=1e-8"),
    ]


def _advantages(centre: bool = True, divide: bool = True, whole_batch: bool = False, eps: bool = True,
                unbiased: bool = True) -> Callable[[torch.Tensor, float], torch.Tensor]:
    def wrong(rewards: torch.Tensor, eps_value: float) -> torch.Tensor:
        if whole_batch:
            mean, std = rewards.mean(), rewards.std(unbiased=unbiased)
        else:
            mean, std = rewards.mean(dim=1, keepdim=True), rewards.std(dim=1, keepdim=True, unbiased=unbiased)
        out = rewards - mean if centre else rewards
        return out / (std + (eps_value if eps else 0.0)) if divide else out
    return wrong


_ADVANTAGE_MISTAKES = [
    Mistake("the mean and std look taken over the whole batch. GRPO's baseline is each prompt's OWN group: mean and "
            "std over the G outputs of one prompt (dim=1 of [n_prompts, G], keepdim=True).",
            _advantages(whole_batch=True)),
    Mistake("a group whose rewards are all equal gives NaN: its std is 0, and (r - mean) / 0 = 0 / 0. Add eps to the "
            "std: (r - mean) / (std + eps); such a group then gets advantages 0 (it teaches nothing).",
            _advantages(eps=False)),
    Mistake("the mean is subtracted but nothing is divided: A_i = (r_i - mean) / std ([V3] eq. 28) puts every "
            "group's advantages on one scale ([V32] drops the division, but this exercise follows [V3]).",
            _advantages(divide=False)),
    Mistake("the rewards are divided by the std but not centred: without subtracting the group's mean there is no "
            "baseline, and every output of a group that scores > 0 is pushed up.", _advantages(centre=False)),
    Mistake("this is the population std (divisor G): torch's default, and the convention of TRL and the worked "
            "example, is the unbiased one (divisor G - 1), rewards.std(dim=1, keepdim=True).",
            _advantages(unbiased=False)),
]


def check_group_advantages(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(rewards [n_prompts, G], eps) -> advantages [n_prompts, G]``."""
    return check_function(
        fn, name="group_advantages", reference=group_advantages, cases=_advantage_cases(),
        mistakes=_ADVANTAGE_MISTAKES, compare_fn=_COMPARE,
        generic_hint="per row: (rewards - row mean) / (row std + eps), with keepdim=True so the shapes broadcast.")


# --------------------------------------------------------------------------------------------- the loss
def _loss_case(n: int, T: int, seed: int, clip_eps: float, beta: float, label: str) -> Case:
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, T, generator=g, dtype=torch.float64) * 3
    old_logp = logp + (torch.rand(n, T, generator=g, dtype=torch.float64) - 0.5)  # ratios in [0.61, 1.65]
    ref_logp = logp + (torch.rand(n, T, generator=g, dtype=torch.float64) - 0.5)
    advantages = torch.randn(n, generator=g, dtype=torch.float64) * 1.5
    mask = torch.arange(T) < torch.randint(1, T + 1, (n, 1), generator=g)  # completions of 1..T tokens
    return Case((logp, old_logp, ref_logp, advantages, mask, clip_eps, beta), label=label)


_LOSS_CASES = [
    _loss_case(6, 5, 24, 0.2, 0.04, "6 completions of 1-5 tokens, ratios 0.6-1.6, advantages of both signs, "
                                    "clip_eps=0.2, beta=0.04"),
    _loss_case(8, 7, 25, 0.1, 0.5, "8 completions of 1-7 tokens, clip_eps=0.1, beta=0.5"),
]


def _loss(clip: str = "ratio", negative: str = "min", kl: str = "k3", kl_sign: float = -1.0, mean: str = "per",
          detach: bool = True) -> Callable[..., torch.Tensor]:
    def wrong(logp, old_logp, ref_logp, advantages, mask, clip_eps, beta):
        if detach:
            old_logp, ref_logp = old_logp.detach(), ref_logp.detach()
        ratio = torch.exp(logp - old_logp)
        adv = advantages[:, None]
        if clip == "ratio":
            clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
        else:
            clipped = ratio * adv.clamp(1 - clip_eps, 1 + clip_eps)
        low = torch.minimum(ratio * adv, clipped)
        surrogate = low if negative == "min" else torch.where(adv > 0, low, torch.maximum(ratio * adv, clipped))
        if kl == "k3":
            penalty = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        else:
            penalty = logp - ref_logp
        per_token = surrogate + kl_sign * beta * penalty
        weights = mask.to(logp.dtype)
        if mean == "per":
            return -((per_token * weights).sum(1) / weights.sum(1)).mean()
        return -(per_token * weights).sum() / weights.sum()
    return wrong


_LOSS_MISTAKES = [
    Mistake("the clip looks applied to the advantage. PPO and GRPO clip the RATIO: min(rho A, clip(rho, 1 - eps, "
            "1 + eps) A), so that one update cannot move pi_theta far from pi_old.", _loss(clip="advantage")),
    Mistake("for negative advantages the max is taken instead of the min. The objective is min(rho A, clip(rho) A) "
            "for EVERY sign of A: the pessimistic bound, which for A < 0 stops pushing a ratio below 1 - eps.",
            _loss(negative="max")),
    Mistake("the KL penalty has the wrong sign: J = surrogate - beta D_KL, so the loss (-J) ADDS beta times the KL; "
            "with the sign flipped the policy is rewarded for leaving the reference.", _loss(kl_sign=1.0)),
    Mistake("this is the k1 estimator log(pi_theta / pi_ref). [V3] eq. 27 uses pi_ref / pi_theta - log(pi_ref / "
            "pi_theta) - 1: >= 0 for every token (k1 is negative for many) and with a lower variance.",
            _loss(kl="k1")),
    Mistake("the tokens look averaged over the whole batch (sum over all tokens / total tokens, as DAPO does). [DSM] "
            "averages each completion's tokens first (1 / |o_i|), then the completions: a mean of per-completion "
            "means, so a long completion weighs as much as a short one.", _loss(mean="batch")),
    Mistake("gradients flow into old_logp or ref_logp. They are constants: the sampling policy and the frozen "
            "reference are not trained; use old_logp.detach() and ref_logp.detach().", _loss(detach=False)),
]


def check_grpo_loss(fn: Callable[..., torch.Tensor]) -> None:
    """Check ``fn(logp, old_logp, ref_logp, advantages, mask, clip_eps, beta) -> loss`` (a 0-d tensor, -J)."""
    return check_function(
        fn, name="grpo_loss", reference=grpo_loss, cases=_LOSS_CASES, mistakes=_LOSS_MISTAKES, compare_fn=_COMPARE,
        differentiable=(0, 1, 2),
        generic_hint="per token: min(rho A, clip(rho, 1 - clip_eps, 1 + clip_eps) A) - beta (x - log x - 1) with "
                     "rho = exp(logp - old_logp), x = exp(ref_logp - logp); average each completion's masked tokens, "
                     "then the completions, and negate.",
        gradient_hint="only logp carries a gradient: old_logp and ref_logp are constants (.detach() them).")
