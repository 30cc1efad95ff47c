"""Notebook 12's checker: a learner's 1F1B order of one rank. The solution passes, a stub is reported, and each
mistake of issue 22's catalogue, written the way a learner writes it, is rejected with its name."""

import pytest

from checking import rejected_with, stub
from course_lib.checks import CheckFailed, check_one_f_one_b_order, outcome
from course_lib.parallel.pipeline.schedules import one_f_one_b_rank


def learner_order(rank, n_stages, n_micro_batches, *, warm_up_extra=0, backward_first=False, cool_down_from=0,
                  steady_backward_shift=0):
    """A learner's 1F1B, right by default; each keyword is one mistake."""
    warm_up = max(0, n_stages - 1 - rank + warm_up_extra)
    order = [f"F{m}" for m in range(warm_up)]
    for m in range(n_micro_batches - warm_up):
        pair = [f"F{m + warm_up}", f"B{m + steady_backward_shift}"]
        order += pair[::-1] if backward_first else pair
    return order + [f"B{m}" for m in range(n_micro_batches - warm_up - cool_down_from, n_micro_batches)]


def test_the_solution_and_the_reference_pass():
    assert outcome(check_one_f_one_b_order, learner_order)
    assert outcome(check_one_f_one_b_order, lambda *a: [str(op) for op in one_f_one_b_rank(*a)])
    assert outcome(check_one_f_one_b_order, one_f_one_b_rank)  # Op objects read as 'F3', 'B3'


def test_a_stub_is_reported_not_failed(capsys):
    assert not outcome(check_one_f_one_b_order, stub)
    assert "not implemented yet" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [1, -1])
def test_the_wrong_warm_up_count_is_named(extra):
    rejected_with(check_one_f_one_b_order, lambda *a: learner_order(*a, warm_up_extra=extra),
                  "the wrong warm-up count", "n_stages - 1 - r")


def test_a_backward_before_its_forward_is_named():
    rejected_with(check_one_f_one_b_order, lambda *a: learner_order(*a, backward_first=True),
                  "a backward before its forward reached the last stage", "B0 comes before F0")


def test_a_backward_that_waits_forever_for_the_last_stage_is_named():
    """Rank 0 runs its backwards before the forwards the later ranks wait for: each rank alone has the right
    counts and every B after its F, but together they deadlock."""
    def deadlocking(rank, n_stages, n_micro_batches):
        if rank:
            return learner_order(rank, n_stages, n_micro_batches)
        order = [f"F{m}" for m in range(n_stages)]  # the warm-up and the first steady forward, as 1F1B's rank 0
        order += [f"B{m}" for m in range(n_stages)]  # but then all those backwards, and only then the next forwards
        rest = range(n_stages, n_micro_batches)
        order += [f"F{m}" for m in rest] + [f"B{m}" for m in rest]
        return order
    rejected_with(check_one_f_one_b_order, deadlocking, "a backward before its forward reached the last stage",
                  "the pipeline stops", "deadlock")


@pytest.mark.parametrize("mistake", [dict(cool_down_from=1), dict(steady_backward_shift=1)])
def test_a_micro_batch_done_twice_or_never_is_named(mistake):
    rejected_with(check_one_f_one_b_order, lambda *a: learner_order(*a, **mistake),
                  "is done twice or never")


def test_another_order_shows_the_first_difference():
    def gpipe_like(rank, n_stages, n_micro_batches):
        return [f"F{m}" for m in range(n_micro_batches)] + [f"B{m}" for m in range(n_micro_batches)]
    rejected_with(check_one_f_one_b_order, gpipe_like, "the wrong warm-up count")  # all forwards first: warm-up
    def backwards_newest_first(rank, n_stages, n_micro_batches):
        order = learner_order(rank, n_stages, n_micro_batches)
        tail = [s for s in order[-(n_stages - 1 - rank):]] if rank < n_stages - 1 else []
        return order[:len(order) - len(tail)] + tail[::-1]
    rejected_with(check_one_f_one_b_order, backwards_newest_first, "1F1B runs", "the cool-down")


@pytest.mark.parametrize("returned, phrase", [("F0 B0", "should return a list"), (["F0", "X1"], "'X1'")])
def test_malformed_answers_are_explained(returned, phrase):
    rejected_with(check_one_f_one_b_order, lambda *a: returned, phrase)


def test_a_crash_is_explained():
    with pytest.raises(CheckFailed, match="raised ZeroDivisionError"):
        check_one_f_one_b_order(lambda *a: 1 / 0)
