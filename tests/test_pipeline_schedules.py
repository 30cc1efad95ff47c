"""The pipeline schedules (course_lib.parallel.pipeline.schedules, issue 22): every rank does each of its
operations exactly once, on the rank that holds the stage; each micro-batch's forward runs stage by stage before
its backward runs back (checked on the timed run); 1F1B against a slow rule-by-rule reference; DualPipe's
per-direction counts and mirror ranks; DualPipeV as DualPipe cut in half."""

from collections import Counter

import pytest

from course_lib.parallel.pipeline.schedules import (SCHEDULES, BACKWARD, BACKWARD_INPUT, FORWARD, WEIGHT, Op,
                                                    Overlapped, dualpipe, dualpipev, one_f_one_b, parts, zb1p)
from course_lib.parallel.pipeline.simulator import Costs, simulate

SIZES = [(2, 4), (4, 8), (4, 9), (8, 16), (8, 20), (16, 32)]  # (n_stages, n_micro_batches), enough for all


def build(name, n_stages, n_micro_batches):
    """Each schedule at the sizes it accepts: DualPipe an even micro-batch count >= 2 n_stages."""
    if name == "DualPipe":
        return dualpipe(n_stages, 2 * n_micro_batches)
    return SCHEDULES[name](n_stages, n_micro_batches)


NAMES = list(SCHEDULES)


def holder(schedule, op):
    """The rank that holds ``op``'s stage, from the placement each paper gives."""
    n = schedule.n_stages
    if schedule.name == "DualPipe":
        return op.stage if op.direction == 0 else n - 1 - op.stage
    if schedule.name == "DualPipeV":
        return op.stage if op.stage < n // 2 else n - 1 - op.stage
    return op.stage


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_stages, n_micro_batches", SIZES)
def test_every_rank_does_each_of_its_operations_exactly_once(name, n_stages, n_micro_batches):
    schedule = build(name, n_stages, n_micro_batches)
    done = Counter()
    for r in range(schedule.n_ranks):
        for op in schedule.ops(r):
            assert holder(schedule, op) == r, f"{name}: {op} on rank {r}"
            done[(op.kind, op.micro_batch, op.stage)] += 1
    assert set(done.values()) == {1}, f"{name}: done twice {[k for k, v in done.items() if v > 1]}"
    for m in range(schedule.n_micro_batches):
        for s in range(schedule.n_stages):
            backward = done[(BACKWARD, m, s)] + done[(BACKWARD_INPUT, m, s)]
            assert done[(FORWARD, m, s)] == 1 and backward == 1, f"{name}: micro-batch {m} stage {s}"
            assert done[(WEIGHT, m, s)] == done[(BACKWARD_INPUT, m, s)], f"{name}: W of {m} at {s}"
    assert sum(done.values()) == sum(len(schedule.ops(r)) for r in range(schedule.n_ranks))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n_stages, n_micro_batches", SIZES)
def test_each_forward_runs_stage_by_stage_before_its_backward_runs_back(name, n_stages, n_micro_batches):
    schedule = build(name, n_stages, n_micro_batches)
    timeline = simulate(schedule, Costs(F=1.0, B=2.5, W=1.0, F_and_B=3.0, send=0.25))
    when = {}
    for r in range(schedule.n_ranks):
        for step, start, end in zip(schedule.ranks[r], timeline.start[r], timeline.end[r]):
            for op in parts(step):
                kind = BACKWARD if op.kind == BACKWARD_INPUT else op.kind
                when[(kind, op.micro_batch, op.stage)] = (start, end)
    last = schedule.n_stages - 1
    for m in range(schedule.n_micro_batches):
        for s in range(last):
            assert when[(FORWARD, m, s)][1] <= when[(FORWARD, m, s + 1)][0]
            assert when[(BACKWARD, m, s + 1)][1] <= when[(BACKWARD, m, s)][0]
        assert when[(FORWARD, m, last)][1] <= when[(BACKWARD, m, last)][0]
        for s in range(schedule.n_stages):
            if (WEIGHT, m, s) in when:
                assert when[(BACKWARD, m, s)][1] <= when[(WEIGHT, m, s)][0]


def reference_1f1b_rank(rank, n_stages, n_micro_batches):
    """Slow 1F1B by its rule: run a forward while fewer than n_stages - rank micro-batches are in flight and
    forwards remain, else the oldest backward."""
    order, forwards, backwards = [], 0, 0
    while backwards < n_micro_batches:
        if forwards < n_micro_batches and forwards - backwards < n_stages - rank:
            order.append(Op(FORWARD, forwards, rank))
            forwards += 1
        else:
            order.append(Op(BACKWARD, backwards, rank))
            backwards += 1
    return order


@pytest.mark.parametrize("n_stages, n_micro_batches", SIZES)
def test_1f1b_equals_its_rule_warm_up_steady_and_cool_down(n_stages, n_micro_batches):
    schedule = one_f_one_b(n_stages, n_micro_batches)
    for r in range(n_stages):
        assert list(schedule.ranks[r]) == reference_1f1b_rank(r, n_stages, n_micro_batches)
        warm_up = [op.kind for op in schedule.ranks[r]].index(BACKWARD) - 1
        assert warm_up == n_stages - 1 - r


