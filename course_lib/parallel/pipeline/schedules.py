"""Pipeline schedules as the ordered operations of every rank: GPipe, 1F1B, ZB1P, DualPipe and DualPipeV.

A model is cut into ``n_stages`` stages; a batch into ``n_micro_batches`` micro-batches. Each rank runs its list
of operations in order, one at a time ([V3] 3.2.1, Table 2):

- ``F``: the forward of one micro-batch through one stage;
- ``B``: its full backward (the gradients of the stage's input and of its weights);
- ``BI`` and ``W``: the same backward split in two, as in ZeroBubble (arXiv 2401.10241): ``BI`` computes the
  gradient of the input, which the previous stage waits for, and ``W`` the weights' gradient, which nobody waits
  for and can fill a bubble later;
- ``F&B`` (``Overlapped``): DualPipe's pair of a forward and a backward chunk run together, so that the
  all-to-all of one hides under the computation of the other.

Stage ``s`` of a micro-batch's path is its s-th stage, whatever rank holds it: GPipe, 1F1B and ZB1P put stage s
on rank s; DualPipe feeds half the micro-batches from each end (direction 0 enters on rank 0, direction 1 on the
last rank), so rank r holds stage r of direction 0 and stage ``n_stages - 1 - r`` of direction 1 (two copies of
the parameters); DualPipeV, DualPipe "cut in half" (deepseek-ai/DualPipe README), runs all ``n_stages`` stages on
``n_stages / 2`` ranks in a V: rank r holds stages r and ``n_stages - 1 - r`` of every micro-batch.

The DualPipe orders follow the eight steps of deepseek-ai/DualPipe's ``DualPipe.step`` (read, not copied): a
rank's two chunks are its phase 0 and phase 1 (phase 0 is direction 0 on the first half of the ranks, direction
1 on the second half); a backward ``W`` is deferred in a first-in first-out queue and run by the next ``W``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator, Union

from course_lib.core.validation import boundary
from course_lib.parallel.pipeline import arguments

FORWARD, BACKWARD, BACKWARD_INPUT, WEIGHT, FORWARD_BACKWARD = "F", "B", "BI", "W", "F&B"


@dataclass(frozen=True)
class Op:
    """One operation of a rank: ``kind`` (``F``, ``B``, ``BI`` or ``W``) of ``micro_batch`` at ``stage`` (its
    position along the micro-batch's path, 0 = where it enters), fed from ``direction`` (0: rank 0's end, 1: the
    last rank's end; DualPipe only)."""
    kind: str
    micro_batch: int
    stage: int
    direction: int = 0

    def __str__(self) -> str:
        return f"{self.kind}{self.micro_batch}"


@dataclass(frozen=True)
class Overlapped:
    """DualPipe's ``F&B``: the forward ``forward`` and the full backward ``backward`` (of another micro-batch and
    stage) run as one overlapped pair, each one's communication hidden under the other's computation."""
    forward: Op
    backward: Op
    kind: str = FORWARD_BACKWARD

    def __str__(self) -> str:
        return f"{self.forward}&{self.backward}"


Step = Union[Op, Overlapped]


def parts(step: Step) -> tuple[Op, ...]:
    """The operations of ``step``: an ``F&B``'s forward and backward, or the one operation."""
    return (step.forward, step.backward) if isinstance(step, Overlapped) else (step,)


@dataclass(frozen=True)
class Schedule:
    """A schedule: ``ranks[r]`` is rank r's ordered tuple of steps. ``n_stages`` stages per micro-batch path,
    ``n_micro_batches`` micro-batches in all (DualPipe: half from each end)."""
    name: str
    n_stages: int
    n_micro_batches: int
    ranks: tuple[tuple[Step, ...], ...]

    @property
    def n_ranks(self) -> int:
        return len(self.ranks)

    def ops(self, rank: int) -> list[Op]:
        """Rank ``rank``'s operations in order, an ``F&B`` counted as its forward then its backward."""
        return [op for step in self.ranks[rank] for op in parts(step)]

    def __repr__(self) -> str:
        return (f"Schedule({self.name}, {self.n_stages} stages on {self.n_ranks} ranks, "
                f"{self.n_micro_batches} micro-batches)")


# --------------------------------------------------------------------------------------------- one stage per rank
@boundary(arguments.gpipe)
def gpipe(n_stages: int, n_micro_batches: int) -> Schedule:
    """GPipe (Huang et al. 2019): every rank runs all forwards, then all backwards. Rank r = stage r. It holds
    the activations of every micro-batch at once. Raises TypeError / ValueError for sizes that are not ints >= 1."""
    ranks = tuple(tuple(Op(FORWARD, m, r) for m in range(n_micro_batches))
                  + tuple(Op(BACKWARD, m, r) for m in range(n_micro_batches)) for r in range(n_stages))
    return Schedule("GPipe", n_stages, n_micro_batches, ranks)


def one_f_one_b_rank(rank: int, n_stages: int, n_micro_batches: int) -> list[Op]:
    """Rank ``rank``'s 1F1B order (PipeDream-Flush): ``n_stages - 1 - rank`` warm-up forwards, then one forward
    and one backward in turn, then the remaining backwards (the cool-down). At most ``n_stages - rank``
    micro-batches are in flight on rank ``rank``."""
    warm_up = n_stages - 1 - rank
    order = [Op(FORWARD, m, rank) for m in range(warm_up)]
    for m in range(n_micro_batches - warm_up):
        order += [Op(FORWARD, m + warm_up, rank), Op(BACKWARD, m, rank)]
    return order + [Op(BACKWARD, m, rank) for m in range(n_micro_batches - warm_up, n_micro_batches)]


@boundary(arguments.one_f_one_b)
def one_f_one_b(n_stages: int, n_micro_batches: int) -> Schedule:
    """1F1B: ``one_f_one_b_rank`` on every rank; bubble (PP-1)(F+B) ([V3] Table 2). Needs at least ``n_stages``
    micro-batches (every rank reaches the steady one-forward-one-backward phase). Raises TypeError / ValueError."""
    ranks = tuple(tuple(one_f_one_b_rank(r, n_stages, n_micro_batches)) for r in range(n_stages))
    return Schedule("1F1B", n_stages, n_micro_batches, ranks)


@boundary(arguments.zb1p)
def zb1p(n_stages: int, n_micro_batches: int) -> Schedule:
    """ZB1P, ZeroBubble's ZB-H1 (arXiv 2401.10241, section 2.1): 1F1B with every backward split into ``BI``
    (input gradient, sent on at once) and ``W`` (weight gradient). Rank r delays its W's by r micro-batches: W of
    micro-batch m runs right after BI of micro-batch m + r, and the last r W's close the run. So the later ranks
    send their input gradients back sooner, the earlier ranks' backwards start sooner, and every rank has
    n_stages micro-batches in flight (n_stages - r activations and r pending W's), as 1F1B's first rank. Bubble
    (PP-1)(F+B-2W) ([V3] Table 2). Needs at least ``n_stages`` micro-batches. Raises TypeError / ValueError."""
    ranks = []
    for r in range(n_stages):
        order = []
        for op in one_f_one_b_rank(r, n_stages, n_micro_batches):
            if op.kind == FORWARD:
                order.append(op)
                continue
            order.append(Op(BACKWARD_INPUT, op.micro_batch, r))
            if op.micro_batch >= r:
                order.append(Op(WEIGHT, op.micro_batch - r, r))
        ranks.append(tuple(order + [Op(WEIGHT, m, r) for m in range(n_micro_batches - r, n_micro_batches)]))
    return Schedule("ZB1P", n_stages, n_micro_batches, tuple(ranks))


# --------------------------------------------------------------------------------------------- DualPipe
def dualpipe_phases(half_ranks: int, half_rank: int, chunks: int) -> Iterator[tuple]:
    """The eight steps of DualPipe for the rank at distance ``half_rank`` from its end of the pipeline, with
    ``half_ranks`` ranks per half and ``chunks`` micro-batches per direction, as abstract steps:
    ``(kind, phase)`` for F, B, BI and W (W's phase is None: it runs the oldest deferred weight gradient), and
    ``("F&B", forward phase, backward phase)``. The middle rank (``half_rank = half_ranks - 1``) runs its first
    main-step pair as a plain F then B ("to further reduce bubble size", deepseek-ai/DualPipe)."""
    rest, near = half_ranks - half_rank - 1, half_rank + 1  # ranks beyond this one on its side; this one and before
    yield from [(FORWARD, 0)] * (2 * rest)                                 # 1: nF0
    yield from [(FORWARD, 0), (FORWARD, 1)] * near                         # 2: nF0F1
    yield from [(BACKWARD_INPUT, 1), (WEIGHT, None), (FORWARD, 1)] * rest  # 3: nB1W1F1 (zero bubble)
    for i in range(chunks - 2 * half_ranks + near):                        # 4: nF0B1F1B0, the main step
        if i == 0 and rest == 0:
            yield from [(FORWARD, 0), (BACKWARD, 1)]
        else:
            yield (FORWARD_BACKWARD, 0, 1)
        yield (FORWARD_BACKWARD, 1, 0)
    yield from [(BACKWARD, 1), (FORWARD_BACKWARD, 1, 0)] * rest            # 5: nB1F1B0
    split = False
    for i in range(near):                                                  # 6: nB1B0, second half zero bubble
        if i == near // 2 and half_rank % 2 == 1:
            split = True
        yield (BACKWARD_INPUT if split else BACKWARD, 1)
        if i == near // 2 and half_rank % 2 == 0:
            split = True
        yield (BACKWARD_INPUT if split else BACKWARD, 0)
    yield from [(WEIGHT, None), (BACKWARD_INPUT, 0)] * rest                # 7: nWB0 (zero bubble)
    yield from [(WEIGHT, None)] * near                                     # 8: nW


def dualpipe_rank(half_ranks: int, half_rank: int, chunks: int, stages: tuple[int, int],
                  first_micro_batch: tuple[int, int], directions: tuple[int, int]) -> tuple[Step, ...]:
    """``dualpipe_phases`` made concrete for a rank whose phase p is stage ``stages[p]`` of micro-batches
    ``first_micro_batch[p]``, ``first_micro_batch[p] + 1``, ... fed from ``directions[p]``: each phase's forwards
    and backwards run its micro-batches in order, and ``W`` runs the oldest pending BI's weight gradient (first
    in, first out, as DualPipe's ``WeightGradStore``)."""
    forwards, backwards, deferred, order = [0, 0], [0, 0], deque(), []

    def next_op(kind: str, phase: int) -> Op:
        counter = forwards if kind == FORWARD else backwards
        op = Op(kind, first_micro_batch[phase] + counter[phase], stages[phase], directions[phase])
        counter[phase] += 1
        if kind == BACKWARD_INPUT:
            deferred.append(op)
        return op

    for step in dualpipe_phases(half_ranks, half_rank, chunks):
        if step[0] == FORWARD_BACKWARD:
            order.append(Overlapped(next_op(FORWARD, step[1]), next_op(BACKWARD, step[2])))
        elif step[0] == WEIGHT:
            done = deferred.popleft()
            order.append(Op(WEIGHT, done.micro_batch, done.stage, done.direction))
        else:
            order.append(next_op(*step))
    return tuple(order)


@boundary(arguments.dualpipe)
def dualpipe(n_stages: int, n_micro_batches: int) -> Schedule:
    """DualPipe ([V3] 3.2.1; deepseek-ai/DualPipe): ``n_stages`` ranks, micro-batches 0 .. n/2 - 1 enter on rank 0
    (direction 0), n/2 .. n - 1 on the last rank (direction 1). Rank r and rank n_stages - 1 - r run mirror
    orders. Bubble (PP/2-1)(F&B+B-3W), 2x parameters, PP+1 activations ([V3] Table 2). Needs an even
    ``n_stages`` and an even ``n_micro_batches >= 2 n_stages``. Raises TypeError / ValueError."""
    half, chunks = n_stages // 2, n_micro_batches // 2
    ranks = []
    for r in range(n_stages):
        directions = (0, 1) if r < half else (1, 0)  # on the second half, phase 0 is direction 1
        stages = tuple(r if d == 0 else n_stages - 1 - r for d in directions)
        ranks.append(dualpipe_rank(half, min(r, n_stages - 1 - r), chunks, stages,
                                   tuple(d * chunks for d in directions), directions))
    return Schedule("DualPipe", n_stages, n_micro_batches, tuple(ranks))


@boundary(arguments.dualpipev)
def dualpipev(n_stages: int, n_micro_batches: int) -> Schedule:
    """DualPipeV, DualPipe cut in half (Sea AI Lab's "cut-in-half"; deepseek-ai/DualPipe ``DualPipeV``):
    ``n_stages`` stages on ``n_stages / 2`` ranks in a V, rank r holding stage r (phase 0) and stage
    n_stages - 1 - r (phase 1) of every micro-batch. Rank r's order is DualPipe's rank r with twice the
    micro-batches, its direction-1 micro-batches renamed. Same bubble as DualPipe on half the devices. Needs an
    even ``n_stages`` and ``n_micro_batches >= n_stages``. Raises TypeError / ValueError."""
    half = n_stages // 2
    ranks = tuple(dualpipe_rank(half, r, n_micro_batches, (r, n_stages - 1 - r), (0, 0), (0, 0))
                  for r in range(half))
    return Schedule("DualPipeV", n_stages, n_micro_batches, ranks)


SCHEDULES = {  # by the names [V3] Table 2 and the DualPipe README use
    "GPipe": gpipe, "1F1B": one_f_one_b, "ZB1P": zb1p, "DualPipe": dualpipe, "DualPipeV": dualpipev}
