"""The inputs and the catalogue of mistakes of the sampling verify step's checker (``speculative``, notebook 08).

The inputs: six hand-made rows, each a classic trap for the accepted count, and two statistical cases of 20,000
seeded rows whose p and q make every mistake move the token distribution by a total variation of 0.2 or more.
The catalogue: a non-strict comparison, accepting past the first rejection, the inverted ratio q / p (the count);
resampling from p instead of the residual, a residual without max(0, .), an unnormalised residual sampled by
inverse CDF, the bonus from the wrong position, a missing min(1, p / q) in torch.bernoulli (the token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from course_lib.checks.cases import Mistake
from course_lib.checks.comparison import format_value
from course_lib.inference import speculative


# ------------------------------------------------------------------------------------------ the cases
@dataclass
class SampledCase:
    """One input of the checker: rows of drafts with their q, p and uniforms; ``statistical`` cases test the
    distribution of the emitted tokens, the others only the accepted counts (and that a token is emitted)."""

    label: str
    drafts: torch.Tensor  # int64 [B, d]
    q: torch.Tensor  # float64 [B, d, V]
    p: torch.Tensor  # float64 [B, d + 1, V]
    u: torch.Tensor  # float64 [B, d]
    seed: int
    statistical: bool

    def args(self) -> tuple:
        """Fresh copies of the inputs and a freshly seeded generator: every function sees the same input."""
        return (self.drafts.clone(), self.q.clone(), self.p.clone(), self.u.clone(),
                torch.Generator().manual_seed(self.seed))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.drafts.shape[0], self.drafts.shape[1], self.q.shape[2]

    def describe_row(self, i: int) -> str:
        d = self.shape[1]
        x = self.drafts[i]
        p_x = [float(self.p[i, j, x[j]]) for j in range(d)]
        q_x = [float(self.q[i, j, x[j]]) for j in range(d)]
        return (f"row {i} of {self.label}: drafts {x.tolist()}, u {format_value(self.u[i])}, "
                f"p_j(x) {format_value(torch.tensor(p_x))}, q_j(x) {format_value(torch.tensor(q_x))}")


def _edge_case() -> SampledCase:
    """Six hand-made rows, d = 2, V = 4, each a classic trap for the accepted count."""
    q = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    p = torch.tensor([[0.0, 0.5, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    rows = [  # (drafts, u): what the row tests
        ([0, 1], [0.0, 0.0]),  # p_0(x) = 0 and u = 0: rejected (u q < p is strict)
        ([1, 3], [0.999, 0.5]),  # p / q > 1: accepted whatever u; both accepted, a bonus token
        ([0, 3], [0.5, 0.1]),  # the first rejected, the second would pass: m = 0
        ([1, 0], [0.3, 0.5]),  # accepted (p / q = 2.5), then rejected (p / q = 0.4 < u)
        ([2, 2], [0.7, 0.2]),  # both accepted
        ([3, 1], [0.99, 0.0]),  # p / q = 1 (accepted for every u < 1), then accepted
    ]
    B = len(rows)
    return SampledCase("the hand-made rows (d = 2, V = 4)", torch.tensor([r[0] for r in rows]),
                       q.expand(B, -1, -1).clone(), p.expand(B, -1, -1).clone(),
                       torch.tensor([r[1] for r in rows], dtype=torch.float64), seed=1, statistical=False)


def _statistical_case(p: list[list[float]], q: list[list[float]], rows: int, seed: int) -> SampledCase:
    """``rows`` rows with the same p and q, drafts sampled from q and uniforms u, both seeded."""
    g = torch.Generator().manual_seed(seed)
    p_t, q_t = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    drafts = torch.stack([torch.multinomial(q_j, rows, replacement=True, generator=g) for q_j in q_t], 1)
    u = torch.rand(rows, len(q), generator=g, dtype=torch.float64)
    d, V = q_t.shape
    return SampledCase(f"the {rows:,} random rows with d = {d}, V = {V}", drafts,
                       q_t.expand(rows, -1, -1).clone(), p_t.expand(rows, -1, -1).clone(), u, seed=seed + 1,
                       statistical=True)


ROWS = 20_000


def cases() -> list[SampledCase]:
    """The checker's inputs: the hand-made rows, then two statistical cases (d = 1 and d = 2) whose p and q make
    every mistake of the catalogue move the token distribution by a total variation of 0.2 or more."""
    return [
        _edge_case(),
        _statistical_case(p=[[0.40, 0.30, 0.15, 0.15, 0.00], [0.05, 0.05, 0.10, 0.30, 0.50]],
                          q=[[0.10, 0.20, 0.30, 0.10, 0.30]], rows=ROWS, seed=10),
        _statistical_case(p=[[0.05, 0.45, 0.30, 0.10, 0.10], [0.30, 0.05, 0.05, 0.30, 0.30],
                             [0.60, 0.10, 0.10, 0.10, 0.10]],
                          q=[[0.30, 0.20, 0.10, 0.10, 0.30], [0.10, 0.40, 0.20, 0.10, 0.20]], rows=ROWS, seed=20),
    ]


def reference(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor, u: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The exercise's signature around the course's one implementation of the rule."""
    return speculative.accept_sampled(drafts, q, p, generator, u=u)


