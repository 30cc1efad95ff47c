"""The checker of notebook 08's exercise, the sampling verify step: the reference and a row-by-row version pass, the
stub is reported, each classic mistake, written the way a learner writes it, is rejected with its own hint, and
any wrong result (an exception, a wrong shape or dtype, NaN) is explained, never a crash of the checker."""

from functools import partial

import pytest
import torch

from checking import rejected_with
from course_lib.checks import check_verify_sampled, outcome
from course_lib.checks import speculative as checks


rejected_with = partial(rejected_with, check_verify_sampled)


def loop_version(drafts, q, p, u, generator, *, strict=True, residual_of=None, bonus_position=None):
    """The rule row by row, as a learner writes it; the keywords turn it into the classic mistakes."""
    B, d = drafts.shape
    ms, tokens = [], []
    for b in range(B):
        m = 0
        for j in range(d):
            x = int(drafts[b, j])
            ratio = p[b, j, x] / q[b, j, x]
            if (u[b, j] < ratio) if strict else (u[b, j] <= ratio):
                m += 1
            else:
                break
        if m < d:
            weights = (p[b, m] - q[b, m]).clamp(min=0) if residual_of is None else residual_of(p[b, m], q[b, m])
        else:
            weights = p[b, d if bonus_position is None else bonus_position]
        ms.append(m)
        tokens.append(int(torch.multinomial(weights, 1, generator=generator)))
    return torch.tensor(ms), torch.tensor(tokens)


def batched(drafts, q, p, u, generator):
    B, d = drafts.shape
    p_x = p[:, :d].gather(2, drafts.unsqueeze(2)).squeeze(2)
    q_x = q.gather(2, drafts.unsqueeze(2)).squeeze(2)
    m = (u * q_x < p_x).long().cumprod(1).sum(1)
    return m, p_x, q_x


def test_reference_and_loop_version_pass(capsys):
    assert outcome(check_verify_sampled, checks.reference) is True
    assert outcome(check_verify_sampled, loop_version) is True
    assert "first emitted token follows p_0" in capsys.readouterr().out


def test_the_reference_passes_with_a_wide_margin_and_the_mistakes_fail_by_far(monkeypatch):
    """The threshold: the reference still passes with a third of TV_ALLOWED, and each token mistake still fails
    with four times it (seeded, so the same verdict every run)."""
    allowed = checks.TV_ALLOWED
    monkeypatch.setattr(checks, "TV_ALLOWED", allowed / 3)
    assert outcome(check_verify_sampled, checks.reference) is True
    monkeypatch.setattr(checks, "TV_ALLOWED", 4 * allowed)
    for mistake in checks.TOKEN_MISTAKES:
        rejected_with(mistake.fn, mistake.hint)


def test_stub(capsys):
    def verify_sampled(drafts, q, p, u, generator):
        raise NotImplementedError

    assert outcome(check_verify_sampled, verify_sampled) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_non_strict_comparison():
    rejected_with(lambda *args: loop_version(*args, strict=False), "Likely cause: a non-strict comparison",
                  "drafts [0, 1], u [0, 0]")


def test_accepting_past_the_first_rejection():
    def learner(drafts, q, p, u, generator):
        _, p_x, q_x = batched(drafts, q, p, u, generator)
        m = (u * q_x < p_x).sum(1)  # every accept counted
        rows = torch.arange(len(m))
        q_padded = torch.cat([q, torch.zeros_like(q[:, :1])], 1)
        return m, torch.multinomial((p[rows, m] - q_padded[rows, m]).clamp(min=0), 1, generator=generator)[:, 0]

    rejected_with(learner, "Likely cause: drafts were accepted past the first rejection")


def test_inverted_ratio():
    def learner(drafts, q, p, u, generator):
        _, p_x, q_x = batched(drafts, q, p, u, generator)
        m = (u < q_x / p_x).long().cumprod(1).sum(1)
        return m, checks.reference(drafts, q, p, u, generator)[1]

    rejected_with(learner, "Likely cause: the ratio is inverted")


def test_resampling_from_p_instead_of_the_residual():
    message = rejected_with(lambda *args: loop_version(*args, residual_of=lambda p, q: p),
                            "Likely cause: after a rejection the token was sampled from p", "norm(max(0, p_0 - q_0))")
    assert "instead of p_0 = " in message  # the emitted token's distribution against p


