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
torch.bernoulli. The inputs and the catalogue are in ``speculative_cases``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from course_lib.checks.comparison import format_value
from course_lib.checks.learner import call_learner
from course_lib.checks.speculative_cases import (COUNT_HINT, COUNT_MISTAKES, NO_BONUS, TOKEN_HINT, TOKEN_MISTAKES,
                                                 SampledCase, cases, reference)
from course_lib.checks.verdict import CheckFailed, checker, expect

NAME = "verify_sampled"
TV_ALLOWED = 0.05  # total variation allowed between an empirical token distribution and its target
MIN_GROUP = 2000  # rows of a group (same m) needed to test its distribution (every group of the cases has more)


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
