"""The checker of notebook 08: the reference passes, the stub is reported, and each classic mistake of the greedy
verify-and-accept step, written the way a learner writes it, is rejected with its own hint; crashes are explained."""

import pytest
import torch

from course_lib.checks import check_accept_greedy, outcome
from course_lib.speculative import accept_greedy


def rejected_with(fn, *phrases):
    with pytest.raises(AssertionError) as info:
        check_accept_greedy(fn)
    for phrase in phrases:
        assert phrase in str(info.value), str(info.value)


def test_reference_and_loop_version_pass():
    def loop(drafts, main_tokens):
        out = []
        for j, draft in enumerate(drafts.tolist()):
            if draft != int(main_tokens[j]):
                break
            out.append(draft)
        return torch.tensor(out + [int(main_tokens[len(out)])])

    assert outcome(check_accept_greedy, accept_greedy) is True
    assert outcome(check_accept_greedy, loop) is True


def test_stub(capsys):
    def stub(drafts, main_tokens):
        raise NotImplementedError

    assert outcome(check_accept_greedy, stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_past_first_mismatch():
    def learner(drafts, main_tokens):  # counts every match
        m = int((drafts == main_tokens[:-1]).sum())
        return torch.cat([drafts[:m], main_tokens[m:m + 1]])

    rejected_with(learner, "past the first mismatch")


def test_dropped_bonus_token():
    def learner(drafts, main_tokens):
        out = []
        for j, draft in enumerate(drafts.tolist()):
            if draft != int(main_tokens[j]):
                return torch.tensor(out + [int(main_tokens[j])])
            out.append(draft)
        return torch.tensor(out, dtype=torch.int64)

    rejected_with(learner, "main model's own token")


def test_off_by_one():
    def learner(drafts, main_tokens):
        out = []
        for j, draft in enumerate(drafts.tolist()):
            if draft != int(main_tokens[j + 1]):
                break
            out.append(draft)
        return torch.tensor(out + [int(main_tokens[len(out)])])

    rejected_with(learner, "off-by-one")


def test_unverified_tokens():
    def learner(drafts, main_tokens):
        return torch.cat([drafts, main_tokens[-1:]])

    rejected_with(learner, "without verification")


def test_crash_is_explained():
    def learner(drafts, main_tokens):
        return drafts[10]

    rejected_with(learner, "raised IndexError")