def test_residual_without_max_zero():
    rejected_with(lambda *args: loop_version(*args, residual_of=lambda p, q: p - q),
                  "raised RuntimeError", "Likely cause: the residual p_j - q_j was sampled without max(0, .)")


def test_unnormalised_residual_sampled_by_inverse_cdf():
    def learner(drafts, q, p, u, generator):
        B, d = drafts.shape
        ms, tokens = [], []
        for b in range(B):
            m = 0
            while m < d and u[b, m] * q[b, m, drafts[b, m]] < p[b, m, drafts[b, m]]:
                m += 1
            weights = (p[b, m] - q[b, m]).clamp(min=0) if m < d else p[b, d]
            r = torch.rand(1, generator=generator, dtype=torch.float64)
            ms.append(m)
            tokens.append(int((weights.cumsum(0) < r).sum()))  # no division by weights.sum()
        return torch.tensor(ms), torch.tensor(tokens)

    rejected_with(learner, "Likely cause: the residual max(0, p_j - q_j) was not normalised")


def test_no_bonus_token_an_index_past_q():
    def learner(drafts, q, p, u, generator):
        m, _, _ = batched(drafts, q, p, u, generator)
        rows = torch.arange(len(m))
        residual = (p[rows, m] - q[rows, m]).clamp(min=0)  # q[rows, d] does not exist
        return m, torch.multinomial(residual, 1, generator=generator)[:, 0]

    rejected_with(learner, "raised IndexError", "fails with the rows where all 2 are accepted",
                  "Likely cause: no bonus token after a full accept")


def test_no_bonus_token_a_placeholder():
    def learner(drafts, q, p, u, generator):
        m, _, _ = batched(drafts, q, p, u, generator)
        rows = torch.arange(len(m))
        d = drafts.shape[1]
        safe = m.clamp(max=d - 1)
        token = torch.multinomial((p[rows, safe] - q[rows, safe]).clamp(min=0) + 1e-12, 1, generator=generator)[:, 0]
        return m, torch.where(m == d, torch.full_like(token, -1), token)  # nothing after a full accept

    rejected_with(learner, "Likely cause: no bonus token after a full accept")


def test_bonus_from_the_last_drafts_position():
    rejected_with(lambda drafts, *rest: loop_version(drafts, *rest, bonus_position=drafts.shape[1] - 1),
                  "should follow p_d", "Likely cause: after a full accept the bonus token was sampled from p at the "
                  "last draft's position")


def test_bernoulli_without_min():
    def learner(drafts, q, p, u, generator):
        _, p_x, q_x = batched(drafts, q, p, u, generator)
        m = torch.bernoulli(p_x / q_x, generator=generator).long().cumprod(1).sum(1)
        return m, checks.reference(drafts, q, p, u, generator)[1]

    rejected_with(learner, "Likely cause: torch.bernoulli(p / q) without min(1, .)")


def test_ignoring_the_given_uniforms_is_explained():
    def learner(drafts, q, p, u, generator):
        return checks.reference(drafts, q, p, torch.rand(u.shape, generator=generator, dtype=u.dtype), generator)

    rejected_with(learner, "but m should be", "Hint: accept draft j iff u[:, j] * q_j(x) < p_j(x)")


@pytest.mark.parametrize("result, phrase", [
    (lambda m, t: m, "it returned a Tensor"),
    (lambda m, t: (m, t, t), "3 items"),
    (lambda m, t: (m.tolist(), t), "its m is a list"),
    (lambda m, t: (m[:1], t), "its m has shape [1]"),
    (lambda m, t: (m, t.double().fill_(float("nan"))), "dtype torch.float64 and contains NaN"),
    (lambda m, t: (m + 5, t), "0 <= m <= d"),
], ids=["one-tensor", "three-items", "list", "shape", "nan", "m-out-of-range"])
def test_wrong_results_are_explained(result, phrase):
    rejected_with(lambda *args: result(*checks.reference(*args)), phrase)


def test_an_exception_is_explained():
    def learner(drafts, q, p, u, generator):
        return drafts[0, 10], q  # IndexError on every input

    message = rejected_with(learner, "raised IndexError", "Hint: accept draft j")
    assert "Likely cause" not in message  # it fails on every row: nothing names a cause
