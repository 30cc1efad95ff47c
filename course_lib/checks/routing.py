"""Checker for notebook 01: the top-k route of DeepSeek-V3's router, its gate weights and their gradient.

The catalogue of mistakes comes from the course's own teaching and from bugs fixed in public implementations
(weights taken from the biased scores, normalised over all experts, a softmax where V3 divides by the sum, the
bias ignored or subtracted). The gate weights are checked on their gradient with respect to the scores too; the
catalogue holds the mistake of the gradient alone (a detached normalising sum) next to the mistakes of the value.
The load, MaxVio, bias and loss checkers of notebooks 02-03 are in ``balance``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from course_lib.checks.cases import Case, Mistake
from course_lib.checks.comparison import describe_value, format_value
from course_lib.checks.function import check_function
from course_lib.moe import routing


def seeded_scores(tokens: int, n_experts: int, seed: int) -> torch.Tensor:
    """Sigmoid affinities float32 [tokens, n_experts] drawn from a generator seeded with ``seed``."""
    return torch.sigmoid(torch.randn(tokens, n_experts, generator=torch.Generator().manual_seed(seed)))


def label_of(**values: Any) -> str:
    """A case's label from its arguments: ``scores=[[0.9, 0.8]], k=2`` (tensors rounded to 4 decimals)."""
    def show(v: Any) -> str:
        return str(v.detach().double().round(decimals=4).tolist()) if isinstance(v, torch.Tensor) else repr(v)
    return ", ".join(f"{k}={show(v)}" for k, v in values.items())


# --------------------------------------------------------------------------------------------- topk_route
_FIXED_SCORES = torch.tensor([[0.90, 0.80, 0.70, 0.20, 0.10, 0.60],
                              [0.30, 0.85, 0.40, 0.75, 0.50, 0.20],
                              [0.55, 0.10, 0.95, 0.35, 0.65, 0.45],
                              [0.20, 0.40, 0.60, 0.80, 0.70, 0.15]])
_FIXED_BIAS = torch.tensor([-0.30, 0.00, 0.10, 0.25, 0.50, 0.00])


def _route_cases(with_bias: bool) -> list[Case]:
    bias8 = torch.linspace(-0.2, 0.2, 8)
    bias16 = 0.3 * torch.randn(16, generator=torch.Generator().manual_seed(3))
    if with_bias:
        return [
            Case((_FIXED_SCORES, 2, _FIXED_BIAS), label=label_of(scores=_FIXED_SCORES, k=2, bias=_FIXED_BIAS)),
            Case((seeded_scores(5, 8, 1), 3, bias8), label=label_of(scores=seeded_scores(5, 8, 1), k=3, bias=bias8)),
            Case((seeded_scores(16, 16, 2), 4, bias16),
                 label="scores = 16 tokens x 16 experts (seeded), k=4, a random bias"),
        ]
    return [
        Case((_FIXED_SCORES, 2), label=label_of(scores=_FIXED_SCORES, k=2)),
        Case((seeded_scores(5, 8, 1), 3), label=label_of(scores=seeded_scores(5, 8, 1), k=3)),
        Case((seeded_scores(16, 16, 2), 4), label="scores = 16 tokens x 16 experts (seeded), k=4"),
    ]


def _routed(select: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
            gates: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]):
    """A wrong route: ``select(scores, bias, k) -> indices`` and ``gates(scores, bias, indices) -> weights``."""
    def wrong(scores: torch.Tensor, k: int, bias: torch.Tensor | None = None):
        bias = torch.zeros(scores.shape[1]) if bias is None else bias
        indices = select(scores, bias, k)
        return gates(scores, bias, indices), indices
    return wrong


