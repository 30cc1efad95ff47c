"""The pipeline schedules against torch.distributed.pipelining's (issue 22): each torch schedule's per-rank order,
``pipeline_order``, is built on the CPU without processes (stand-in stages give torch the sizes it reads) and
compared with ours, step by step. Torch's actions: F forward, B full backward, I backward-for-input (our BI),
W backward-for-weights, OVERLAP_F_B an overlapped forward and backward (our F&B); None (a wait) and REDUCE_GRAD
(the gradient reduction after the last backward) have no counterpart here and are left out."""

from types import SimpleNamespace

import pytest
import torch
from torch.distributed.pipelining import schedules as torch_schedules

from course_lib.parallel.pipeline.schedules import Overlapped, dualpipev, one_f_one_b, parts, zb1p

TORCH_KIND = {"FORWARD": "F", "FULL_BACKWARD": "B", "BACKWARD_INPUT": "BI", "BACKWARD_WEIGHT": "W"}


def stand_in_stages(n_stages, n_ranks, stage_indices):
    """What torch's schedule constructors read of rank 0's stages: sizes and indices, no process group."""
    return [SimpleNamespace(num_stages=n_stages, group_size=n_ranks, group_rank=0, stage_index=i,
                            submod=torch.nn.Identity()) for i in stage_indices]


def torch_order(actions):
    """Torch's actions of one rank as ours read: 'F3@1' (kind, micro-batch, stage), a pair as a tuple."""
    def one(action):
        return f"{TORCH_KIND[action.computation_type.name]}{action.microbatch_index}@{action.stage_index}"
    order = []
    for action in actions:
        if action is None or action.computation_type.name == "REDUCE_GRAD":
            continue
        order.append(tuple(map(one, action.sub_actions)) if action.sub_actions else one(action))
    return order


def our_order(steps):
    def one(op):
        return f"{op.kind}{op.micro_batch}@{op.stage}"
    return [tuple(map(one, parts(step))) if isinstance(step, Overlapped) else one(step) for step in steps]


@pytest.mark.parametrize("n_stages, n_micro_batches", [(2, 4), (4, 8), (4, 9), (8, 16)])
def test_1f1b_equals_torch_schedule1f1b_on_every_rank_but_the_last(n_stages, n_micro_batches):
    torch_1f1b = torch_schedules.Schedule1F1B(stand_in_stages(n_stages, n_stages, [0])[0], n_micro_batches)
    ours = one_f_one_b(n_stages, n_micro_batches)
    for r in range(n_stages - 1):
        assert torch_order(torch_1f1b.pipeline_order[r]) == our_order(ours.ranks[r]), f"rank {r}"


@pytest.mark.xfail(strict=True, reason="torch 2.13's Schedule1F1B._get_pipeline_order numbers the last rank's "
                   "forwards 1 .. n (no warm-up forward, and the counter is raised before its first use): F0 "
                   "missing, F<n> that does not exist. Its _step_microbatches runs the right order; only the "
                   "pipeline_order it shows is off. Strict: a torch that fixes it makes this test fail, to be "
                   "turned into a plain assertion.")
def test_1f1b_last_rank_equals_torch_schedule1f1b():
    torch_1f1b = torch_schedules.Schedule1F1B(stand_in_stages(4, 4, [0])[0], 8)
    assert torch_order(torch_1f1b.pipeline_order[3]) == our_order(one_f_one_b(4, 8).ranks[3])


@pytest.mark.parametrize("n_stages, n_micro_batches", [(2, 4), (4, 8), (4, 12), (8, 16)])
def test_zb1p_equals_torch_interleaved_zero_bubble_with_one_stage_per_rank(n_stages, n_micro_batches):
    """torch's ScheduleInterleavedZeroBubble with one stage per rank is ZB-H1: the same W delay, rank r's W of
    micro-batch m right after its BI of m + r. (torch wants a multiple of n_stages micro-batches here.)"""
    torch_zb = torch_schedules.ScheduleInterleavedZeroBubble(stand_in_stages(n_stages, n_stages, [0]),
                                                             n_micro_batches)
    ours = zb1p(n_stages, n_micro_batches)
    for r in range(n_stages):
        assert torch_order(torch_zb.pipeline_order[r]) == our_order(ours.ranks[r]), f"rank {r}"


@pytest.mark.parametrize("n_stages, n_micro_batches", [(4, 4), (4, 7), (8, 10), (8, 16)])
def test_dualpipev_equals_torch_schedule_dualpipev(n_stages, n_micro_batches):
    """torch's ScheduleDualPipeV ("based on deepseek-ai/DualPipe") on n_stages / 2 ranks, pairs included."""
    torch_v = torch_schedules.ScheduleDualPipeV(stand_in_stages(n_stages, n_stages // 2, [0, n_stages - 1]),
                                                n_micro_batches)
    ours = dualpipev(n_stages, n_micro_batches)
    for r in range(n_stages // 2):
        assert torch_order(torch_v.pipeline_order[r]) == our_order(ours.ranks[r]), f"rank {r}"
