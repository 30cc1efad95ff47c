"""Pipeline schedules drawn as Gantt charts, in the style of deepseek-ai/DualPipe's figures: one row per rank, one
box per step of a timed run (``simulator.Timeline``), its micro-batch written in it.

Colours: forward blue, full backward green, backward-for-input light green, backward-for-weights purple; a step of
a micro-batch fed from the last rank's end (DualPipe's direction 1), or on the way back of DualPipeV's V (stages
n_stages / 2 .. n_stages - 1), is hatched. An overlapped ``F&B`` pair is one
box cut in two: its forward on top, its backward below. White is the bubble.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from course_lib.core.validation import boundary
from course_lib.parallel.pipeline import arguments
from course_lib.parallel.pipeline.schedules import BACKWARD, BACKWARD_INPUT, FORWARD, WEIGHT, Op, Overlapped, Schedule
from course_lib.parallel.pipeline.simulator import Timeline

COLOURS = {FORWARD: "#4c72b0", BACKWARD: "#55a868", BACKWARD_INPUT: "#a6dba0", WEIGHT: "#8172b2"}
NAMES = {FORWARD: "F: forward", BACKWARD: "B: full backward", BACKWARD_INPUT: "BI: backward for input",
         WEIGHT: "W: backward for weights"}


def _hatched(op: Op, schedule: Schedule) -> bool:
    """DualPipe's direction 1, or the second leg of a V (more stages than ranks)."""
    return bool(op.direction) or (schedule.n_stages > schedule.n_ranks and op.stage >= schedule.n_stages // 2)


def _box(ax: plt.Axes, op: Op, x: float, y: float, width: float, height: float, labels: bool, hatched: bool) -> None:
    ax.add_patch(Rectangle((x, y), width, height, facecolor=COLOURS[op.kind], edgecolor="white", linewidth=0.8,
                           hatch="///" if hatched else None))
    if labels:
        ax.text(x + width / 2, y + height / 2, str(op.micro_batch), ha="center", va="center", fontsize=7,
                color="white" if op.kind in (FORWARD, WEIGHT) else "black")


@boundary(arguments.gantt)
def gantt(timeline: Timeline, ax: plt.Axes | None = None, title: str | None = None, labels: bool = True) -> Figure:
    """Draw ``timeline`` on ``ax`` (a new figure when None): rank 0 on top, time to the right in the units of the
    costs, each step's micro-batch written in its box when ``labels``. The title defaults to the schedule, its
    sizes and its bubble. Returns the figure. Raises TypeError for a timeline that is not a ``Timeline``."""
    schedule = timeline.schedule
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 0.45 * schedule.n_ranks + 1.2))
    for r, steps in enumerate(schedule.ranks):
        y = schedule.n_ranks - 1 - r
        for step, start, end in zip(steps, timeline.start[r], timeline.end[r]):
            if isinstance(step, Overlapped):
                _box(ax, step.forward, start, y + 0.45, end - start, 0.45, labels, _hatched(step.forward, schedule))
                _box(ax, step.backward, start, y, end - start, 0.45, labels, _hatched(step.backward, schedule))
            else:
                _box(ax, step, start, y, end - start, 0.9, labels, _hatched(step, schedule))
    kinds = sorted({op.kind for r in range(schedule.n_ranks) for op in schedule.ops(r)}, key=list(COLOURS).index)
    handles = [Patch(facecolor=COLOURS[k], label=NAMES[k]) for k in kinds]
    if any(_hatched(op, schedule) for r in range(schedule.n_ranks) for op in schedule.ops(r)):
        label = ("fed from the last rank" if schedule.n_stages == schedule.n_ranks else
                 f"the V's way back: stages {schedule.n_stages // 2}..{schedule.n_stages - 1}")
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="///", label=label))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set(xlim=(0, timeline.makespan), ylim=(-0.1, schedule.n_ranks), xlabel="time (units of the costs)",
           yticks=[schedule.n_ranks - 1 - r + 0.45 for r in range(schedule.n_ranks)],
           yticklabels=[f"rank {r}" for r in range(schedule.n_ranks)])
    ax.set_title(title if title is not None else
                 f"{schedule.name}: {schedule.n_stages} stages on {schedule.n_ranks} ranks, "
                 f"{schedule.n_micro_batches} micro-batches, bubble {timeline.bubble:g}", fontsize=10)
    return ax.figure


OVERLAP_SLOTS = (  # (compute stream, communication stream): each all-to-all under the other chunk's computation
    ("ATTN (F)", "COMBINE (B)"), ("MLP (B)", "DISPATCH (F)"), ("MLP (F)", "DISPATCH (B)"), ("ATTN (B)", "COMBINE (F)"))
"""DualPipe's overlapped pair, schematically ([V3] 3.2.1 and Figure 4): a forward chunk runs attention, dispatch,
MLP, combine; a backward chunk the reverse, combine's backward, MLP, dispatch's backward, attention. Put side by
side in this order, every all-to-all finds a computation of the other chunk to hide under, and each waits only for
what ran before it in its own chunk."""


def overlap_pair_diagram() -> Figure:
    """``OVERLAP_SLOTS`` drawn as two streams (computation on top, communication on the 20 SMs below), forward
    parts blue and backward parts green, against the same two chunks run one after the other. Returns the figure."""
    fig, (ax_serial, ax_pair) = plt.subplots(2, 1, figsize=(10, 3.4), sharex=True)
    colour = {"F": COLOURS[FORWARD], "B": COLOURS[BACKWARD]}
    serial = [("ATTN (F)", 0), ("DISPATCH (F)", 1), ("MLP (F)", 0), ("COMBINE (F)", 1),
              ("COMBINE (B)", 1), ("MLP (B)", 0), ("DISPATCH (B)", 1), ("ATTN (B)", 0)]
    for x, (name, row) in enumerate(serial):
        ax_serial.add_patch(Rectangle((x, 1 - row), 0.96, 0.9, facecolor=colour[name[-2]], edgecolor="white"))
        ax_serial.text(x + 0.48, 1.45 - row, name, ha="center", va="center", fontsize=8, color="white")
    for x, (compute, communicate) in enumerate(OVERLAP_SLOTS):
        for row, name in ((0, compute), (1, communicate)):
            ax_pair.add_patch(Rectangle((x, 1 - row), 0.96, 0.9, facecolor=colour[name[-2]], edgecolor="white"))
            ax_pair.text(x + 0.48, 1.45 - row, name, ha="center", va="center", fontsize=8, color="white")
    for ax, title in ((ax_serial, "one chunk after the other: every all-to-all waits in the open"),
                      (ax_pair, "DualPipe's F&B pair: each all-to-all under the other chunk's computation")):
        ax.set(xlim=(0, len(serial)), ylim=(-0.1, 2), yticks=[1.45, 0.45],
               yticklabels=["computation", "communication"])
        ax.set_title(title, fontsize=10)
    ax_pair.set_xlabel("time (one part of a chunk each, all taken equal)")
    fig.tight_layout()
    return fig
