"""The Gantt chart of a timed run draws every step once, where and when the simulator put it (issue 22)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from course_lib.parallel.pipeline.plots import COLOURS, OVERLAP_SLOTS, gantt, overlap_pair_diagram  # noqa: E402
from course_lib.parallel.pipeline.schedules import dualpipe, dualpipev, one_f_one_b, parts, zb1p  # noqa: E402
from course_lib.parallel.pipeline.simulator import Costs, simulate  # noqa: E402


@pytest.mark.parametrize("schedule", [one_f_one_b(4, 8), zb1p(4, 8), dualpipe(4, 8), dualpipev(8, 10)],
                         ids=lambda s: s.name)
def test_every_operation_is_one_box_at_its_time_on_its_rank(schedule):
    timeline = simulate(schedule, Costs(F=1.0, B=2.0, W=1.0, F_and_B=2.5))
    figure = gantt(timeline)
    boxes = [p for p in figure.axes[0].patches if isinstance(p, Rectangle)]
    assert len(boxes) == sum(len(schedule.ops(r)) for r in range(schedule.n_ranks))
    expected = sorted((round(start, 6), schedule.n_ranks - 1 - r) for r in range(schedule.n_ranks)
                      for step, start in zip(schedule.ranks[r], timeline.start[r]) for _ in parts(step))
    drawn = sorted((round(box.get_x(), 6), int(box.get_y())) for box in boxes)
    assert drawn == expected
    assert {box.get_facecolor()[:3] for box in boxes} <= {matplotlib.colors.to_rgb(c) for c in COLOURS.values()}
    assert f"bubble {timeline.bubble:g}" in figure.axes[0].get_title()
    plt.close(figure)


def test_the_overlapped_pair_puts_every_all_to_all_under_the_other_chunks_computation():
    for compute, communicate in OVERLAP_SLOTS:
        assert compute[-2] != communicate[-2]  # F under B, B under F
    order = [name for slot in OVERLAP_SLOTS for name in slot]
    forward = [n for n in order if n.endswith("(F)")]
    backward = [n for n in order if n.endswith("(B)")]
    assert forward == ["ATTN (F)", "DISPATCH (F)", "MLP (F)", "COMBINE (F)"]  # a forward chunk's own order
    assert backward == ["COMBINE (B)", "MLP (B)", "DISPATCH (B)", "ATTN (B)"]  # a backward chunk's, reversed
    plt.close(overlap_pair_diagram())


def test_gantt_rejects_what_is_not_a_timeline():
    with pytest.raises(TypeError, match="timeline must be a simulator.Timeline"):
        gantt(one_f_one_b(2, 2))
