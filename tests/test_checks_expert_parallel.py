"""The send-splits checker of notebook 09: the reference passes, a stub is reported, and each mistake, written the
way a learner writes it, is rejected with its own hint; a learner's crash is explained, never raised."""

import pytest
import torch


from course_lib import expert_parallel
from course_lib.checks import check_send_splits, outcome
from course_lib.checks.expert_parallel import _MISTAKES, EXAMPLE_INDICES


def rejected_with(fn, phrase):
    with pytest.raises(AssertionError) as info:
        check_send_splits(fn)
    assert phrase in str(info.value), str(info.value)


def test_reference_and_other_right_answers_pass():
    assert outcome(check_send_splits, expert_parallel.send_splits) is True
    assert outcome(check_send_splits, lambda i, e, w: torch.bincount((i // (e // w)).flatten(), minlength=w)) is True
    assert outcome(check_send_splits, lambda i, e, w: tuple(float(x) for x in expert_parallel.send_splits(i, e, w))) is True


def test_stub_returns_false(capsys):
    def stub(indices, n_experts, world_size):
        raise NotImplementedError()
    assert outcome(check_send_splits, stub) is False
    assert "not implemented yet" in capsys.readouterr().out


def test_every_mistake_differs_from_the_reference_on_a_fixed_case():
    empty_last_ranks = torch.tensor([[0, 1], [2, 3], [1, 2]])  # ranks 2 and 3 get nothing
    for m in _MISTAKES:
        assert any(m.fn(indices, 8, 4) != expert_parallel.send_splits(indices, 8, 4)
                   for indices in (EXAMPLE_INDICES, empty_last_ranks)), m.hint


def per_token(indices, n_experts, world_size):
    splits = [0] * world_size
    for experts in indices.tolist():
        splits[experts[0] // (n_experts // world_size)] += 1
    return splits


def once_per_rank(indices, n_experts, world_size):
    splits = [0] * world_size
    for experts in indices.tolist():
        for rank in {e // (n_experts // world_size) for e in experts}:
            splits[rank] += 1
    return splits


def expert_order(indices, n_experts, world_size):
    return torch.bincount(indices.flatten(), minlength=n_experts).tolist()


def strided(indices, n_experts, world_size):
    load = torch.bincount(indices.flatten(), minlength=n_experts)
    return load.view(-1, world_size).sum(0).tolist()


def divided_by_ranks(indices, n_experts, world_size):
    splits = [0] * world_size
    for e in indices.flatten().tolist():
        splits[min(e // world_size, world_size - 1)] += 1
    return splits


def test_mistakes_are_named():
    rejected_with(per_token, "one row per TOKEN")
    rejected_with(once_per_rank, "travels twice")
    rejected_with(expert_order, "one split per RANK")
    rejected_with(strided, "placed contiguously")
    rejected_with(divided_by_ranks, "e // world_size")


def test_a_crash_or_a_wrong_type_is_explained():
    rejected_with(lambda i, e, w: i, "list of whole numbers")  # 2-D
    rejected_with(lambda i, e, w: i[:, 0], "5 entries")
    rejected_with(lambda i, e, w: [x / 2 for x in range(w)], "list of whole numbers")
    rejected_with(lambda i, e, w: i[100], "raised IndexError")


def test_bincount_without_minlength_is_named():
    def no_minlength(indices, n_experts, world_size):
        return torch.bincount((indices // (n_experts // world_size)).reshape(-1)).tolist()
    with pytest.raises(AssertionError, match="minlength=world_size"):
        check_send_splits(no_minlength)
