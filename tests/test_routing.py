"""routing.topk_route and affinity_scores: against slow per-token loop versions, property tests, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.moe.routing import affinity_scores, topk_route


# ------------------------------------------------------------------------------------------ slow references
def loop_topk_route(scores, k, bias=None, n_groups=1, topk_groups=1, route_scale=1.0):
    """One token at a time, with Python lists: the definition of [V3] 2.1.2 and [CODE] Gate, read literally."""
    n = scores.shape[1]
    size = n // n_groups
    all_weights, all_indices = [], []
    for row in scores.tolist():
        biased = [row[i] + (float(bias[i]) if bias is not None else 0.0) for i in range(n)]
        if n_groups > 1:
            group_score = []
            for g in range(n_groups):
                members = sorted(biased[g * size:(g + 1) * size], reverse=True)
                group_score.append(sum(members[:2]))
            kept = sorted(range(n_groups), key=lambda g: -group_score[g])[:topk_groups]
            biased = [biased[i] if i // size in kept else -math.inf for i in range(n)]
        chosen = sorted(range(n), key=lambda i: -biased[i])[:k]
        total = sum(row[i] for i in chosen)
        all_weights.append([row[i] / total * route_scale for i in chosen])
        all_indices.append(chosen)
    return torch.tensor(all_weights, dtype=scores.dtype), torch.tensor(all_indices)


def random_scores(tokens, n_experts, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.sigmoid(torch.randn(tokens, n_experts, generator=g, dtype=dtype))


# ------------------------------------------------------------------------------------------ agreement
@pytest.mark.parametrize("tokens, n, k, n_groups, topk_groups, use_bias, scale", [
    (5, 8, 2, 1, 1, False, 1.0),
    (7, 8, 3, 1, 1, True, 1.0),
    (6, 16, 4, 4, 2, True, 2.5),
    (9, 12, 2, 3, 1, True, 1.0),
    (4, 32, 8, 8, 4, True, 2.5),  # V3's proportions: 8 groups, 4 kept, K = 8
    (3, 6, 6, 1, 1, True, 1.0),  # k = n_experts
    (5, 8, 1, 8, 3, False, 1.0),  # groups of one expert
])
def test_matches_loop_version(tokens, n, k, n_groups, topk_groups, use_bias, scale):
    scores = random_scores(tokens, n, seed=n + k)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(1)) * 0.3 if use_bias else None
    weights, indices = topk_route(scores, k, bias, n_groups=n_groups, topk_groups=topk_groups, route_scale=scale)
    expected_w, expected_i = loop_topk_route(scores, k, bias, n_groups, topk_groups, scale)
    assert indices.dtype == torch.int64 and weights.dtype == scores.dtype
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(weights, expected_w)


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(1, 12), group_size=st.integers(1, 5), n_groups=st.integers(1, 4), data=st.data())
def test_properties_random_shapes(tokens, group_size, n_groups, data):
    n = group_size * n_groups
    topk_groups = data.draw(st.integers(1, n_groups))
    k = data.draw(st.integers(1, topk_groups * group_size))
    seed = data.draw(st.integers(0, 2**16))
    scale = data.draw(st.sampled_from([1.0, 2.5]))
    scores = random_scores(tokens, n, seed=seed, dtype=torch.float64)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    weights, indices = topk_route(scores, k, bias, n_groups, topk_groups, scale)
    assert weights.shape == indices.shape == (tokens, k)
    torch.testing.assert_close(weights.sum(-1), torch.full((tokens,), scale, dtype=torch.float64))
    assert (weights > 0).all()
    for row in indices.tolist():
        assert len(set(row)) == k and all(0 <= i < n for i in row)
        assert len({i // group_size for i in row}) <= topk_groups
    expected_w, expected_i = loop_topk_route(scores, k, bias, n_groups, topk_groups, scale)
    assert torch.equal(indices, expected_i)
    torch.testing.assert_close(weights, expected_w)


def test_bias_chooses_but_does_not_weigh():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.2]])
    bias = torch.tensor([0.0, 0.0, 1.0, 0.0])
    weights, indices = topk_route(scores, 2, bias)
    assert indices.tolist() == [[2, 0]]  # expert 2 chosen thanks to its bias ...
    torch.testing.assert_close(weights, torch.tensor([[0.1, 0.9]]))  # ... but weighed by its own score 0.1


def test_dropped_groups_are_minus_infinity_not_zero():
    # Every biased score is negative. Group 1 (experts 2, 3) is dropped; with a 0 mask its experts would score 0
    # and beat the kept group's -0.3 and -0.4. With -inf (the paper and [CODE]) the kept group is used.
    scores = torch.tensor([[0.5, 0.4, 0.2, 0.1]])
    bias = torch.full((4,), -0.8)
    _, indices = topk_route(scores, 2, bias, n_groups=2, topk_groups=1)
    assert indices.tolist() == [[0, 1]]


def test_group_score_is_sum_of_two_best_not_max():
    # Group 0 has the single best expert (0.95) but group 1 has the better pair (0.8 + 0.8 > 0.95 + 0.1).
    scores = torch.tensor([[0.95, 0.1, 0.8, 0.8]])
    _, indices = topk_route(scores, 2, n_groups=2, topk_groups=1)
    assert sorted(indices.tolist()[0]) == [2, 3]


def test_gradient_reaches_scores_not_bias():
    scores = random_scores(4, 8).requires_grad_()
    bias = torch.zeros(8, requires_grad=True)
    weights, _ = topk_route(scores, 3, bias)
    (weights * torch.arange(3.0)).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    assert bias.grad is None


def test_route_scale_multiplies_normalised_weights():
    scores = random_scores(6, 8)
    w1, i1 = topk_route(scores, 2)
    w25, i25 = topk_route(scores, 2, route_scale=2.5)
    assert torch.equal(i1, i25)
    torch.testing.assert_close(w25, 2.5 * w1)


def test_affinity_scores_match_loop():
    g = torch.Generator().manual_seed(0)
    x, centroids = torch.randn(2, 3, 5, generator=g), torch.randn(4, 5, generator=g)
    got = affinity_scores(x, centroids)
    assert got.shape == (2, 3, 4)
    for b in range(2):
        for t in range(3):
            for i in range(4):
                dot = sum(float(x[b, t, d]) * float(centroids[i, d]) for d in range(5))
                assert got[b, t, i].item() == pytest.approx(1 / (1 + math.exp(-dot)), rel=1e-5)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("call, error, phrase", [
    (lambda s: topk_route(s, 9), ValueError, "k <= n_experts"),
    (lambda s: topk_route(s, 0), ValueError, "k must be an int >= 1"),
    (lambda s: topk_route(s, 2.0), TypeError, "must be an int"),
    (lambda s: topk_route(s, 2, torch.zeros(7)), ValueError, "shape [8]"),
    (lambda s: topk_route(s[0], 2), ValueError, "2-D"),
    (lambda s: topk_route(s[:0], 2), ValueError, "empty"),
    (lambda s: topk_route(s.long(), 2), TypeError, "floating-point"),
    (lambda s: topk_route(s * float("nan"), 2), ValueError, "NaN"),
    (lambda s: topk_route(s - 1, 2), ValueError, "apply sigmoid"),
    (lambda s: topk_route(s, 2, n_groups=3), ValueError, "divisible by n_groups"),
    (lambda s: topk_route(s, 2, n_groups=4, topk_groups=5), ValueError, "exceeds n_groups"),
    (lambda s: topk_route(s, 5, n_groups=4, topk_groups=2), ValueError, "kept group(s) hold only 4"),
    (lambda s: affinity_scores(s, torch.zeros(3, 5)), ValueError, "to match centroids"),
])
def test_bad_input_says_what_was_expected(call, error, phrase):
    with pytest.raises(error) as info:
        call(random_scores(4, 8))
    assert phrase in str(info.value)
