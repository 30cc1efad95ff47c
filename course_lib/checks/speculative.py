"""Checker for notebook 08: the sampling verify step of speculative decoding (Leviathan et al. 2023, Chen et al.
2023; [V3] 5.4.3).

The exercise: ``verify_sampled(drafts [B, d], q [B, d, V], p [B, d + 1, V], u [B, d], generator) -> (m [B],
token [B])``. Given the uniforms u, the accepted counts m are deterministic (accept draft j iff u q_j(x) < p_j(x)
and every draft before it was accepted), so they are compared row by row with the reference,
``course_lib.inference.speculative.accept_sampled``. The emitted token is random: it is compared in distribution, on tens of
thousands of seeded rows per case, with what it must follow: norm(max(0, p_j - q_j)) after a rejection of draft
j + 1, p_d after a full accept, so that the first emitted token follows p_0. Everything is seeded: a given
function always gets the same verdict.

The catalogue of mistakes, each named only when it agrees with the learner's function on every case:
a non-strict comparison (u q <= p accepts a draft with p(x) = 0 when u = 0), accepting past the first rejection,
the inverted ratio q / p, resampling from p instead of the residual, a residual without max(0, .) (negative
"probabilities"), an unnormalised residual sampled by inverse CDF, no bonus token after a full accept (an index
past q's last position, or no valid token), the bonus from the wrong position, and a missing min(1, p / q) in
torch.bernoulli.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from course_lib.inference import speculative
from course_lib.checks.cases import Mistake
from course_lib.checks.comparison import format_value
from course_lib.checks.learner import call_learner
from course_lib.checks.verdict import CheckFailed, checker, expect

NAME = "verify_sampled"
TV_ALLOWED = 0.05  # total variation allowed between an empirical token distribution and its target
MIN_GROUP = 2000  # rows of a group (same m) needed to test its distribution (every group of the cases has more)


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


# ------------------------------------------------------------------------------------------ reading a result
def _result_problem(got: Any, case: SampledCase) -> tuple[str | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """(None, (m, token) as int64 CPU tensors) for a well-formed result, else (what is wrong, None)."""
    B, d, _ = case.shape
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        kind = f"{len(got)} items" if isinstance(got, (tuple, list)) else f"a {type(got).__name__}"
        return f"it returned {kind}, but a pair (m, token) of int64 tensors [B] = [{B}] was expected", None
    out = []
    for what, value in zip(("m", "token"), got):
        if not isinstance(value, torch.Tensor):
            return f"its {what} is a {type(value).__name__}, but an int64 tensor [{B}] was expected", None
        value = value.detach().cpu()
        if list(value.shape) != [B]:
            return f"its {what} has shape {list(value.shape)}, but shape [{B}] (one per row) was expected", None
        if value.is_floating_point() or value.is_complex():
            nan = " and contains NaN" if bool(torch.isnan(value).any()) else ""
            return (f"its {what} has dtype {value.dtype}{nan}, but integers (int64: a count, a token id) were "
                    f"expected"), None
        out.append(value.long())
    m = out[0]
    if bool(((m < 0) | (m > d)).any()):
        i = int(torch.nonzero((m < 0) | (m > d))[0])
        return f"its m is {int(m[i])} at {case.describe_row(i)}, but m counts accepted drafts: 0 <= m <= d = {d}", None
    return None, (out[0], out[1])


def _histogram(tokens: torch.Tensor, V: int) -> torch.Tensor:
    """The empirical distribution of ``tokens`` over V + 1 bins, the last one for anything that is not a token
    id in [0, V)."""
    binned = torch.where((tokens >= 0) & (tokens < V), tokens, torch.full_like(tokens, V))
    return torch.bincount(binned, minlength=V + 1).double() / max(1, len(tokens))


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def _groups(case: SampledCase, m: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(j, row mask) for every accepted count j with enough rows to test its token's distribution."""
    return [(j, m == j) for j in range(case.shape[1] + 1) if int((m == j).sum()) >= MIN_GROUP]


