"""The checkers of notebooks 01-03: the references pass, stubs are reported, and each common mistake, written the
way a learner writes it, is rejected with its own hint; a learner's crash is explained, never raised."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checking import rejected_with, stub
from course_lib.moe import balance, routing
from course_lib.checks import (CheckFailed, outcome, check_balance_loss, check_expert_load, check_max_violation,
                               check_sequence_balance_loss, check_topk_route, check_update_bias)


def test_references_pass():
    assert outcome(check_topk_route, routing.topk_route) is True
    assert outcome(check_topk_route, lambda scores, k: routing.topk_route(scores, k), bias=False) is True
    assert outcome(check_expert_load, balance.expert_load) is True
    assert outcome(check_max_violation, balance.max_violation) is True
    assert outcome(check_update_bias, balance.update_bias) is True
    assert outcome(check_balance_loss, balance.balance_loss) is True
    assert outcome(check_sequence_balance_loss, balance.sequence_balance_loss) is True


def test_stubs_return_false(capsys):
    checks = [check_topk_route, check_expert_load, check_max_violation, check_update_bias, check_balance_loss,
              check_sequence_balance_loss]
    assert all(outcome(check, stub) is False for check in checks)
    assert outcome(check_topk_route, stub, bias=False) is False
    assert capsys.readouterr().out.count("not implemented yet") == len(checks) + 1


# ------------------------------------------------------------------ topk_route, written the way learners do
def route_sorted_ascending(scores, k, bias):
    # A correct route whose experts come in increasing id order: the checker must accept any order.
    weights, indices = routing.topk_route(scores, k, bias)
    order = indices.argsort(-1)
    return weights.gather(-1, order), indices.gather(-1, order)


def route_with_loop_and_sort(scores, k, bias):
    # Right values, but the weights are rebuilt from Python floats: no gradient reaches the router.
    weights, indices = [], []
    for token_scores in scores:
        chosen = sorted(range(len(token_scores)), key=lambda i: float(token_scores[i] + bias[i]))[-k:]
        total = sum(float(token_scores[i]) for i in chosen)
        weights.append([float(token_scores[i]) / total for i in chosen])
        indices.append(chosen)
    return torch.tensor(weights), torch.tensor(indices)


def test_correct_variants_pass():
    assert outcome(check_topk_route, route_sorted_ascending) is True
    with pytest.raises(CheckFailed, match="carries no gradient"):
        check_topk_route(route_with_loop_and_sort)


def biased_weights(scores, k, bias):
    biased = scores + bias
    values, indices = torch.topk(biased, k)
    return values / values.sum(dim=1, keepdim=True), indices


def not_renormalised(scores, k, bias):
    indices = torch.topk(scores + bias, k).indices
    return torch.gather(scores, 1, indices), indices


def normalised_over_all(scores, k, bias):
    normalised = scores / scores.sum(dim=-1, keepdim=True)
    indices = torch.topk(scores + bias, k).indices
    return normalised.gather(1, indices), indices


def softmax_over_all(scores, k, bias):
    probs = F.softmax(scores, dim=-1)
    indices = (scores + bias).topk(k, dim=-1)[1]
    return probs.gather(-1, indices), indices


def softmax_over_chosen(scores, k, bias):
    indices = (scores + bias).topk(k, dim=-1)[1]
    return F.softmax(scores.gather(-1, indices), dim=-1), indices


def bias_ignored(scores, k, bias):
    values, indices = scores.topk(k)
    return values / values.sum(-1, keepdim=True), indices


def bias_subtracted(scores, k, bias):
    indices = (scores - bias).topk(k).indices
    chosen = scores.gather(1, indices)
    return chosen / chosen.sum(1, keepdim=True), indices


def lowest_chosen(scores, k, bias):
    indices = torch.argsort(scores + bias, dim=-1)[:, :k]
    chosen = scores.gather(1, indices)
    return chosen / chosen.sum(1, keepdim=True), indices


def swapped_outputs(scores, k, bias):
    weights, indices = routing.topk_route(scores, k, bias)
    return indices, weights


def float_indices(scores, k, bias):
    weights, indices = routing.topk_route(scores, k, bias)
    return weights, indices.float()


def shape_bug(scores, k, bias):
    indices = (scores + bias).topk(k).indices
    chosen = scores.gather(1, indices)
    return chosen / chosen.sum(dim=2, keepdim=True), indices  # there is no dimension 2: IndexError


def wrong_shape(scores, k, bias):
    weights, indices = routing.topk_route(scores, k, bias)
    return weights.flatten(), indices


@pytest.mark.parametrize("wrong, phrase", [
    (biased_weights, "the weights include the bias"),
    (not_renormalised, "do not sum to 1"),
    (normalised_over_all, "normalised over ALL experts"),
    (softmax_over_all, "softmax over all experts"),
    (softmax_over_chosen, "softmax over the chosen scores"),
    (bias_ignored, "ignores the bias"),
    (bias_subtracted, "bias is subtracted"),
    (lowest_chosen, "LOWEST"),
    (swapped_outputs, "return (weights, indices), weights first"),
    (float_indices, "int64 was expected"),
    (wrong_shape, "should be [tokens, k]"),
])
def test_topk_route_mistakes_are_named(wrong, phrase):
    rejected_with(check_topk_route, wrong, phrase)


@pytest.mark.parametrize("wrong, phrase", [
    (lambda s, k: (s.topk(k).values, s.topk(k).indices), "do not sum to 1"),
    (lambda s, k: (F.softmax(s, -1).topk(k).values, s.topk(k).indices), "softmax over all experts"),
])
def test_unbiased_topk_route_mistakes_are_named(wrong, phrase):
    rejected_with(check_topk_route, wrong, phrase, bias=False)


def test_a_learner_crash_is_explained_not_raised():
    message = rejected_with(check_topk_route, shape_bug, "raised IndexError")
    assert "in " in message and "Hint" in message


def test_messages_say_what_was_seen_and_expected():
    message = rejected_with(check_topk_route, biased_weights, "For the input scores=")
    assert "your weights are" in message and "but they should be" in message and "Likely cause" in message


# ------------------------------------------------------------------ expert_load
def load_int(indices, n_experts):
    return torch.bincount(indices.view(-1), minlength=n_experts)


def load_per_token(indices, n_experts):
    load = torch.zeros(n_experts)
    for token in indices:
        load[token[0]] += 1  # only the first choice
    return load


def load_averaged_over_k(indices, n_experts):
    return F.one_hot(indices, n_experts).float().sum(dim=(0, 1)) / indices.shape[1]


def load_as_fraction(indices, n_experts):
    counts = torch.bincount(indices.flatten(), minlength=n_experts).float()
    return counts / counts.sum()


def load_without_minlength(indices, n_experts):
    return torch.bincount(indices.flatten()).float()


def load_one_hot_one_dim(indices, n_experts):
    return F.one_hot(indices, n_experts).sum(dim=0).float()


@pytest.mark.parametrize("wrong, phrase", [
    (load_int, "Return float32 counts"),
    (load_per_token, "first expert is counted"),
    (load_averaged_over_k, "divided by k"),
    (load_as_fraction, "fractions that sum to 1"),
    (load_without_minlength, "minlength=n_experts"),
    (load_one_hot_one_dim, "summed over the tokens only"),
])
def test_expert_load_mistakes_are_named(wrong, phrase):
    rejected_with(check_expert_load, wrong, phrase)


def test_expert_load_loop_version_passes():
    def loop(indices, n_experts):
        load = torch.zeros(n_experts)
        for row in indices.tolist():
            for e in row:
                load[e] += 1
        return load
    assert outcome(check_expert_load, loop) is True


# ------------------------------------------------------------------ max_violation
@pytest.mark.parametrize("wrong, phrase", [
    (lambda load: (load.max() / load.mean()).item(), "max / mean"),
    (lambda load: ((load.max() - load.min()) / load.mean()).item(), "(max - min) / mean"),
    (lambda load: float(load.std() / load.mean()), "coefficient of variation"),
    (lambda load: float(load.std(unbiased=False) / load.mean()), "population std"),
    (lambda load: float((load.max() - load.mean()) / load.max()), "divided by the max"),
    (lambda load: float(load.max() - load.mean()), "did not divide by the mean"),
    (lambda load: float((load.mean() - load.min()) / load.mean()), "least loaded"),
])
def test_max_violation_mistakes_are_named(wrong, phrase):
    rejected_with(check_max_violation, wrong, phrase)


def test_max_violation_may_return_a_tensor():
    assert outcome(check_max_violation, lambda load: (load.max() - load.mean()) / load.mean()) is True


# ------------------------------------------------------------------ update_bias
def bias_sign_reversed(bias, load, gamma):
    with torch.no_grad():
        return bias + gamma * torch.sign(load - load.mean())


def bias_proportional(bias, load, gamma):
    with torch.no_grad():
        return bias + gamma * (load.mean() - load)


def bias_relative(bias, load, gamma):
    with torch.no_grad():
        return bias + gamma * (load.mean() - load) / load.mean()


def bias_forgets_old(bias, load, gamma):
    return gamma * torch.sign(load.mean() - load)


def bias_multiplicative(bias, load, gamma):
    with torch.no_grad():
        return bias * (1 + gamma * torch.sign(load.mean() - load))


def bias_against_total(bias, load, gamma):
    with torch.no_grad():
        return bias + gamma * torch.sign(load.sum() - load)


def bias_with_grad(bias, load, gamma):
    return bias + gamma * torch.sign(load.mean() - load)  # fine numerically, but tracked by autograd


def bias_in_place(bias, load, gamma):
    with torch.no_grad():
        bias += gamma * torch.sign(load.mean() - load)
    return bias


@pytest.mark.parametrize("wrong, phrase", [
    (bias_sign_reversed, "sign is reversed"),
    (bias_proportional, "proportional to the gap"),
    (bias_relative, "relative gap"),
    (bias_forgets_old, "old bias is lost"),
    (bias_multiplicative, "multiplicative"),
    (bias_against_total, "instead of the mean"),
    (bias_with_grad, "requires_grad=True"),
    (bias_in_place, "in place"),
])
def test_update_bias_mistakes_are_named(wrong, phrase):
    rejected_with(check_update_bias, wrong, phrase)


# ------------------------------------------------------------------ balance losses
def loss_parts(scores, k, normalise=True, top=None):
    n, t = scores.shape[-1], scores.shape[-2]
    top_idx = scores.topk(top or k, dim=-1).indices
    counts = F.one_hot(top_idx, n).sum(dim=-2).sum(dim=-2).float()
    probs = scores / scores.sum(-1, keepdim=True) if normalise else scores
    return counts, probs.mean(dim=-2), n, t


def loss_no_factor(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k)
    return alpha * (counts * p).sum()


def loss_over_t(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k)
    return alpha * (counts / t * p).sum()


def loss_missing_n(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k)
    return alpha * (counts / (k * t) * p).sum()


def loss_missing_k(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k)
    return alpha * (n / t * counts * p).sum()


def loss_raw_p(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k, normalise=False)
    return alpha * (n / (k * t) * counts * p).sum()


def loss_softmax_p(scores, k, alpha):
    counts, _, n, t = loss_parts(scores, k)
    return alpha * (n / (k * t) * counts * F.softmax(scores, -1).mean(0)).sum()


def loss_top1(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k, top=1)
    return alpha * (n / (k * t) * counts * p).sum()


def loss_mean_over_experts(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k)
    return alpha * (n / (k * t) * counts * p).mean()


def loss_as_float(scores, k, alpha):
    return balance.balance_loss(scores, k, alpha).item()


def loss_no_alpha(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k)
    return (n / (k * t) * counts * p).sum()


def loss_crash(scores, k, alpha):
    counts, p, n, t = loss_parts(scores, k)
    return alpha * (counts * p).sum()[0]  # indexes a 0-d tensor: crashes


@pytest.mark.parametrize("wrong, phrase", [
    (loss_no_factor, "factor N / (K T) is missing"),
    (loss_over_t, "divided by T only"),
    (loss_missing_n, "the N of N / (K T) is missing"),
    (loss_missing_k, "the K of N / (K T) is missing"),
    (loss_raw_p, "raw sigmoid scores"),
    (loss_softmax_p, "softmax of the scores"),
    (loss_top1, "top-1"),
    (loss_mean_over_experts, "MEAN of f_i P_i"),
    (loss_as_float, "scalar torch tensor was expected"),
    (loss_no_alpha, "alpha is missing"),
    (loss_crash, "raised IndexError"),
])
def test_balance_loss_mistakes_are_named(wrong, phrase):
    rejected_with(check_balance_loss, wrong, phrase)


def test_balance_loss_loop_version_passes():
    def loop(scores, k, alpha):
        t, n = scores.shape
        total = torch.zeros(())
        for i in range(n):
            hits = sum(1 for row in scores if i in row.topk(k).indices.tolist())
            p = sum(row[i] / row.sum() for row in scores) / t
            total = total + n / (k * t) * hits * p
        return alpha * total
    assert outcome(check_balance_loss, loop) is True


def seq_over_whole_batch(scores, k, alpha):
    flat = scores.reshape(-1, scores.shape[-1])
    return loss_missing_n(flat, k, alpha) * flat.shape[-1]


def seq_summed(scores, k, alpha):
    return sum(balance.balance_loss(seq, k, alpha) for seq in scores)


def seq_divides_by_all_tokens(scores, k, alpha):
    b, t, n = scores.shape
    losses = []
    for seq in scores:
        counts, p, _, _ = loss_parts(seq, k)
        losses.append(alpha * (n / (k * b * t) * counts * p).sum())
    return torch.stack(losses).mean()


def seq_raw_p(scores, k, alpha):
    return torch.stack([loss_raw_p(seq, k, alpha) for seq in scores]).mean()


def seq_no_factor(scores, k, alpha):
    return torch.stack([loss_no_factor(seq, k, alpha) for seq in scores]).mean()


@pytest.mark.parametrize("wrong, phrase", [
    (seq_over_whole_batch, "over the whole batch at once"),
    (seq_summed, "summed over the batch"),
    (seq_divides_by_all_tokens, "ONE sequence"),
    (seq_raw_p, "raw sigmoid scores"),
    (seq_no_factor, "factor N / (K T) is missing"),
])
def test_sequence_balance_loss_mistakes_are_named(wrong, phrase):
    rejected_with(check_sequence_balance_loss, wrong, phrase)


def test_sequence_balance_loss_vectorised_variant_passes():
    def vectorised(scores, k, alpha):
        b, t, n = scores.shape
        counts = F.one_hot(scores.topk(k, dim=-1).indices, n).sum(dim=(1, 2)).float()  # [b, n]
        f = n / (k * t) * counts
        p = (scores / scores.sum(-1, keepdim=True)).mean(dim=1)
        return alpha * (f * p).sum(-1).mean()
    assert outcome(check_sequence_balance_loss, vectorised) is True


# ------------------------------------------------------------------ right values, wrong gradients
def balance_loss_detached(scores, k, alpha):
    scores = scores.detach()  # "the loss only reads the scores"
    return balance.balance_loss(scores, k, alpha)


def balance_loss_soft_counts(scores, k, alpha):
    T, N = scores.shape
    top = scores.topk(k, dim=-1)
    hits = torch.zeros_like(scores).scatter(-1, top.indices, top.values / top.values.detach())  # 1.0 where chosen
    f = N / (k * T) * hits.sum(0)
    P = (scores / scores.sum(-1, keepdim=True)).mean(0)
    return alpha * (f * P).sum()


def balance_loss_straight_through_counts(scores, k, alpha):
    T, N = scores.shape
    hits = torch.zeros_like(scores).scatter(-1, scores.topk(k, dim=-1).indices, 1.0)
    hits = hits + scores - scores.detach()  # "so that the counts stay in the graph"
    P = (scores / scores.sum(-1, keepdim=True)).mean(0)
    return alpha * (N / (k * T) * hits.sum(0) * P).sum()


def balance_loss_from_item(scores, k, alpha):
    return torch.tensor(balance.balance_loss(scores, k, alpha).item())


def sequence_loss_detached(scores, k, alpha):
    return torch.stack([balance.balance_loss(seq.detach(), k, alpha) for seq in scores]).mean()


def route_detached_weights(scores, k, bias):
    indices = (scores + bias).topk(k, dim=-1).indices
    chosen = scores.detach().gather(1, indices)
    return chosen / chosen.sum(-1, keepdim=True), indices


@pytest.mark.parametrize("check, wrong, phrase", [
    (check_balance_loss, balance_loss_detached, "carries no gradient"),
    (check_balance_loss, balance_loss_from_item, "carries no gradient"),
    (check_balance_loss, balance_loss_soft_counts, "hit counts f"),
    (check_balance_loss, balance_loss_straight_through_counts, "hit counts f carry a gradient"),
    (check_sequence_balance_loss, sequence_loss_detached, "carries no gradient"),
    (check_topk_route, route_detached_weights, "carries no gradient"),
])
def test_wrong_gradients_are_named(check, wrong, phrase):
    message = rejected_with(check, wrong, phrase)
    assert "gives the right value" in message


def test_route_hint_without_bias_does_not_mention_the_bias():
    """Notebook 01 meets topk_route before notebook 03 introduces the bias."""
    message = rejected_with(check_topk_route, lambda scores, k: (scores.topk(k).values * 2, scores.topk(k).indices),
                            "Hint:", bias=False)
    assert "bias" not in message.split("Hint:")[1]


def test_a_pair_of_numpy_arrays_is_named_as_such():
    """A learner who built the answer with numpy sees what is wrong with it, not 'returned tuple, but a tuple...'."""
    def numpy_route(scores, k):
        chosen = np.argsort(-scores.detach().numpy(), axis=-1)[:, :k]
        weights = np.take_along_axis(scores.detach().numpy(), chosen, axis=-1)
        return weights / weights.sum(-1, keepdims=True), chosen
    with pytest.raises(CheckFailed, match=r"a pair of \(ndarray, ndarray\).*torch tensors"):
        check_topk_route(numpy_route, bias=False)
