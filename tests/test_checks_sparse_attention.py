"""Notebook 15's checkers: the references pass, a stub is reported, and each mistake of issue 25's catalogue,
written the way a learner writes it (loops and plain tensor code, not the checker's own models), is rejected with
its hint."""

import pytest
import torch

from checking import rejected_with, stub
from course_lib.attention.indexer import index_scores, top_k_selection
from course_lib.checks import check_index_scores, check_top_k_mask, outcome


def learner_scores(q_index, k_index, weights, *, softmax=False, summed_weights=False, weights_inside=False,
                   future=False):
    """A learner's loop over queries and keys, right by default; each flag is one mistake."""
    B, T, H, _ = q_index.shape
    out = torch.empty(B, T, T)
    for b in range(B):
        for t in range(T):
            dots = q_index[b, t] @ k_index[b].T  # [H, T]: every head against every key
            if softmax:
                dots = dots.masked_fill(torch.arange(T) > t, float("-inf")).softmax(-1)
            for s in range(T):
                if s > t and not future:
                    out[b, t, s] = float("-inf")
                elif summed_weights:
                    out[b, t, s] = weights[b, t].sum() * dots[:, s].relu().sum()
                elif weights_inside:
                    out[b, t, s] = (weights[b, t] @ dots[:, s]).relu()
                else:
                    out[b, t, s] = (weights[b, t] * dots[:, s].relu()).sum()
    return out


def learner_top_k(scores, index_topk, *, future=False, wrong_axis=False):
    """A learner's selection, right by default; each flag is one mistake."""
    axis = -2 if wrong_axis else -1
    k = min(index_topk, scores.shape[axis])
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen.scatter_(axis, scores.topk(k, dim=axis).indices, True)
    return chosen if future else chosen & (scores > float("-inf"))


def test_references_pass():
    assert outcome(check_index_scores, index_scores) is True
    assert outcome(check_index_scores, learner_scores) is True
    assert outcome(check_top_k_mask, top_k_selection) is True
    assert outcome(check_top_k_mask, learner_top_k) is True


def test_stubs_return_false(capsys):
    assert outcome(check_index_scores, stub) is False
    assert outcome(check_top_k_mask, stub) is False
    assert capsys.readouterr().out.count("not implemented yet") == 2


@pytest.mark.parametrize("flag, hint", [
    ("softmax", "softmax instead of ReLU"),
    ("summed_weights", "the weights are not applied per indexer head"),
    ("weights_inside", "the weights are applied inside the ReLU"),
    ("future", "future tokens are left in"),
])
def test_score_mistakes_are_named(flag, hint):
    rejected_with(check_index_scores, lambda *args: learner_scores(*args, **{flag: True}), hint)


@pytest.mark.parametrize("flags, hint", [
    (dict(future=True), "future tokens are selectable"),
    (dict(wrong_axis=True), "the top-k runs over the wrong axis: you kept, for each KEY"),
    (dict(wrong_axis=True, future=True), "and future tokens are selectable too"),
])
def test_selection_mistakes_are_named(flags, hint):
    rejected_with(check_top_k_mask, lambda *args: learner_top_k(*args, **flags), hint)


def test_topk_without_min_explains_the_crash():
    """torch.topk(index_topk) on fewer keys than index_topk raises; the checker names the missing min(k, T)."""
    def no_min(scores, index_topk):
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, scores.topk(index_topk, dim=-1).indices, True)
        return chosen & (scores > float("-inf"))

    rejected_with(check_top_k_mask, no_min, "k = min(index_topk, T)")


def test_a_float_mask_and_float64_scores_pass():
    assert outcome(check_top_k_mask, lambda scores, k: learner_top_k(scores, k).float()) is True
    assert outcome(check_index_scores, lambda q, k, w: index_scores(q, k, w).double()) is True


def test_half_precision_scores_are_explained():
    """Scores returned in float16 or bfloat16 print like the expected ones at 4 digits: the message names the dtype."""
    for dtype in (torch.float16, torch.bfloat16):
        rejected_with(check_index_scores, lambda q, k, w: index_scores(q, k, w).to(dtype), f"dtype {dtype}")
