"""The pipeline simulator (course_lib.parallel.pipeline.simulator, issue 22): its measured bubbles against
[V3] Table 2 and the deepseek-ai/DualPipe README, its timing against a slow tick-by-tick reference, the
activations each schedule holds, and a schedule out of order reported as a deadlock."""

import itertools

import pytest

from course_lib.parallel.pipeline.schedules import (BACKWARD, BACKWARD_INPUT, FORWARD, Op, Schedule, dualpipe,
                                                    dualpipev, gpipe, one_f_one_b, parts, zb1p)
from course_lib.parallel.pipeline.simulator import Costs, needs, provides, simulate

STAGES = (2, 4, 8, 16)


def micro_batch_counts(n_stages, least):
    return sorted({least, least + 2, 2 * least + 2})


@pytest.mark.parametrize("n_stages", STAGES)
@pytest.mark.parametrize("F, B", [(1.0, 2.0), (2.0, 3.0), (1.0, 1.0), (1.5, 4.0)])
def test_1f1b_and_gpipe_bubble_is_pp_minus_1_times_f_plus_b(n_stages, F, B):
    """[V3] Table 2: 1F1B (PP-1)(F+B), for any F and B, any number of micro-batches >= PP, zero send time.
    GPipe has the same bubble (and holds every micro-batch's activations)."""
    for m in micro_batch_counts(n_stages, n_stages):
        costs = Costs(F=F, B=B, W=0.5)
        for schedule in (one_f_one_b(n_stages, m), gpipe(n_stages, m)):
            timeline = simulate(schedule, costs)
            assert timeline.bubble == pytest.approx((n_stages - 1) * (F + B))
            assert all(timeline.idle(r) == pytest.approx(timeline.bubble) for r in range(n_stages))
            assert timeline.makespan == pytest.approx(m * (F + B) + timeline.bubble)


@pytest.mark.parametrize("n_stages", STAGES)
@pytest.mark.parametrize("F, B_input, W", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.0, 2.0, 0.5), (1.5, 1.5, 1.5),
                                           (3.0, 2.0, 0.25)])
def test_zb1p_bubble_is_pp_minus_1_times_f_plus_b_minus_2w(n_stages, F, B_input, W):
    """[V3] Table 2: ZB1P (PP-1)(F+B-2W), B the full backward (ZeroBubble's ZB-H1: (p-1)(T_F+T_B-T_W), T_B the
    input part). Holds when a W fits where ZB-H1 puts it, W <= F and W <= B - W, for any number of micro-batches
    >= PP, with zero send time."""
    B = B_input + W
    for m in micro_batch_counts(n_stages, n_stages):
        timeline = simulate(zb1p(n_stages, m), Costs(F=F, B=B, W=W))
        assert timeline.bubble == pytest.approx((n_stages - 1) * (F + B - 2 * W))
        assert all(timeline.idle(r) == pytest.approx(timeline.bubble) for r in range(n_stages))


def test_zb1p_loses_more_when_w_is_longer_than_f():
    """Outside the formula's assumptions (W > F) a W no longer fits the gap it was put in."""
    timeline = simulate(zb1p(4, 8), Costs(F=1.0, B=3.0, W=1.5))
    assert timeline.bubble > 3 * (1.0 + 3.0 - 2 * 1.5)


@pytest.mark.parametrize("n_stages", STAGES)
@pytest.mark.parametrize("F, W", [(1.0, 1.0), (2.0, 1.0), (1.0, 0.5), (1.5, 1.5)])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 1.0])
def test_dualpipe_and_dualpipev_bubble_is_half_pp_minus_1_times_fb_plus_b_minus_3w(n_stages, F, W, overlap):
    """deepseek-ai/DualPipe README and [V3] Table 2: DualPipe (PP/2-1)(F&B+B-3W), and DualPipeV (the same PP
    stages on PP/2 ranks) the same. Holds for the longest idle rank (the middle ranks) when a forward takes as
    long as a backward-for-input, F = B - W (ZeroBubble's T_F = T_B), for any W and any F&B between max(F, B)
    (full overlap, ``overlap`` 1) and F + B (none, 0), for every even number of micro-batches >= 2 PP
    (DualPipeV: every number >= PP), with zero send time."""
    B = F + W
    F_and_B = (F + B) - overlap * min(F, B)
    costs = Costs(F=F, B=B, W=W, F_and_B=F_and_B)
    formula = (n_stages / 2 - 1) * (F_and_B + B - 3 * W)
    for m in micro_batch_counts(n_stages, 2 * n_stages):
        assert simulate(dualpipe(n_stages, m), costs).bubble == pytest.approx(formula)
    for m in micro_batch_counts(n_stages, n_stages) + [n_stages + 1]:
        assert simulate(dualpipev(n_stages, m), costs).bubble == pytest.approx(formula)


def test_dualpipe_with_overlap_idles_most_on_the_middle_ranks():
    """With F&B < F + B the ranks near the ends run more overlapped pairs and idle less; the middle ranks set the
    bubble. Without overlap every rank idles alike."""
    overlapped = simulate(dualpipe(8, 32), Costs(F=1.0, B=2.0, W=1.0, F_and_B=2.5))
    assert [overlapped.idle(r) for r in range(8)] == [3.5, 4.0, 4.5, 4.5, 4.5, 4.5, 4.0, 3.5]
    plain = simulate(dualpipe(8, 32), Costs(F=1.0, B=2.0, W=1.0))
    assert {plain.idle(r) for r in range(8)} == {(8 / 2 - 1) * (1.0 + 2.0 + 2.0 - 3 * 1.0)}


