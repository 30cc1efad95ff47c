"""Our schedules against torch.distributed.pipelining's: the per-rank order of a torch schedule, its
``pipeline_order``, built on the CPU without processes (stand-in stages give torch the sizes it reads), written as
ours are, step by step.

Torch's actions: F forward, B full backward, I backward-for-input (our BI), W backward-for-weights, OVERLAP_F_B an
overlapped forward and backward (our F&B); None (a wait) and REDUCE_GRAD (the gradient reduction after the last
backward) have no counterpart here and are left out. A step is written ``"F3@1"`` (kind, micro-batch, stage), an
overlapped pair as a tuple of its forward and its backward.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Union

import torch
from torch.distributed.pipelining import schedules as torch_schedules

from course_lib.parallel.pipeline.schedules import Op, Overlapped, Schedule, Step, parts

TORCH_KIND = {"FORWARD": "F", "FULL_BACKWARD": "B", "BACKWARD_INPUT": "BI", "BACKWARD_WEIGHT": "W"}
TORCH_SCHEDULES = {  # our schedule's name -> (torch's class, stages per rank)
    "1F1B": (torch_schedules.Schedule1F1B, 1), "ZB1P": (torch_schedules.ScheduleInterleavedZeroBubble, 1),
    "DualPipeV": (torch_schedules.ScheduleDualPipeV, 2)}

Written = Union[str, tuple[str, ...]]


def stand_in_stages(n_stages: int, n_ranks: int, stage_indices: list[int]) -> list[SimpleNamespace]:
    """What torch's schedule constructors read of rank 0's stages: sizes and indices, no process group."""
    return [SimpleNamespace(num_stages=n_stages, group_size=n_ranks, group_rank=0, stage_index=i,
                            submod=torch.nn.Identity()) for i in stage_indices]


def stages_of_rank(rank: int, n_ranks: int, stages_per_rank: int) -> list[int]:
    """The stages rank ``rank`` holds: ``[rank]``, or with two per rank the V ``[rank, 2 n_ranks - 1 - rank]``."""
    return [rank] if stages_per_rank == 1 else [rank, 2 * n_ranks - 1 - rank]


def build_torch_schedule(name: str, stages: list, n_micro_batches: int,
                         **options: object) -> torch_schedules._PipelineSchedule:
    """torch's schedule ``name`` (a key of ``TORCH_SCHEDULES``) over this rank's ``stages`` (``PipelineStage``s, or
    stand-ins): Schedule1F1B takes its one stage, the others the list. ``options`` go to torch (``loss_fn``)."""
    cls, _ = TORCH_SCHEDULES[name]
    return cls(stages[0] if cls is torch_schedules.Schedule1F1B else stages, n_micro_batches, **options)


def torch_schedule(name: str, n_stages: int, n_micro_batches: int) -> torch_schedules._PipelineSchedule:
    """torch's schedule ``name`` (a key of ``TORCH_SCHEDULES``) for ``n_stages`` stages, built with rank 0's
    stand-in stages; its ``pipeline_order[r]`` is rank r's list of actions. Raises KeyError for another name, and
    what torch raises for sizes it does not take (ScheduleInterleavedZeroBubble: a multiple of n_stages
    micro-batches)."""
    per_rank = TORCH_SCHEDULES[name][1]
    n_ranks = n_stages // per_rank
    stages = stand_in_stages(n_stages, n_ranks, stages_of_rank(0, n_ranks, per_rank))
    return build_torch_schedule(name, stages, n_micro_batches)


def torch_order(actions: list) -> list[Written]:
    """Torch's actions of one rank, written as ours (see the module's docstring)."""
    def one(action) -> str:
        return f"{TORCH_KIND[action.computation_type.name]}{action.microbatch_index}@{action.stage_index}"
    order: list[Written] = []
    for action in actions:
        if action is None or action.computation_type.name == "REDUCE_GRAD":
            continue
        order.append(tuple(map(one, action.sub_actions)) if action.sub_actions else one(action))
    return order


def our_order(steps: tuple[Step, ...]) -> list[Written]:
    """One rank's steps of one of our schedules, written as ``torch_order`` writes torch's."""
    def one(op: Op) -> str:
        return f"{op.kind}{op.micro_batch}@{op.stage}"
    return [tuple(map(one, parts(step))) if isinstance(step, Overlapped) else one(step) for step in steps]


def first_difference(ours: Schedule, theirs: torch_schedules._PipelineSchedule) -> dict[int, int | None]:
    """For every rank: the index of the first step where our order and torch's differ (None: equal throughout)."""
    found: dict[int, int | None] = {}
    for r in range(ours.n_ranks):
        a, b = our_order(ours.ranks[r]), torch_order(theirs.pipeline_order[r])
        found[r] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else
                        min(len(a), len(b)))
    return found
