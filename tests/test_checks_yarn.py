"""Notebook 11's checkers: the references pass, a stub is reported, and each mistake of issue 21's catalogue,
written the way a learner writes it (loops and math, not the checker's own models), is rejected with its hint."""

import math

import pytest
import torch

from checking import rejected_with, stub
from course_lib.attention.yarn import yarn_frequencies
from course_lib.checks import CheckFailed, check_yarn_frequencies, check_yarn_softmax_scale, outcome
from course_lib.checks.yarn import yarn_softmax_scale


def learner_yarn(dim, base, factor, original_seq_len, beta_fast, beta_slow, *, reverse=False, betas_as_freq=False,
                 every_pair=False, by_feature=False, unrounded=False):
    """A learner's loop, right by default; each flag is one mistake."""
    def pair_for(rotations):
        if betas_as_freq:  # the pair whose frequency is beta
            return dim * math.log(1 / rotations) / (2 * math.log(base))
        return dim * math.log(original_seq_len / (2 * math.pi * rotations)) / (2 * math.log(base))
    low, high = pair_for(beta_fast), pair_for(beta_slow)
    if not unrounded:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    out = []
    for i in range(dim // 2):
        theta = base ** (-2 * i / dim)
        index = 2 * i if by_feature else i
        ramp = min(max((index - low) / max(high - low, 0.001), 0.0), 1.0)
        if reverse:
            ramp = 1 - ramp
        if every_pair:
            ramp = 1.0
        out.append(theta / factor * ramp + theta * (1 - ramp))
    return torch.tensor(out, dtype=torch.float32)


def test_references_pass():
    assert outcome(check_yarn_frequencies, yarn_frequencies) is True
    assert outcome(check_yarn_frequencies, learner_yarn) is True  # a float32 loop is right too
    assert outcome(check_yarn_softmax_scale, yarn_softmax_scale) is True


def test_stubs_return_false(capsys):
    assert outcome(check_yarn_frequencies, stub) is False
    assert outcome(check_yarn_softmax_scale, stub) is False
    assert capsys.readouterr().out.count("not implemented yet") == 2


@pytest.mark.parametrize("flag, hint", [
    ("reverse", "the ramp is reversed"),
    ("betas_as_freq", "used as frequencies"),
    ("every_pair", "position interpolation"),
    ("by_feature", "feature index 2i"),
    ("unrounded", "not rounded"),
])
def test_frequency_mistakes_are_named(flag, hint):
    rejected_with(check_yarn_frequencies, lambda *args: learner_yarn(*args, **{flag: True}), hint)


def test_ntk_is_named():
    def ntk(dim, base, factor, original_seq_len, beta_fast, beta_slow):
        new_base = base * factor ** (dim / (dim - 2))
        return torch.tensor([new_base ** (-2 * i / dim) for i in range(dim // 2)])
    rejected_with(check_yarn_frequencies, ntk, "NTK-aware")


@pytest.mark.parametrize("wrong, hint", [
    (lambda d, s, m: 1 / math.sqrt(d), "mscale is forgotten"),
    (lambda d, s, m: (0.1 * m * math.log(s) + 1) / math.sqrt(d), "applied once"),
    (lambda d, s, m: 1 / (math.sqrt(d) * (0.1 * m * math.log(s) + 1) ** 2), "divided by mscale"),
])
def test_softmax_scale_mistakes_are_named(wrong, hint):
    rejected_with(check_yarn_softmax_scale, wrong, hint)


def test_a_wrong_shape_is_explained():
    with pytest.raises(CheckFailed, match=r"shape \[16\].*shape \[8\]"):  # YaRN over the whole head, say
        check_yarn_frequencies(lambda dim, *rest: yarn_frequencies(2 * dim, *rest))
