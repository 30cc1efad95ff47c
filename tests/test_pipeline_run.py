"""The tiny model pipelined over CPU processes with torch.distributed.pipelining (issue 22): the stages cover the
model once, and one pipelined step equals the one-process step, loss and gradients, for torch's 1F1B, its ZB-H1
(ScheduleInterleavedZeroBubble) and DualPipeV; a failing rank ends the launch with an error, not a hang.

The model runs in float64 except its routers, which score in float32 as V3's do (``moe.layer.DeepSeekMoE.route``).
Against the one-process step on the same micro-batches (the mean of their losses, as torch computes it) the
pipeline agrees to float64 rounding (about 3e-16); against the whole batch at once, a micro-batch's router scores
round differently from the whole batch's, so gradients agree to about 1e-9 (their largest entries are about 0.4)."""

import time

import pytest
import torch

from course_lib.parallel import distributed
from course_lib.parallel.pipeline.run import max_abs_differences, pipeline_worker, run_pipeline
from course_lib.parallel.pipeline.stages import StageModule, block_ranges, reference_step
from tests.tiny_models import tiny_model


def pipelined_model(n_layers):
    return tiny_model(mtp_depth=0, n_layers=n_layers).double()


def windows(batch=8, length=16, seed=0):
    return torch.randint(0, 96, (batch, length + 1), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_layers, n_stages", [(4, 1), (4, 2), (4, 4), (5, 2), (7, 3), (8, 8)])
def test_block_ranges_cover_every_block_once_in_order(n_layers, n_stages):
    ranges = block_ranges(n_layers, n_stages)
    assert [b for first, end in ranges for b in range(first, end)] == list(range(n_layers))
    assert max(e - f for f, e in ranges) - min(e - f for f, e in ranges) <= 1


def test_the_stages_hold_every_parameter_once_and_chain_to_the_model():
    model = pipelined_model(4)
    stages = [StageModule(model, s, 3) for s in range(3)]
    names = [name for stage in stages for name in stage.model_names().values()]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters())
    for stage in stages:
        params = dict(model.named_parameters())
        for own, in_model in stage.model_names().items():
            assert stage.get_parameter(own) is params[in_model]
    tokens = windows()[:, :-1]
    h = tokens
    for stage in stages:
        h = stage(h)
    torch.testing.assert_close(h, model(tokens), rtol=0, atol=0)


def test_the_micro_batch_mean_is_the_whole_batch_loss_up_to_the_float32_router():
    model, tokens = pipelined_model(2), windows()
    whole, whole_grads = reference_step(model, tokens)
    split, split_grads = reference_step(model, tokens, 4)
    assert abs(whole - split) < 1e-13
    assert max(float((whole_grads[k] - split_grads[k]).abs().max()) for k in whole_grads) < 1e-8


def test_stage_module_rejects_mtp_and_too_many_stages():
    with pytest.raises(ValueError, match="build it with mtp_depth=0"):
        StageModule(tiny_model(), 0, 2)
    with pytest.raises(ValueError, match="need at least as many blocks"):
        StageModule(pipelined_model(2), 0, 3)


@pytest.mark.slow
@pytest.mark.parametrize("schedule, n_ranks, n_micro_batches, n_layers", [
    ("1F1B", 2, 4, 4), ("ZB1P", 2, 4, 4), ("DualPipeV", 2, 4, 4),
    ("1F1B", 4, 8, 4), ("DualPipeV", 4, 8, 8)])
def test_the_pipelined_step_equals_the_one_process_step(schedule, n_ranks, n_micro_batches, n_layers):
    model, tokens = pipelined_model(n_layers), windows()
    run = run_pipeline(model, tokens, schedule, n_ranks, n_micro_batches)
    assert len(run.losses) == n_micro_batches
    loss_diff, grad_diff = max_abs_differences(run, *reference_step(model, tokens, n_micro_batches))
    assert loss_diff < 1e-13 and grad_diff < 1e-13, (loss_diff, grad_diff)
    loss_diff, grad_diff = max_abs_differences(run, *reference_step(model, tokens))  # the whole batch at once
    assert loss_diff < 1e-13 and grad_diff < 1e-8, (loss_diff, grad_diff)
    if schedule == "DualPipeV":  # the V: rank 0 holds the first and the last stage
        assert run.stages[0] == [0, 2 * n_ranks - 1]


@pytest.mark.slow
def test_a_failing_rank_stops_the_others_with_an_error_within_the_timeout():
    model, tokens = pipelined_model(4), windows()
    start = time.monotonic()
    with pytest.raises(distributed.DistributedRunError) as caught:
        distributed.run_ranks(pipeline_worker, 2, (model, tokens, "1F1B", 4, 1), timeout_s=10.0, deadline_s=60.0)
    assert time.monotonic() - start < 40.0
    assert "fails on purpose" in caught.value.errors[1] and caught.value.hung == []
    assert 0 in caught.value.errors  # the waiting rank raised too, instead of blocking