@pytest.mark.parametrize("n_stages, n_micro_batches", SIZES)
def test_zb1p_is_1f1b_with_the_backward_split_and_w_delayed_by_the_rank(n_stages, n_micro_batches):
    schedule, plain = zb1p(n_stages, n_micro_batches), one_f_one_b(n_stages, n_micro_batches)
    for r in range(n_stages):
        without_w = [Op(BACKWARD, op.micro_batch, r) if op.kind == BACKWARD_INPUT else op
                     for op in schedule.ranks[r] if op.kind != WEIGHT]
        assert without_w == list(plain.ranks[r])
        order = list(schedule.ranks[r])
        for op in order:
            if op.kind == WEIGHT and op.micro_batch + r < n_micro_batches:  # right after BI of m + r
                assert order[order.index(op) - 1] == Op(BACKWARD_INPUT, op.micro_batch + r, r)
        assert [op.kind for op in order[-r - 2:]] == [BACKWARD_INPUT] + [WEIGHT] * (r + 1)


@pytest.mark.parametrize("n_stages, n_micro_batches", [(2, 4), (4, 8), (4, 12), (8, 16), (8, 20), (16, 32)])
def test_dualpipe_feeds_half_the_micro_batches_from_each_end_and_mirrors_its_ranks(n_stages, n_micro_batches):
    schedule, half = dualpipe(n_stages, n_micro_batches), n_micro_batches // 2
    for r in range(n_stages):
        ops = schedule.ops(r)
        per_direction = Counter((op.direction, op.kind == FORWARD) for op in ops if op.kind != WEIGHT)
        assert per_direction == {(0, True): half, (0, False): half, (1, True): half, (1, False): half}
        assert all((op.micro_batch < half) == (op.direction == 0) for op in ops)
        mirror = [Op(op.kind, (op.micro_batch + half) % n_micro_batches, op.stage, 1 - op.direction)
                  for op in schedule.ops(n_stages - 1 - r)]
        assert ops == mirror, f"rank {r} is not the mirror of rank {n_stages - 1 - r}"
    overlapped = [sum(isinstance(step, Overlapped) for step in rank) for rank in schedule.ranks]
    for r, count in enumerate(overlapped):  # steps 4 and 5 of deepseek-ai/DualPipe; the middle pair split once
        h, halves = min(r, n_stages - 1 - r), n_stages // 2
        assert count == 2 * (half - n_stages + h + 1) + (halves - h - 1) - (h == halves - 1)


def test_dualpipe_at_the_readme_figure_size_starts_as_the_figure():
    """deepseek-ai/DualPipe README figure (8 ranks, 20 micro-batches; it leaves direction 1's numbers out, here
    10-19), read cell by cell: device 0 runs F0-F6, then F10 BI10 W10, F11 BI11 W11, F12 BI12 W12, F13, then
    the first overlapped pair F7 with B13; device 7 is its mirror; device 3, a middle rank, alternates directions
    and runs its first main-step pair as a plain full backward B10."""
    schedule = dualpipe(8, 20)

    def start(rank, n):
        return " ".join(map(str, schedule.ranks[rank][:n]))
    assert start(0, 18) == "F0 F1 F2 F3 F4 F5 F6 F10 BI10 W10 F11 BI11 W11 F12 BI12 W12 F13 F7&B13"
    assert start(7, 18) == "F10 F11 F12 F13 F14 F15 F16 F0 BI0 W0 F1 BI1 W1 F2 BI2 W2 F3 F17&B3"
    assert start(3, 12) == "F0 F10 F1 F11 F2 F12 F3 F13 F4 B10 F14&B0 F5&B11"


@pytest.mark.parametrize("n_stages, n_micro_batches", [(2, 2), (4, 4), (4, 7), (8, 10), (8, 16), (16, 20)])
def test_dualpipev_is_dualpipe_cut_in_half(n_stages, n_micro_batches):
    """Rank r of DualPipeV (n_stages stages on n_stages / 2 ranks, N micro-batches) runs the steps of DualPipe's
    rank r with 2N micro-batches, the direction-1 micro-batch N + k renamed k; the timed runs agree too."""
    v, full = dualpipev(n_stages, n_micro_batches), dualpipe(n_stages, 2 * n_micro_batches)
    assert v.n_ranks == n_stages // 2

    def cut(op):
        return Op(op.kind, op.micro_batch % n_micro_batches, op.stage)
    for r in range(v.n_ranks):
        assert v.ops(r) == [cut(op) for op in full.ops(r)]
        assert [step.kind for step in v.ranks[r]] == [step.kind for step in full.ranks[r]]
    costs = Costs(F=1.0, B=2.0, W=0.75, F_and_B=2.5)
    timed_v, timed_full = simulate(v, costs), simulate(full, costs)
    assert timed_v.start == timed_full.start[:v.n_ranks] and timed_v.makespan == timed_full.makespan


def test_a_schedule_reads_as_its_operations():
    schedule = one_f_one_b(4, 8)
    assert repr(schedule) == "Schedule(1F1B, 4 stages on 4 ranks, 8 micro-batches)"
    assert " ".join(map(str, schedule.ranks[2])) == "F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7"
    assert " ".join(map(str, dualpipe(4, 8).ranks[1])) == "F0 F4 F1 F5 F2 B4 F6&B0 F3&B5 F7&B1 B6 B2 BI7 BI3 W7 W3"
