"""A timed run of a pipeline schedule: every rank runs its steps in order, each as soon as its rank is free and its
inputs have arrived ([V3] 3.2.1, Table 2; ZeroBubble, arXiv 2401.10241, section 2).

The dependencies, for micro-batch m at stage s of its path (``schedules.Op``):

- ``F`` at stage s needs the forward at stage s - 1 (the activations it receives);
- a backward (``B``, ``BI``, or the backward of an ``F&B``) needs the forward at the same stage (the activations
  it holds) and the backward at stage s + 1 (the gradient it receives); on the last stage, the loss, which the
  forward there computed;
- ``W`` needs the ``BI`` of the same micro-batch and stage.

Costs (``Costs``): ``F``, ``B`` (the FULL backward), ``W`` (its weights' part, so ``BI`` takes ``B - W``),
``F_and_B`` (an overlapped forward and backward pair) and ``send``, added when a result crosses to another rank.
A rank's idle time is the run's length less the time it computes; the bubble is the longest of them. Activations
are counted in units of one micro-batch's activations at one stage, held from the start of its forward to the end
of its backward (``B``, ``BI`` or the pair's; the little that a pending ``W`` still needs is not counted).

The measured bubble equals [V3] Table 2 with zero send time: 1F1B (PP-1)(F+B) for any costs; ZB1P (PP-1)(F+B-2W)
when a W fits where it is put, W <= F and W <= B - W; DualPipe and DualPipeV (PP/2-1)(F&B+B-3W) when a forward
takes as long as a backward-for-input, F = B - W (ZeroBubble's T_F = T_B), for any F&B
(tests/test_pipeline_simulator.py). DualPipe holds PP + 1 activations at its peak, 1F1B PP.
"""

from __future__ import annotations

from dataclasses import dataclass

from course_lib.core.validation import boundary
from course_lib.parallel.pipeline import arguments
from course_lib.parallel.pipeline.schedules import (BACKWARD, BACKWARD_INPUT, FORWARD, FORWARD_BACKWARD, WEIGHT, Op,
                                                    Schedule, Step, parts)


@dataclass(frozen=True)
class Costs:
    """Times of the steps, in any unit: a forward chunk ``F``, a full backward chunk ``B``, its
    backward-for-weights part ``W`` (so backward-for-input takes ``B - W``), an overlapped forward and backward
    pair ``F_and_B`` (default ``F + B``: nothing gained), and ``send``, one stage's result reaching the next rank.
    Raises TypeError for a cost that is not a number, ValueError for a negative one or W > B."""
    F: float = 1.0
    B: float = 2.0
    W: float = 1.0
    F_and_B: float | None = None
    send: float = 0.0

    def __post_init__(self) -> None:
        arguments.costs(self.F, self.B, self.W, self.F_and_B, self.send)

    def of(self, step: Step) -> float:
        """The time ``step`` takes on its rank."""
        return {FORWARD: self.F, BACKWARD: self.B, BACKWARD_INPUT: self.B - self.W, WEIGHT: self.W,
                FORWARD_BACKWARD: self.F + self.B if self.F_and_B is None else self.F_and_B}[step.kind]


@dataclass(frozen=True)
class Timeline:
    """The timed run of ``schedule`` under ``costs``: ``start[r][i]`` and ``end[r][i]`` of rank r's i-th step,
    ``activations[r]`` the (time, micro-batch activations held) steps of rank r's memory."""
    schedule: Schedule
    costs: Costs
    start: tuple[tuple[float, ...], ...]
    end: tuple[tuple[float, ...], ...]
    activations: tuple[tuple[tuple[float, int], ...], ...]

    @property
    def makespan(self) -> float:
        """When the last step of any rank ends (the whole run starts at 0)."""
        return max(ends[-1] for ends in self.end if ends)

    def busy(self, rank: int) -> float:
        """The time rank ``rank`` computes."""
        return sum(e - s for s, e in zip(self.start[rank], self.end[rank]))

    def idle(self, rank: int) -> float:
        """The time rank ``rank`` stands idle in the run: ``makespan - busy(rank)`` (the optimizer step waits for
        the last rank, so a rank that finishes early idles until then)."""
        return self.makespan - self.busy(rank)

    @property
    def bubble(self) -> float:
        """The pipeline's bubble: the longest idle time of any rank (all ranks alike in GPipe, 1F1B and ZB1P; in
        DualPipe the middle ranks, which run fewer overlapped pairs). What [V3] Table 2 gives as a formula."""
        return max(self.idle(r) for r in range(self.schedule.n_ranks))

    def peak_activations(self, rank: int) -> int:
        """The most micro-batch activations rank ``rank`` holds at once."""
        return max(count for _, count in self.activations[rank])

    def __repr__(self) -> str:
        return (f"Timeline({self.schedule.name}, {self.schedule.n_ranks} ranks, makespan {self.makespan:g}, "
                f"bubble {self.bubble:g})")