# ------------------------------------------------------------------------------------------ the mistakes
def _count(accepted: torch.Tensor) -> torch.Tensor:
    return accepted.long().cumprod(1).sum(1)


def _draft_probs(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = drafts.shape[1]
    return p[:, :d].gather(-1, drafts[..., None])[..., 0], q.gather(-1, drafts[..., None])[..., 0]


def _residual(m: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """max(0, p_m - q_m) per row, q padded with a zero row after the last draft (the reference's construction)."""
    rows = torch.arange(len(m))
    q_padded = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)
    return (p[rows, m] - q_padded[rows, m]).clamp(min=0)


def _sample(weights: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.multinomial(weights, 1, generator=g)[:, 0]


def _non_strict(drafts, q, p, u, g):
    p_x, q_x = _draft_probs(drafts, q, p)
    m = _count(u * q_x <= p_x)
    return m, _sample(_residual(m, q, p), g)


def _past_first_rejection(drafts, q, p, u, g):
    p_x, q_x = _draft_probs(drafts, q, p)
    m = (u * q_x < p_x).long().sum(1)  # every accepted draft counted, not only the leading ones
    return m, _sample(_residual(m, q, p), g)


def _inverted_ratio(drafts, q, p, u, g):
    p_x, q_x = _draft_probs(drafts, q, p)
    m = _count(u * p_x < q_x)  # u < q / p
    return m, _sample(_residual(m, q, p), g)


def _resample_from_p(drafts, q, p, u, g):
    m, _ = reference(drafts, q, p, u, g)
    return m, _sample(p[torch.arange(len(m)), m], g)


def _unclamped_residual(drafts, q, p, u, g):
    m, _ = reference(drafts, q, p, u, g)
    rows = torch.arange(len(m))
    q_padded = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)
    return m, _sample(p[rows, m] - q_padded[rows, m], g)  # negative weights: multinomial refuses them


def _unnormalised_inverse_cdf(drafts, q, p, u, g):
    m, _ = reference(drafts, q, p, u, g)
    r = torch.rand(len(m), 1, generator=g, dtype=torch.float64)
    return m, (_residual(m, q, p).cumsum(-1) < r).sum(-1)  # V (no token) when r > the residual's sum


def _bonus_from_last_draft(drafts, q, p, u, g):
    m, token = reference(drafts, q, p, u, g)
    d = drafts.shape[1]
    bonus = _sample(p[:, d - 1], g)
    return m, torch.where(m == d, bonus, token)


def _bernoulli_without_min(drafts, q, p, u, g):
    p_x, q_x = _draft_probs(drafts, q, p)
    m = _count(torch.bernoulli(p_x / q_x, generator=g))  # fails where p / q > 1
    return m, _sample(_residual(m, q, p), g)


COUNT_MISTAKES = [
    Mistake("a non-strict comparison: u * q(x) <= p(x) (or u <= p / q) accepts a draft the main model cannot emit "
            "(p(x) = 0) when u = 0. Accept iff u * q(x) < p(x), strictly.", _non_strict),
    Mistake("drafts were accepted past the first rejection: every later draft was drafted after a token that is not "
            "emitted. m is the length of the leading run of accepts (e.g. accepted.long().cumprod(1).sum(1)).",
            _past_first_rejection),
    Mistake("the ratio is inverted: a draft is accepted with probability min(1, p(x) / q(x)), p the main model's "
            "probability of the draft, q the drafter's. Test u * q(x) < p(x).", _inverted_ratio),
]
TOKEN_MISTAKES = [
    Mistake("after a rejection the token was sampled from p. The draft already took the mass min(p, q): sample from "
            "the residual norm(max(0, p_j - q_j)), which adds back only what the draft could not give.",
            _resample_from_p),
    Mistake("the residual p_j - q_j was sampled without max(0, .): it is negative wherever the drafter was too "
            "confident, and torch.multinomial refuses negative weights. Use (p_j - q_j).clamp(min=0).",
            _unclamped_residual),
    Mistake("the residual max(0, p_j - q_j) was not normalised: it sums to less than 1, so an inverse-CDF draw "
            "(cumsum < r) falls off its end. Divide it by its sum first (torch.multinomial would accept it as it "
            "is).", _unnormalised_inverse_cdf),
    Mistake("after a full accept the bonus token was sampled from p at the last draft's position. The main model's "
            "distribution for the token after the d drafts is p[:, d], the last of the d + 1.",
            _bonus_from_last_draft),
    Mistake("torch.bernoulli(p / q) without min(1, .): p / q exceeds 1 where the main model likes a draft more than "
            "the drafter, and bernoulli needs a probability. The given uniforms need no min: accept iff "
            "u * q(x) < p(x).", _bernoulli_without_min),
]
NO_BONUS = ("no bonus token after a full accept. When all d drafts are accepted, the main model's distribution at "
            "the position after them, p[:, d], gives one more token for free: there is no q_d (pad q with a zero "
            "row, or sample p[:, d] directly for those rows).")
COUNT_HINT = ("accept draft j iff u[:, j] * q_j(x) < p_j(x) (u < p / q, without dividing), and only while every "
              "draft before it was accepted; m counts the accepted leading drafts.")
TOKEN_HINT = ("after the first rejection (m < d) sample the token from norm(max(0, p_m - q_m)); after a full "
              "accept (m = d) sample it from p_d; use torch.multinomial with the generator.")