@pytest.mark.parametrize("n_stages", STAGES)
def test_activations_held_pp_for_1f1b_and_zb1p_pp_plus_1_for_dualpipe_all_for_gpipe(n_stages):
    """README: 1F1B and ZB1P hold PP micro-batch activations per device (rank 0; rank r holds PP - r), DualPipe
    and DualPipeV PP + 1 (in stage-sized chunks), GPipe all of them."""
    costs, m = Costs(F=1.0, B=2.0, W=1.0, F_and_B=2.5), 4 * n_stages
    for schedule in (one_f_one_b(n_stages, m), zb1p(n_stages, m)):
        timeline = simulate(schedule, costs)
        assert [timeline.peak_activations(r) for r in range(n_stages)] == [n_stages - r for r in range(n_stages)]
    for schedule in (dualpipe(n_stages, m), dualpipev(n_stages, m)):
        timeline = simulate(schedule, costs)
        assert max(timeline.peak_activations(r) for r in range(schedule.n_ranks)) == n_stages + 1
    assert simulate(gpipe(n_stages, m), costs).peak_activations(0) == m
    for r, steps in enumerate(simulate(dualpipe(n_stages, m), costs).activations):
        assert steps[-1][1] == 0 and all(count >= 0 for _, count in steps)


@pytest.mark.parametrize("n_stages", [2, 4, 8])
@pytest.mark.parametrize("send", [0.5, 1.0])
def test_gpipe_with_a_send_time_pays_it_twice_per_stage(n_stages, send):
    """Filling and draining the pipeline crosses PP - 1 links each way: GPipe's bubble becomes
    (PP-1)(F+B+2 send). (1F1B's steady state waits for each round trip too: its bubble grows with the
    micro-batches, which is why DualPipe hides the communication under computation.)"""
    timeline = simulate(gpipe(n_stages, 3 * n_stages), Costs(F=1.0, B=2.0, W=1.0, send=send))
    assert timeline.bubble == pytest.approx((n_stages - 1) * (1.0 + 2.0 + 2 * send))
    assert simulate(one_f_one_b(4, 12), Costs(send=send)).bubble > simulate(one_f_one_b(4, 4), Costs(send=send)).bubble


def reference_times(schedule, costs):
    """Slow tick-by-tick run with integer costs: at every tick, every rank that is free starts its next step if
    each input was ready at or before that tick (its step's end, plus the send time from another rank)."""
    ready, free, pointer, start = {}, [0] * schedule.n_ranks, [0] * schedule.n_ranks, [[] for _ in schedule.ranks]
    tick = 0
    while any(pointer[r] < len(steps) for r, steps in enumerate(schedule.ranks)):
        for r, steps in enumerate(schedule.ranks):
            if pointer[r] == len(steps) or free[r] > tick:
                continue
            inputs = [need for op in parts(steps[pointer[r]]) for need in needs(op, schedule.n_stages)]
            if all(need in ready and ready[need][1] + (costs.send if ready[need][0] != r else 0) <= tick
                   for need in inputs):
                start[r].append(tick)
                free[r] = tick + costs.of(steps[pointer[r]])
                ready.update({made: (r, free[r]) for op in parts(steps[pointer[r]]) for made in provides(op)})
                pointer[r] += 1
        tick += 1
        assert tick < 10_000
    return tuple(map(tuple, start))


@pytest.mark.parametrize("build, n_stages, m", [(gpipe, 4, 6), (one_f_one_b, 4, 6), (zb1p, 4, 7), (dualpipe, 4, 8),
                                                (dualpipe, 6, 14), (dualpipev, 6, 7)])
def test_simulate_agrees_with_a_tick_by_tick_reference(build, n_stages, m):
    for F, B, W, FB, send in itertools.product((1, 2), (2, 3), (1,), (3, 4), (0, 1)):
        costs = Costs(F=F, B=B, W=W, F_and_B=FB, send=send)
        assert simulate(build(n_stages, m), costs).start == reference_times(build(n_stages, m), costs)


def test_a_backward_before_its_forward_reached_the_last_stage_is_a_deadlock():
    """Rank 0 waits for the gradient of micro-batch 0 before sending micro-batch 1 on; rank 1 runs both forwards
    before its backwards, so it waits for micro-batch 1 forever."""
    early = (Op(FORWARD, 0, 0), Op(BACKWARD, 0, 0), Op(FORWARD, 1, 0), Op(BACKWARD, 1, 0))
    wrong = Schedule("mine", 2, 2, (early, gpipe(2, 2).ranks[1]))
    with pytest.raises(ValueError, match="deadlock.*{0: 'B0', 1: 'F1'}"):
        simulate(wrong, Costs())


def test_costs_and_the_timeline_read_clearly():
    timeline = simulate(one_f_one_b(4, 8), Costs(F=1.0, B=2.0))
    assert repr(timeline) == "Timeline(1F1B, 4 ranks, makespan 33, bubble 9)"
    assert Costs(F=1.0, B=2.0, W=0.5).of(Op(BACKWARD_INPUT, 0, 0)) == 1.5
    assert Costs(F=1.0, B=2.0).of(dualpipe(4, 8).ranks[1][6]) == 3.0  # F&B defaults to F + B: no overlap
