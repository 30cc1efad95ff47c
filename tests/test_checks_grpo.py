"""Notebook 14's checkers: the references pass, a stub is reported, and each mistake of issue 24's catalogue,
written the way a learner writes it (loops and plain tensor code, not the checker's own models), is rejected with
its hint."""

import math

import pytest
import torch

from checking import rejected_with, stub
from course_lib.checks import check_group_advantages, check_grpo_loss, outcome
from course_lib.post_training.grpo import group_advantages, grpo_loss


def learner_advantages(rewards, eps, *, whole_batch=False, no_eps=False, no_divide=False, no_centre=False,
                       population=False):
    """A learner's loop over the groups, right by default; each flag is one mistake."""
    out = torch.empty_like(rewards)
    everything = rewards.flatten().tolist()
    for p in range(rewards.shape[0]):
        group = everything if whole_batch else rewards[p].tolist()
        mean = sum(group) / len(group)
        var = sum((r - mean) ** 2 for r in group) / (len(group) - (0 if population else 1))
        std = math.sqrt(var) + (0.0 if no_eps else eps)
        for i, r in enumerate(rewards[p].tolist()):
            centred = r if no_centre else r - mean
            out[p, i] = centred if no_divide else (centred / std if std else float("nan"))
    return out


def learner_loss(logp, old_logp, ref_logp, advantages, mask, clip_eps, beta, *, clip_advantage=False,
                 max_for_negative=False, kl_plus=False, k1=False, token_mean=False, no_detach=False):
    """A learner's loss, right by default; each flag is one mistake."""
    if not no_detach:
        old_logp, ref_logp = old_logp.detach(), ref_logp.detach()
    ratio = (logp - old_logp).exp()
    A = advantages.unsqueeze(1)
    unclipped = ratio * A
    clipped = ratio * A.clamp(1 - clip_eps, 1 + clip_eps) if clip_advantage else ratio.clamp(1 - clip_eps,
                                                                                              1 + clip_eps) * A
    if max_for_negative:
        surrogate = torch.where(A >= 0, torch.min(unclipped, clipped), torch.max(unclipped, clipped))
    else:
        surrogate = torch.min(unclipped, clipped)
    kl = logp - ref_logp if k1 else (ref_logp - logp).exp() - (ref_logp - logp) - 1
    objective = surrogate + beta * kl if kl_plus else surrogate - beta * kl
    m = mask.float().to(logp.dtype)
    if token_mean:
        return -(objective * m).sum() / m.sum()
    return -((objective * m).sum(dim=1) / m.sum(dim=1)).mean()


def test_references_pass():
    assert outcome(check_group_advantages, group_advantages) is True
    assert outcome(check_group_advantages, learner_advantages) is True
    assert outcome(check_grpo_loss, grpo_loss) is True
    assert outcome(check_grpo_loss, learner_loss) is True


def test_stubs_return_false(capsys):
    assert outcome(check_group_advantages, stub) is False
    assert outcome(check_grpo_loss, stub) is False
    assert capsys.readouterr().out.count("not implemented yet") == 2


@pytest.mark.parametrize("flag, hint", [
    ("whole_batch", "over the whole batch"),
    ("no_eps", "gives NaN"),
    ("no_divide", "nothing is divided"),
    ("no_centre", "not centred"),
    ("population", "population std"),
])
def test_advantage_mistakes_are_named(flag, hint):
    rejected_with(check_group_advantages, lambda *args: learner_advantages(*args, **{flag: True}), hint)


@pytest.mark.parametrize("flag, hint", [
    ("clip_advantage", "clip looks applied to the advantage"),
    ("max_for_negative", "max is taken instead of the min"),
    ("kl_plus", "wrong sign"),
    ("k1", "k1 estimator"),
    ("token_mean", "averaged over the whole batch"),
    ("no_detach", "gradients flow into old_logp or ref_logp"),
])
def test_loss_mistakes_are_named(flag, hint):
    rejected_with(check_grpo_loss, lambda *args: learner_loss(*args, **{flag: True}), hint)