def needs(op: Op, n_stages: int) -> list[tuple[str, int, int]]:
    """What ``op`` waits for, as (kind, micro_batch, stage) keys; ``"B"`` stands for any backward."""
    m, s = op.micro_batch, op.stage
    if op.kind == FORWARD:
        return [(FORWARD, m, s - 1)] if s > 0 else []
    if op.kind == WEIGHT:
        return [(BACKWARD_INPUT, m, s)]
    return [(FORWARD, m, s)] + ([(BACKWARD, m, s + 1)] if s < n_stages - 1 else [])


def provides(op: Op) -> list[tuple[str, int, int]]:
    """The keys of what ``op`` makes, as ``needs`` names them: a ``BI`` is also the backward that the previous
    stage waits for."""
    made = [(op.kind, op.micro_batch, op.stage)]
    return made + [(BACKWARD, op.micro_batch, op.stage)] if op.kind == BACKWARD_INPUT else made


@boundary(arguments.simulate)
def simulate(schedule: Schedule, costs: Costs) -> Timeline:
    """Run ``schedule`` under ``costs``: each rank starts its next step when the rank is free and every input of
    the step has arrived (ready at the end of the step that made it, plus ``costs.send`` from another rank).
    Returns a ``Timeline``. Raises TypeError for a schedule or costs of the wrong type, ValueError when a rank
    waits for something that no rank runs before it (a step missing or out of order: deadlock)."""
    done: dict[tuple[str, int, int], tuple[int, float]] = {}  # key -> (rank, time its result is ready)
    n, pointer = schedule.n_ranks, [0] * schedule.n_ranks
    start: list[list[float]] = [[] for _ in range(n)]
    end: list[list[float]] = [[] for _ in range(n)]
    while any(pointer[r] < len(schedule.ranks[r]) for r in range(n)):
        progress = False
        for r in range(n):
            while pointer[r] < len(schedule.ranks[r]):
                step = schedule.ranks[r][pointer[r]]
                ops = parts(step)
                inputs = [need for op in ops for need in needs(op, schedule.n_stages)]
                if not all(need in done for need in inputs):
                    break
                ready = [done[need][1] + (costs.send if done[need][0] != r else 0.0) for need in inputs]
                begin = max([end[r][-1] if end[r] else 0.0, *ready])
                start[r].append(begin)
                end[r].append(begin + costs.of(step))
                done.update({made: (r, end[r][-1]) for op in ops for made in provides(op)})
                pointer[r] += 1
                progress = True
        if not progress:
            waiting = {r: str(schedule.ranks[r][pointer[r]]) for r in range(n) if pointer[r] < len(schedule.ranks[r])}
            raise ValueError(f"deadlock: every unfinished rank waits for a result no rank can produce first "
                             f"(rank: its next step) {waiting}; a step is missing, or comes before what it needs")
    return Timeline(schedule, costs, tuple(map(tuple, start)), tuple(map(tuple, end)), held(schedule, start, end))


def held(schedule: Schedule, start: list[list[float]],
         end: list[list[float]]) -> tuple[tuple[tuple[float, int], ...], ...]:
    """Each rank's activations over time: +1 when a forward starts, -1 when its backward ends, as a tuple of
    (time, count) after each change, in time order (frees before allocations at the same time)."""
    timelines = []
    for r, steps in enumerate(schedule.ranks):
        changes = []
        for step, begin, finish in zip(steps, start[r], end[r]):
            for op in parts(step):
                if op.kind == FORWARD:
                    changes.append((begin, +1))
                elif op.kind in (BACKWARD, BACKWARD_INPUT):
                    changes.append((finish, -1))
        count, timeline = 0, [(0.0, 0)]
        for time, change in sorted(changes):
            count += change
            timeline.append((time, count))
        timelines.append(tuple(timeline))
    return tuple(timelines)
