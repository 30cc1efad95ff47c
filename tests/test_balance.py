"""balance: expert_load, max_violation, update_bias and the balance losses against slow loop versions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.moe.balance import balance_loss, expert_load, max_violation, sequence_balance_loss, update_bias


def random_scores(*shape, seed=0, dtype=torch.float64):
    return torch.sigmoid(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype))


# ------------------------------------------------------------------------------------------ slow references
def loop_load(indices, n):
    counts = [0.0] * n
    for i in indices.reshape(-1).tolist():
        counts[i] += 1
    return torch.tensor(counts)


def loop_balance_loss(scores, k, alpha):
    """alpha * sum_i f_i P_i over the rows of scores [T, N], term by term ([V3] eqs. 17-20)."""
    t_len, n = scores.shape
    rows = scores.tolist()
    total = 0.0
    for i in range(n):
        hits = sum(1 for row in rows if i in sorted(range(n), key=lambda j: -row[j])[:k])
        f = n / (k * t_len) * hits
        p = sum(row[i] / sum(row) for row in rows) / t_len
        total += f * p
    return alpha * total


# ------------------------------------------------------------------------------------------ expert_load
@settings(max_examples=30, deadline=None)
@given(tokens=st.integers(0, 20), k=st.integers(1, 4), extra=st.integers(0, 5), seed=st.integers(0, 999))
def test_expert_load_matches_loop(tokens, k, extra, seed):
    n = k + extra
    indices = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(seed + t))[:k]
                           for t in range(tokens)]) if tokens else torch.zeros(0, k, dtype=torch.long)
    load = expert_load(indices, n)
    assert load.dtype == torch.float32 and load.shape == (n,)
    assert torch.equal(load, loop_load(indices, n))
    assert load.sum().item() == tokens * k  # one count per assignment, not per token


def test_expert_load_any_leading_shape():
    indices = torch.tensor([[[0, 1], [1, 2]], [[3, 1], [0, 2]]])  # [batch, T, k]
    assert expert_load(indices, 5).tolist() == [2, 3, 2, 1, 0]


@pytest.mark.parametrize("indices, n, error, phrase", [
    (torch.tensor([[0.0, 1.0]]), 3, TypeError, "integer tensor"),
    (torch.tensor([[0, 3]]), 3, ValueError, "[0, 2]"),
    (torch.tensor([[-1, 0]]), 3, ValueError, "[0, 2]"),
    (torch.tensor([[0, 1]]), 0, ValueError, "n_experts must be an int >= 1"),
    (torch.tensor([[0, 1]]), 2.0, TypeError, "n_experts must be an int"),
])
def test_expert_load_bad_input(indices, n, error, phrase):
    with pytest.raises(error, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        expert_load(indices, n)


# ------------------------------------------------------------------------------------------ max_violation
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=12).filter(lambda c: sum(c) > 0))
def test_max_violation_matches_definition(counts):
    mean = sum(counts) / len(counts)
    assert max_violation(torch.tensor(counts, dtype=torch.float32)) == pytest.approx((max(counts) - mean) / mean)


def test_max_violation_examples():
    assert max_violation(torch.tensor([4.0, 4.0, 4.0, 4.0])) == 0.0
    assert max_violation(torch.tensor([16.0, 0.0, 0.0, 0.0])) == pytest.approx(3.0)  # collapse: N - 1
    assert isinstance(max_violation(torch.tensor([1.0, 3.0])), float)


@pytest.mark.parametrize("load, phrase", [
    (torch.zeros(4), "positive mean"), (torch.ones(2, 2), "1-D"), (torch.zeros(0), "non-empty")])
def test_max_violation_bad_input(load, phrase):
    with pytest.raises(ValueError, match=phrase):
        max_violation(load)


# ------------------------------------------------------------------------------------------ update_bias
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=10), st.sampled_from([0.0, 1e-3, 0.1]))
def test_update_bias_matches_loop(counts, gamma):
    n = len(counts)
    bias = torch.linspace(-0.1, 0.1, n)
    mean = sum(counts) / n
    expected = [float(b) + gamma * ((mean > c) - (mean < c)) for b, c in zip(bias, counts)]
    new = update_bias(bias, torch.tensor(counts, dtype=torch.float32), gamma)
    torch.testing.assert_close(new, torch.tensor(expected))


def test_update_bias_is_a_new_tensor_without_grad():
    bias = torch.zeros(3, requires_grad=True)
    new = update_bias(bias, torch.tensor([5.0, 1.0, 0.0]), 0.01)
    assert not new.requires_grad and new.dtype == torch.float32
    assert new.tolist() == pytest.approx([-0.01, 0.01, 0.01])
    assert bias.tolist() == [0.0, 0.0, 0.0]


def test_update_bias_is_a_sign_step_whatever_the_gap():
    new = update_bias(torch.zeros(3), torch.tensor([100.0, 1.0, 1.0]), 0.5)
    assert new.tolist() == [-0.5, 0.5, 0.5]


@pytest.mark.parametrize("bias, load, gamma, phrase", [
    (torch.zeros(3), torch.zeros(4), 0.1, "shape of bias"),
    (torch.zeros(2, 2), torch.zeros(2, 2), 0.1, "1-D"),
    (torch.zeros(3), torch.zeros(3), -0.1, "gamma must be >= 0"),
])
def test_update_bias_bad_input(bias, load, gamma, phrase):
    with pytest.raises(ValueError, match=phrase):
        update_bias(bias, load, gamma)


# ------------------------------------------------------------------------------------------ balance losses
@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 10), n=st.integers(1, 8), data=st.data())
def test_balance_loss_matches_loop(tokens, n, data):
    k = data.draw(st.integers(1, n))
    alpha = data.draw(st.sampled_from([1.0, 0.01, 1e-4]))
    scores = random_scores(tokens, n, seed=data.draw(st.integers(0, 999)))
    assert balance_loss(scores, k, alpha).item() == pytest.approx(loop_balance_loss(scores, k, alpha), rel=1e-9)


def test_balance_loss_is_alpha_when_balanced():
    # Each expert chosen by one of the two tokens (f_i = 1) and P_i = 1/2: the loss is exactly alpha.
    assert balance_loss(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), 1, 0.3).item() == pytest.approx(0.3)
    # All tokens on expert 0: f = [2, 0], P_0 = 0.9, so the loss is 1.8 alpha.
    assert balance_loss(torch.tensor([[0.9, 0.1], [0.9, 0.1]]), 1, 1.0).item() == pytest.approx(1.8)


def test_balance_loss_gradient_flows_through_p_only():
    scores = random_scores(6, 4, seed=3).requires_grad_()
    balance_loss(scores, 2, 1.0).backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 4), seq=st.integers(1, 6), n=st.integers(2, 6), seed=st.integers(0, 999))
def test_sequence_loss_is_mean_of_per_sequence_losses(batch, seq, n, seed):
    scores = random_scores(batch, seq, n, seed=seed)
    expected = sum(loop_balance_loss(scores[b], 2, 0.1) for b in range(batch)) / batch
    assert sequence_balance_loss(scores, 2, 0.1).item() == pytest.approx(expected, rel=1e-9)


def test_sequence_loss_differs_from_batch_loss():
    # Sequence 0 sends everything to expert 0, sequence 1 to expert 1: the batch looks balanced, no sequence is.
    scores = torch.tensor([[[0.9, 0.1], [0.9, 0.1]], [[0.1, 0.9], [0.1, 0.9]]])
    per_sequence = sequence_balance_loss(scores, 1, 1.0).item()
    whole_batch = balance_loss(scores.reshape(-1, 2), 1, 1.0).item()
    assert per_sequence == pytest.approx(1.8) and whole_batch == pytest.approx(1.0)


@pytest.mark.parametrize("call, error, phrase", [
    (lambda s: balance_loss(s, 5, 1.0), ValueError, "k must be an int"),
    (lambda s: balance_loss(s.unsqueeze(0), 2, 1.0), ValueError, "2-D"),
    (lambda s: balance_loss(s[:0], 2, 1.0), ValueError, "empty"),
    (lambda s: balance_loss(-s, 2, 1.0), ValueError, ">= 0"),
    (lambda s: balance_loss(s, 2, -1.0), ValueError, "alpha"),
    (lambda s: balance_loss(s.long(), 2, 1.0), TypeError, "floating-point"),
    (lambda s: sequence_balance_loss(s, 2, 1.0), ValueError, "3-D"),
])
def test_loss_bad_input(call, error, phrase):
    with pytest.raises(error, match=phrase):
        call(random_scores(3, 4))
