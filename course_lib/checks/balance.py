"""Checkers for notebooks 02-03: load counting, MaxVio, the bias update and the balance losses.

The catalogues come from the course's own teaching (counts that forget minlength or divide by k, MaxVio as
max / mean or std / mean, the bias treated as learnable or moved proportionally to the gap, f without its factor
N / (K T), P from raw scores). The balance losses are checked on their gradient with respect to the scores too;
their catalogues hold the mistakes of the gradient alone (hit counts f that carry a gradient, a detached
normalising sum) next to the mistakes of the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from course_lib.checks.cases import Case, Mistake
from course_lib.checks.comparison import compare
from course_lib.checks.function import check_function
from course_lib.checks.routing import label_of, seeded_scores
from course_lib.moe import balance


# --------------------------------------------------------------------------------------------- expert_load
_IDX_A = torch.tensor([[0, 1], [1, 2], [1, 0], [3, 1], [2, 0]])
_IDX_B = torch.tensor([[4, 0, 2], [2, 1, 0], [0, 4, 1], [1, 2, 4]])  # experts 3 and 5 of 6 never chosen
_IDX_C = torch.stack([torch.randperm(10, generator=torch.Generator().manual_seed(s))[:4] for s in range(32)])

_LOAD_CASES = [
    Case((_IDX_A, 4), label=f"indices={_IDX_A.tolist()}, n_experts=4"),
    Case((_IDX_B, 6), label=f"indices={_IDX_B.tolist()}, n_experts=6"),
    Case((_IDX_C, 10), label="indices = 32 tokens x top-4 of 10 experts (seeded), n_experts=10"),
]

_LOAD_MISTAKES = [
    Mistake("the loads are integers. Return float32 counts (.float()): the loads are averaged and compared "
            "with a float mean later, and V3 accumulates them in float32.",
            lambda idx, n: torch.bincount(idx.flatten(), minlength=n)),
    Mistake("only each token's first expert is counted: the load counts every ASSIGNMENT, and a token routed "
            "to k experts adds 1 to each of them (the loads sum to tokens x k).",
            lambda idx, n: torch.bincount(idx[:, 0], minlength=n).float()),
    Mistake("the loads are divided by k: the load counts assignments, not tokens, so each of a token's k "
            "experts gets a full 1 (the loads sum to tokens x k).",
            lambda idx, n: torch.bincount(idx.flatten(), minlength=n).float() / idx.shape[1]),
    Mistake("the loads are fractions that sum to 1. Return the counts themselves (the loads sum to tokens x k).",
            lambda idx, n: torch.bincount(idx.flatten(), minlength=n).float() / idx.numel()),
    Mistake("experts that no token chose are missing at the end: bincount stops at the largest id it sees. "
            "Pass minlength=n_experts so that every expert has its entry, 0 for unused ones.",
            lambda idx, n: torch.bincount(idx.flatten()).float()),
    Mistake("the one-hot matrix was summed over the tokens only, giving one row per position 0..k-1. Sum over "
            "both the token and the k dimension to get one count per expert.",
            lambda idx, n: torch.nn.functional.one_hot(idx, n).sum(0).float()),
]


def check_expert_load(fn: Callable[..., Any]) -> None:
    """Check ``fn(indices [tokens, k], n_experts) -> float32 [n_experts]`` assignments per expert."""
    return check_function(
        fn, name="expert_load", reference=balance.expert_load, cases=_LOAD_CASES, mistakes=_LOAD_MISTAKES,
        generic_hint="count how often each expert id appears anywhere in indices: "
                     "torch.bincount(indices.flatten(), minlength=n_experts).float().",
    )


# --------------------------------------------------------------------------------------------- max_violation
_MAXVIO_CASES = [
    Case((torch.tensor([4.0, 4.0, 4.0, 4.0]),), label="load=[4, 4, 4, 4]"),
    Case((torch.tensor([10.0, 2.0, 2.0, 2.0]),), label="load=[10, 2, 2, 2]"),
    Case((torch.tensor([3.0, 0.0, 1.0, 8.0, 3.0]),), label="load=[3, 0, 1, 8, 3]"),
    Case((torch.tensor([5.0, 7.0, 6.0, 9.0, 3.0, 6.0]),), label="load=[5, 7, 6, 9, 3, 6]"),
]


def _maxvio_wrong(formula: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], float]:
    return lambda load: float(formula(load.double()))


_MAXVIO_MISTAKES = [
    Mistake("you computed max / mean: that is 1 for a perfectly balanced load. MaxVio is the EXCESS of the most "
            "loaded expert over the mean, relative to the mean: (max - mean) / mean, 0 when balanced.",
            _maxvio_wrong(lambda c: c.max() / c.mean())),
    Mistake("you computed (max - min) / mean, the spread of the loads. MaxVio compares the most loaded expert "
            "with the mean (the load under perfect balance): (max - mean) / mean.",
            _maxvio_wrong(lambda c: (c.max() - c.min()) / c.mean())),
    Mistake("you computed std / mean (the coefficient of variation). MaxVio looks at the worst expert only, "
            "because the slowest expert sets the step time: (max - mean) / mean.",
            _maxvio_wrong(lambda c: c.std() / c.mean())),
    Mistake("you computed std / mean with the population std (unbiased=False). MaxVio is (max - mean) / mean.",
            _maxvio_wrong(lambda c: c.std(unbiased=False) / c.mean())),
    Mistake("you divided by the max instead of the mean. MaxVio is relative to the balanced load: "
            "(max - mean) / mean.", _maxvio_wrong(lambda c: (c.max() - c.mean()) / c.max())),
    Mistake("you did not divide by the mean: max - mean is in tokens. MaxVio is relative: (max - mean) / mean.",
            _maxvio_wrong(lambda c: c.max() - c.mean())),
    Mistake("you measured the least loaded expert: (mean - min) / mean. MaxVio measures the MOST loaded one: "
            "(max - mean) / mean.", _maxvio_wrong(lambda c: (c.mean() - c.min()) / c.mean())),
]


def check_max_violation(fn: Callable[..., Any]) -> None:
    """Check ``fn(load [n_experts]) -> float`` MaxVio = (max - mean) / mean."""
    return check_function(
        fn, name="max_violation", reference=balance.max_violation, cases=_MAXVIO_CASES, mistakes=_MAXVIO_MISTAKES,
        generic_hint="MaxVio = (load.max() - load.mean()) / load.mean() ([LF] eq. 4).",
    )


# --------------------------------------------------------------------------------------------- update_bias
def _bias_case(bias: list[float], load: list[float], gamma: float, grad: bool = False) -> Case:
    b = torch.tensor(bias).requires_grad_(grad)
    label = label_of(bias=b.detach(), load=torch.tensor(load), gamma=gamma)
    return Case((b, torch.tensor(load), gamma), label=label + (" (bias.requires_grad=True)" if grad else ""))


_BIAS_CASES = [
    _bias_case([0.0, 0.0, 0.0, 0.0], [10.0, 2.0, 2.0, 2.0], 0.001),
    _bias_case([0.1, -0.2, 0.0, 0.05, 0.3], [3.0, 0.0, 1.0, 8.0, 3.0], 0.01),
    _bias_case([0.02, -0.01, 0.0], [4.0, 4.0, 4.0], 0.1),
    _bias_case([0.1, -0.2, 0.0, 0.05, 0.3], [30.0, 1.0, 12.0, 7.0, 0.0], 0.5),
    _bias_case([0.0, 0.0, 0.0, 0.0], [9.0, 1.0, 3.0, 3.0], 0.001, grad=True),
]


def _sign_update(direction: int = 1, keep_old: bool = True):
    def wrong(b: torch.Tensor, c: torch.Tensor, gamma: float) -> torch.Tensor:
        with torch.no_grad():
            return (b if keep_old else 0) + direction * gamma * torch.sign(c.mean() - c)
    return wrong


def _no_grad(rule: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]):
    def wrong(b: torch.Tensor, c: torch.Tensor, gamma: float) -> torch.Tensor:
        with torch.no_grad():
            return rule(b, c, gamma)
    return wrong


_BIAS_MISTAKES = [
    Mistake("the sign is reversed: overloaded experts got a HIGHER bias, which sends them even more tokens. "
            "b <- b + gamma * sign(mean - load): an expert above the mean goes down.", _sign_update(-1)),
    Mistake("the step is proportional to the gap (gamma * (mean - load)). The rule uses only its SIGN: every "
            "expert moves by exactly gamma ([LF] found sign updates better than proportional ones).",
            _no_grad(lambda b, c, g: b + g * (c.mean() - c))),
    Mistake("the step is proportional to the relative gap (gamma * (mean - load) / mean). The rule uses only "
            "the SIGN of the gap: every expert moves by exactly gamma.",
            _no_grad(lambda b, c, g: b + g * (c.mean() - c) / c.mean())),
    Mistake("the old bias is lost: you returned only gamma * sign(mean - load). The update ADDS the step to "
            "the current bias, which accumulates over training.", _sign_update(1, keep_old=False)),
    Mistake("the update is multiplicative (b * (1 + gamma * sign(...))): a bias that starts at 0 never moves. "
            "The rule is additive: b + gamma * sign(mean - load).",
            _no_grad(lambda b, c, g: b * (1 + g * torch.sign(c.mean() - c)))),
    Mistake("each load is compared with the total instead of the mean, so every bias goes up. Compare with the "
            "mean load, the load of a perfectly balanced expert.",
            _no_grad(lambda b, c, g: b + g * torch.sign(c.sum() - c))),
]


def _bias_compare(got: Any, expected: Any) -> str | None:
    if isinstance(got, torch.Tensor) and got.requires_grad:
        return ("your new bias has requires_grad=True: it is part of the autograd graph. The bias is state, "
                "never trained by gradient: compute the update under torch.no_grad() (or .detach() it)")
    return compare(got, expected, what="your new bias")


def check_update_bias(fn: Callable[..., Any]) -> None:
    """Check ``fn(bias, load, gamma) -> new bias`` = bias + gamma * sign(mean(load) - load), without gradient."""
    return check_function(
        fn, name="update_bias", reference=balance.update_bias, cases=_BIAS_CASES, mistakes=_BIAS_MISTAKES,
        compare_fn=_bias_compare,
        generic_hint="new_bias = bias + gamma * torch.sign(load.mean() - load), computed under torch.no_grad().",
    )


# --------------------------------------------------------------------------------------------- balance losses
def _f_p(scores: torch.Tensor, k: int, *, f_scale: str = "N/KT", top: int | None = None, p: str = "normalised",
         f_grad: bool = False):
    """f and P of a wrong balance loss: a different scale for f, a different k for the count, another P, hit
    counts that carry a gradient (``f_grad``: a soft count whose value is the hard one), or P's normalising sum
    detached (``p="detached sum"``)."""
    tokens, n = scores.shape[-2], scores.shape[-1]
    chosen = scores.topk(top or k, dim=-1).indices
    hits = torch.zeros_like(scores).scatter(-1, chosen, 1.0)
    if f_grad:
        hits = hits + scores - scores.detach()
    counts = hits.sum(-2)
    scale = {"N/KT": n / (k * tokens), "none": 1.0, "1/T": 1 / tokens, "1/KT": 1 / (k * tokens), "N/T": n / tokens}
    if p == "raw":
        probs = scores.mean(-2)
    elif p == "softmax":
        probs = torch.softmax(scores, -1).mean(-2)
    elif p == "detached sum":
        probs = (scores / scores.sum(-1, keepdim=True).detach()).mean(-2)
    else:
        probs = (scores / scores.sum(-1, keepdim=True)).mean(-2)
    return counts * scale[f_scale], probs


def _batch_loss(**variant: Any):
    def wrong(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
        f, p = _f_p(scores, k, **variant)
        return alpha * (f * p).sum()
    return wrong


def _loss_mistakes(wrap: Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]) -> list[Mistake]:
    """The mistakes in f and P, shared by the batch-wise and the sequence-wise loss (``wrap`` applies one)."""
    return [
        Mistake("f is the raw count of tokens per expert: the factor N / (K T) is missing. With it, f_i = 1 for "
                "every expert under perfect balance, so the loss does not grow with the number of tokens.",
                wrap(_batch_loss(f_scale="none"))),
        Mistake("f is the count divided by T only: the factor is N / (K T), N experts and K choices per token, so "
                "that f_i = 1 under perfect balance.", wrap(_batch_loss(f_scale="1/T"))),
        Mistake("the loss is N times too small: either f is the count divided by K T (the N of N / (K T) is "
                "missing; f_i = 1, not 1/N, under perfect balance), or the loss takes the MEAN of f_i P_i over the "
                "experts instead of the SUM (alpha * sum_i f_i P_i).", wrap(_batch_loss(f_scale="1/KT"))),
        Mistake("f is the count times N / T: the K of N / (K T) is missing. Each token makes K choices, so the "
                "counts sum to K T.", wrap(_batch_loss(f_scale="N/T"))),
        Mistake("P uses the raw sigmoid scores. P_i averages the NORMALISED scores s'_{i,t} = s_{i,t} / sum_j "
                "s_{j,t}, so that each token's scores sum to 1 first.", wrap(_batch_loss(p="raw"))),
        Mistake("P uses a softmax of the scores. V3 normalises the sigmoid scores by their sum: s'_{i,t} = "
                "s_{i,t} / sum_j s_{j,t}.", wrap(_batch_loss(p="softmax"))),
        Mistake("the counts in f use only each token's top-1 expert. f counts the tokens whose top-K contains "
                "expert i, with K = k.", wrap(_batch_loss(top=1))),
        Mistake("alpha is missing: the loss is alpha * sum_i f_i P_i.",
                wrap(lambda s, k, a: _batch_loss()(s, k, 1.0))),
        # mistakes of the gradient alone (the value is right)
        Mistake("the hit counts f carry a gradient. f_i counts the tokens that chose expert i: a constant in the "
                "loss (the top-k choice is not differentiable). Only P_i carries the gradient, which is what "
                "pushes the scores of busy experts down ([V3] eqs. 17-20). Build f from the top-k indices "
                "(scatter 1.0 into zeros, or one_hot), or .detach() it.", wrap(_batch_loss(f_grad=True))),
        Mistake("the sum that normalises the scores in P is detached: s'_{i,t} = s_{i,t} / sum_j s_{j,t} must "
                "keep its gradient through the sum too. Divide by scores.sum(-1, keepdim=True) itself.",
                wrap(_batch_loss(p="detached sum"))),
    ]


_LOSS_CASES = [
    Case((torch.tensor([[0.9, 0.1, 0.6, 0.3], [0.8, 0.2, 0.3, 0.5], [0.7, 0.6, 0.1, 0.2]]), 2, 0.1),
         label="scores=[[0.9, 0.1, 0.6, 0.3], [0.8, 0.2, 0.3, 0.5], [0.7, 0.6, 0.1, 0.2]], k=2, alpha=0.1"),
    Case((seeded_scores(12, 6, 5), 2, 0.01), label="scores = 12 tokens x 6 experts (seeded), k=2, alpha=0.01"),
    Case((seeded_scores(20, 8, 6) ** 3, 3, 1.0), label="scores = 20 tokens x 8 experts (seeded, skewed), k=3, alpha=1.0"),
]


def _loss_compare(got: Any, expected: Any) -> str | None:
    if not isinstance(got, torch.Tensor):
        return (f"your loss is {got!r}, a {type(got).__name__}, but a scalar torch tensor was expected: keep the "
                f"computation in torch (no float() or .item()) so the loss stays differentiable and can be added to "
                f"the training loss")
    return compare(got, expected, what="your loss")


_LOSS_GRADIENT_HINT = ("the gradient must flow through P alone: the hit counts f are constants (counts of top-k "
                       "choices), and P_i = mean over tokens of s_{i,t} / sum_j s_{j,t} keeps its whole gradient. "
                       "Check what you .detach() and what you rebuild from numbers.")


def check_balance_loss(fn: Callable[..., Any]) -> None:
    """Check ``fn(scores [tokens, n_experts], k, alpha) -> scalar`` the batch-wise balance loss alpha * sum f_i P_i,
    and its gradient with respect to the scores."""
    return check_function(
        fn, name="balance_loss", reference=balance.balance_loss, cases=_LOSS_CASES,
        mistakes=_loss_mistakes(lambda wrong: wrong), compare_fn=_loss_compare,
        differentiable=(0,), gradient_hint=_LOSS_GRADIENT_HINT,
        generic_hint="f_i = N / (K T) * (tokens whose top-k contains i), P_i = mean over tokens of "
                     "s_{i,t} / sum_j s_{j,t}; the loss is alpha * sum_i f_i P_i.",
    )


def _per_sequence(wrong: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return lambda scores, k, alpha: torch.stack([wrong(seq, k, alpha) for seq in scores]).mean()


_SEQ_SCORES = torch.stack([seeded_scores(6, 4, 7), seeded_scores(6, 4, 8) ** 4, 1 - seeded_scores(6, 4, 9)])
_SEQ_CASES = [
    Case((torch.tensor([[[0.9, 0.1, 0.2], [0.8, 0.3, 0.1]], [[0.1, 0.2, 0.9], [0.3, 0.1, 0.7]]]), 1, 1.0),
         label="scores=[[[0.9, 0.1, 0.2], [0.8, 0.3, 0.1]], [[0.1, 0.2, 0.9], [0.3, 0.1, 0.7]]], k=1, alpha=1.0 "
               "(each sequence prefers its own expert)"),
    Case((_SEQ_SCORES, 2, 0.1), label="scores = 3 sequences x 6 tokens x 4 experts (seeded), k=2, alpha=0.1"),
    Case((seeded_scores(40, 8, 10).view(4, 10, 8), 3, 0.0001),
         label="scores = 4 sequences x 10 tokens x 8 experts (seeded), k=3, alpha=0.0001"),
]

_SEQ_MISTAKES = [
    Mistake("the loss is computed over the whole batch at once (all batch x T tokens together). The "
            "sequence-wise loss computes f and P for EACH sequence from its own T tokens, then averages the "
            "per-sequence losses: it penalises imbalance inside one sequence even when the batch is balanced.",
            lambda s, k, a: balance.balance_loss(s.reshape(-1, s.shape[-1]), k, a)),
    Mistake("the per-sequence losses are summed over the batch: average them (divide by the batch size).",
            lambda s, k, a: balance.sequence_balance_loss(s, k, a) * s.shape[0]),
    Mistake("f counts per sequence but divides by the batch's token count (batch x T) instead of the "
            "sequence length T: T in N / (K T) is the number of tokens of ONE sequence.",
            lambda s, k, a: balance.sequence_balance_loss(s, k, a) / s.shape[0]),
    *_loss_mistakes(_per_sequence),
]


def check_sequence_balance_loss(fn: Callable[..., Any]) -> None:
    """Check ``fn(scores [batch, T, n_experts], k, alpha) -> scalar`` V3's sequence-wise balance loss, and its
    gradient with respect to the scores."""
    return check_function(
        fn, name="sequence_balance_loss", reference=balance.sequence_balance_loss, cases=_SEQ_CASES,
        mistakes=_SEQ_MISTAKES, compare_fn=_loss_compare, differentiable=(0,), gradient_hint=_LOSS_GRADIENT_HINT,
        generic_hint="for each sequence b: f_i = N / (K T) * (its tokens whose top-k contains i), P_i = mean over "
                     "its T tokens of s_{i,t} / sum_j s_{j,t}, loss_b = alpha * sum_i f_i P_i; return the mean "
                     "of loss_b over the batch.",
    )