def _top(s: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    return (s + b).topk(k, dim=-1).indices


def _normalised(s: torch.Tensor, b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    chosen = s.gather(1, i)
    return chosen / chosen.sum(-1, keepdim=True)


_ROUTE_MISTAKES = [
    Mistake("the weights include the bias: they match (s + b) of the chosen experts, normalised. The bias only "
            "decides WHICH experts are chosen; the weights come from the unbiased scores s (gather from scores, "
            "not from scores + bias). Hugging Face transformers shipped this very bug (PR #41647).",
            _routed(_top, lambda s, b, i: _normalised(s + b, b, i))),
    Mistake("the weights are the raw scores of the chosen experts: they do not sum to 1 per token. Divide the "
            "chosen scores by their sum over the k chosen experts.",
            _routed(_top, lambda s, b, i: s.gather(1, i))),
    Mistake("the weights are normalised over ALL experts (divided by the sum of every score of the token). "
            "Normalise over the k chosen experts only, so that each token's weights sum to 1.",
            _routed(_top, lambda s, b, i: s.gather(1, i) / s.sum(-1, keepdim=True))),
    Mistake("the weights are a softmax over all experts, taken at the chosen ones (DeepSeek-V2's gate). V3's "
            "scores are sigmoids: divide the chosen scores by their sum over the k chosen experts.",
            _routed(_top, lambda s, b, i: torch.softmax(s, -1).gather(1, i))),
    Mistake("the weights are a softmax over the chosen scores. V3 normalises the sigmoid scores by their sum "
            "(s_i / sum_j s_j), not by exponentials: drop the softmax.",
            _routed(_top, lambda s, b, i: torch.softmax(s.gather(1, i), -1))),
    Mistake("the selection ignores the bias: you chose the top-k of the scores alone. Choose by scores + bias "
            "(that is how the bias steers tokens away from overloaded experts), weigh by the scores alone.",
            _routed(lambda s, b, k: s.topk(k, dim=-1).indices, _normalised)),
    Mistake("the bias is subtracted: you chose the top-k of scores - bias. The selection uses scores + bias; the "
            "update rule makes the bias of an overloaded expert negative, which is what pushes tokens away.",
            _routed(lambda s, b, k: (s - b).topk(k, dim=-1).indices, _normalised)),
    Mistake("you chose the k LOWEST scores (topk with largest=False, or an ascending sort). Take the k highest.",
            _routed(lambda s, b, k: (s + b).topk(k, dim=-1, largest=False).indices, _normalised)),
    Mistake("the sum that normalises the weights is detached (or rebuilt from numbers): the value is right, but "
            "the gradient misses how each weight depends on the other chosen scores. Divide by "
            "chosen.sum(-1, keepdim=True) itself.",
            _routed(_top, lambda s, b, i: s.gather(1, i) / s.gather(1, i).sum(-1, keepdim=True).detach())),
]


def _route_compare(got: Any, expected: Any) -> str | None:
    """Compare (weights, indices) per token without regard to the order of the k experts (sorted by expert id)."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return (f"your function returned {describe_value(got)}, but a tuple (weights, indices) of two tensors was "
                f"expected")
    if not all(isinstance(t, torch.Tensor) for t in got):
        kinds = ", ".join(type(t).__name__ for t in got)
        return (f"your function returned a pair of ({kinds}), but (weights, indices) should both be torch tensors: "
                f"build them with torch functions (torch.topk, gather) rather than numpy or Python lists")
    weights, indices = got
    exp_weights, exp_indices = expected
    if weights.shape != exp_weights.shape or indices.shape != exp_indices.shape:
        return (f"your weights have shape {list(weights.shape)} and indices {list(indices.shape)}, but both should "
                f"be [tokens, k] = {list(exp_indices.shape)}")
    if not weights.is_floating_point() and indices.is_floating_point():
        return "your function returned (indices, weights): return (weights, indices), weights first"
    if indices.dtype != torch.int64:
        return (f"your indices have dtype {indices.dtype}, but int64 was expected (what torch.topk returns; "
                f"expert ids are integers used to index tensors)")
    order, exp_order = indices.argsort(-1), exp_indices.argsort(-1)
    indices, exp_indices = indices.gather(-1, order), exp_indices.gather(-1, exp_order)
    if not torch.equal(indices, exp_indices):
        t = int(torch.nonzero((indices != exp_indices).any(-1))[0])
        return f"for token {t} your chosen experts are {indices[t].tolist()}, but they should be {exp_indices[t].tolist()}"
    weights = weights.detach().gather(-1, order).double()
    exp_weights = exp_weights.detach().gather(-1, exp_order).double()
    wrong_rows = ~torch.isclose(weights, exp_weights, rtol=1e-4, atol=1e-6).all(-1)
    if not wrong_rows.any():
        return None
    t = int(torch.nonzero(wrong_rows)[0])
    return (f"for token {t} (experts {indices[t].tolist()}) your weights are {format_value(weights[t])}, "
            f"but they should be {format_value(exp_weights[t])}")


def _route_objective(output: Any) -> Any:
    """A scalar of the gate weights that does not depend on the order of a token's k experts: each weight times
    a fixed number of its (token, expert) pair."""
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        return output
    weights, indices = output
    tokens = torch.arange(indices.shape[0])[:, None]
    return (weights * torch.sin(1.7 * indices + 0.31 * tokens + 0.5).to(weights.dtype)).sum()


def check_topk_route(fn: Callable[..., Any], *, bias: bool = True) -> None:
    """Check ``fn(scores, k, bias) -> (weights, indices)`` (``fn(scores, k)`` with ``bias=False``), and the gate
    weights' gradient with respect to the scores (the router learns through it).

    scores: [tokens, n_experts] sigmoid affinities; the experts may come in any order within a token.
    """
    def reference(scores: torch.Tensor, k: int, b: torch.Tensor | None = None):
        return routing.topk_route(scores, k, b)

    generic_hint = ("choose the k largest of scores + bias, gather the UNBIASED scores of those experts and divide "
                    "them by their sum over the k chosen ones." if bias else
                    "choose the k largest scores of each token, gather them and divide them by their sum over the "
                    "k chosen ones.")
    return check_function(
        fn, name="topk_route", reference=reference, cases=_route_cases(bias), mistakes=_ROUTE_MISTAKES,
        compare_fn=_route_compare, generic_hint=generic_hint, differentiable=(0,), objective=_route_objective,
        gradient_hint="the gate weights must carry the router's gradient: gather them from the scores tensor you "
                      "were given (not from a .detach()ed copy or a rebuilt tensor), and divide by their sum "
                      "without detaching it.",
    )