def _target(case: SampledCase, j: int) -> torch.Tensor:
    """What the token of a row with m = j must follow (V + 1 bins, the last one empty)."""
    p_j = case.p[0, j]
    target = p_j if j == case.shape[1] else (p_j - case.q[0, j]).clamp(min=0)
    return torch.cat([target / target.sum(), torch.zeros(1, dtype=torch.float64)])


def _padded_p0(case: SampledCase) -> torch.Tensor:
    """p_0 over V + 1 bins: what the first emitted token of every row must follow."""
    return torch.cat([case.p[0, 0], torch.zeros(1, dtype=torch.float64)])


def _first_emitted(case: SampledCase, m: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    return torch.where(m >= 1, case.drafts[:, 0], token)


# ------------------------------------------------------------------------------------------ the checker
def _run(fn: Callable[..., Any], case: SampledCase) -> Any:
    return fn(*case.args())


def _explained_exception(fn: Callable[..., Any], case: SampledCase, error: CheckFailed) -> CheckFailed:
    """The learner's function raised on ``case``: name the cause when a mistake raises the same error there, or when
    the function runs on the rows where a draft is rejected and fails only with the fully accepted ones."""
    original = error.__context__
    message = str(error).split("\nHint:")[0]
    for mistake in COUNT_MISTAKES + TOKEN_MISTAKES:
        try:
            _run(mistake.fn, case)
        except Exception as exc:  # the mistake model fails on this input: the same way?
            if type(exc) is type(original) and str(exc) == str(original):
                return CheckFailed(f"{message}\nLikely cause: {mistake.hint}")
    m_ref, _ = _run(reference, case)
    d = case.shape[1]
    full = m_ref == d
    if bool(full.any()) and not bool(full.all()):
        rejected_only = SampledCase(case.label, case.drafts[~full], case.q[~full], case.p[~full], case.u[~full],
                                    case.seed, case.statistical)
        try:
            fn(*rejected_only.args())
        except Exception:  # it fails without full accepts too: not the bonus
            pass
        else:
            return CheckFailed(f"{message}\nIt runs on the rows where a draft is rejected and fails with the rows "
                               f"where all {d} are accepted.\nLikely cause: {NO_BONUS}")
    return CheckFailed(f"{message}\nHint: {COUNT_HINT} Then {TOKEN_HINT}")


def _count_mistake(learner_m: list[torch.Tensor], all_cases: list[SampledCase]) -> str | None:
    """The hint of the first count mistake whose m equals the learner's on every row of every case."""
    for mistake in COUNT_MISTAKES:
        try:
            if all(torch.equal(_run(mistake.fn, c)[0], m) for c, m in zip(all_cases, learner_m)):
                return mistake.hint
        except Exception:  # a mistake model may not apply to every input
            continue
    return None


def _token_mistake(results: list[tuple[torch.Tensor, torch.Tensor]], all_cases: list[SampledCase]) -> str | None:
    """The hint of the first token mistake whose token distribution agrees with the learner's in every group of
    every statistical case (and whose m is the reference's, as the learner's is here)."""
    for mistake in TOKEN_MISTAKES:
        agrees = True
        for case, (m, token) in zip(all_cases, results):
            if not case.statistical:
                continue
            try:
                m_w, token_w = _run(mistake.fn, case)
            except Exception:  # a mistake model may not apply to every input
                agrees = False
                break
            V = case.shape[2]
            if not torch.equal(m_w, m) or any(
                    _tv(_histogram(token[rows], V), _histogram(token_w[rows], V)) > TV_ALLOWED
                    for _, rows in _groups(case, m)):
                agrees = False
                break
        if agrees:
            return mistake.hint
    return None


@checker(NAME)
def check_verify_sampled(fn: Callable[..., Any]) -> str:
    """Check ``fn(drafts [B, d], q [B, d, V], p [B, d + 1, V], u [B, d], generator) -> (m [B], token [B])``, the
    sampling verify step: m row by row against ``speculative.accept_sampled`` with the same uniforms, the token's
    distribution against its target on seeded rows (total variation at most ``TV_ALLOWED``)."""
    all_cases = cases()
    results = []
    for case in all_cases:
        try:
            got = call_learner(fn, *case.args(), name=f"Your {NAME}", label=case.label)
        except CheckFailed as error:
            raise _explained_exception(fn, case, error) from None
        problem, result = _result_problem(got, case)
        expect(problem is None, f"Your {NAME}: {problem}.\nHint: return (m, token), two int64 tensors of shape [B].")
        results.append(result)

    learner_m = [m for m, _ in results]
    for case, m in zip(all_cases, learner_m):
        m_ref, _ = _run(reference, case)
        if not torch.equal(m, m_ref):
            i = int(torch.nonzero(m != m_ref)[0])
            cause = _count_mistake(learner_m, all_cases)
            raise CheckFailed(f"Your {NAME} gives m = {int(m[i])} (drafts accepted) at {case.describe_row(i)}, "
                              f"but m should be {int(m_ref[i])}.\n"
                              + (f"Likely cause: {cause}" if cause else f"Hint: {COUNT_HINT}"))

    bonus_missing = []  # per case: the rows that accept every draft get no token in [0, V); the others get one
    for case, (m, token) in zip(all_cases, results):
        B, d, V = case.shape
        valid = (token >= 0) & (token < V)
        full = m == d
        bonus_missing.append(bool(full.any()) and not bool(valid[full].any()) and bool(valid[~full].all()))
    worst = 0.0
    for case, (m, token) in zip(all_cases, results):
        if not case.statistical:
            continue
        B, d, V = case.shape
        for j, rows in _groups(case, m):
            seen, target = _histogram(token[rows], V), _target(case, j)
            tv = _tv(seen, target)
            if tv > TV_ALLOWED:
                where = (f"the {int(rows.sum()):,} rows that accept every draft (m = d = {d})" if j == d else
                         f"the {int(rows.sum()):,} rows that reject draft {j + 1} (m = {j})")
                should = "p_d" if j == d else f"norm(max(0, p_{j} - q_{j}))"
                first = _histogram(_first_emitted(case, m, token), V)
                effect = (f"So the first token your step emits follows {format_value(first)} instead of p_0 = "
                          f"{format_value(_padded_p0(case))}." if _tv(first, _padded_p0(case)) > TV_ALLOWED else
                          "(The first token your step emits does follow p_0; the one after it does not.)")
                cause = NO_BONUS if j == d and all(bonus_missing) else _token_mistake(results, all_cases)
                raise CheckFailed(
                    f"On {case.label}, for {where}, your tokens are distributed as {format_value(seen)} (the last "
                    f"entry: not a token in [0, {V})); they should follow {should} = {format_value(target)} (total "
                    f"variation {tv:.3f}; the check allows {TV_ALLOWED}). {effect}\n"
                    + (f"Likely cause: {cause}" if cause else f"Hint: {TOKEN_HINT}"))
        worst = max(worst, _tv(_histogram(_first_emitted(case, m, token), V), _padded_p0(case)))
    for case, (m, token) in zip(all_cases, results):
        B, d, V = case.shape
        invalid = (token < 0) | (token >= V)
        if not case.statistical and bool(invalid.any()):
            i = int(torch.nonzero(invalid)[0])
            cause = NO_BONUS if all(bonus_missing) else None
            raise CheckFailed(f"Your {NAME} emitted the token {int(token[i])} at {case.describe_row(i)} (m = "
                              f"{int(m[i])}), but a token id in [0, {V}) was expected.\n"
                              + (f"Likely cause: {cause}" if cause else f"Hint: {TOKEN_HINT}"))

    n_rows = sum(c.shape[0] for c in all_cases if c.statistical)
    return (f"the accepted counts match on every row, and on {n_rows:,} seeded rows the first emitted token "
            f"follows p_0 (total variation at most {worst:.3f})")
