"""The tiny model pipelined over CPU processes with torch.distributed.pipelining ([V3] 3.2.1), against one process.

Each rank (a process of ``distributed.run_ranks``, gloo, a process group with a timeout) builds its stages
(``stages.StageModule`` in torch's ``PipelineStage``) and runs one step of torch's schedule over the batch cut in
micro-batches; the last stage computes ``stages.pipeline_loss`` per micro-batch, and torch averages the gradients
over the micro-batches (``scale_grads``). The schedules:

- ``1F1B``: ``Schedule1F1B``, one stage per rank;
- ``ZB1P``: ``ScheduleInterleavedZeroBubble`` with one stage per rank, ZeroBubble's ZB-H1 (backward split into
  input and weight gradients);
- ``DualPipeV``: ``ScheduleDualPipeV`` ("based on deepseek-ai/DualPipe"), two stages per rank in a V: rank r
  holds stages r and 2 n_ranks - 1 - r, so rank 0 holds the embedding and the head
  (``torch_orders.TORCH_SCHEDULES``, ``torch_orders.build_torch_schedule``).

``run_pipeline`` launches the ranks and gathers the micro-batch losses and every parameter's gradient under the
whole model's names; ``stages.reference_step`` is the one-process step to compare with. A rank that fails makes
the others raise when their receive times out (or their peer's socket closes): ``DistributedRunError``, never a
hang.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.pipelining import PipelineStage

from course_lib.core.validation import boundary
from course_lib.model.tiny import TinyDeepSeek
from course_lib.parallel import distributed
from course_lib.parallel.pipeline import arguments
from course_lib.parallel.pipeline.stages import StageModule, pipeline_loss
from course_lib.parallel.pipeline.torch_orders import TORCH_SCHEDULES, build_torch_schedule, stages_of_rank


def pipeline_worker(rank: int, world_size: int, model: TinyDeepSeek, tokens: torch.Tensor, schedule: str,
                    n_micro_batches: int, fail_rank: int | None = None) -> dict:
    """Run by every rank (``distributed.run_ranks``): one training step of ``schedule`` on the windows ``tokens``
    int64 [B, T + 1] in ``n_micro_batches`` micro-batches. Returns {"stages": this rank's stages, "losses": the
    micro-batch losses (on the rank holding the last stage, else []), "grads": the whole model's parameter name ->
    gradient, for this rank's parameters}. ``fail_rank``: that rank raises before the step (to show that the
    others stop with an error instead of waiting forever)."""
    per_rank = TORCH_SCHEDULES[schedule][1]
    n_stages = world_size * per_rank
    mine = stages_of_rank(rank, world_size, per_rank)
    model.train()
    modules = [StageModule(model, s, n_stages) for s in mine]
    stages = [PipelineStage(m, s, n_stages, torch.device("cpu")) for m, s in zip(modules, mine)]
    runner = build_torch_schedule(schedule, stages, n_micro_batches, loss_fn=pipeline_loss)
    if rank == fail_rank:
        raise RuntimeError(f"rank {rank} fails on purpose before the pipeline step")
    inputs = (tokens[:, :-1],) if 0 in mine else ()
    target = tokens if n_stages - 1 in mine else None
    losses: list[torch.Tensor] = []
    runner.step(*inputs, target=target, losses=losses)
    grads = {}
    for module in modules:
        for name, name_in_model in module.model_names().items():
            grad = module.get_parameter(name).grad
            if grad is not None:
                grads[name_in_model] = grad.clone()
    return {"stages": mine, "losses": [float(loss.detach()) for loss in losses], "grads": grads}


@dataclass(frozen=True)
class PipelineRun:
    """One pipelined step: ``losses`` per micro-batch, ``loss`` their mean, ``grads`` parameter name -> gradient
    (every parameter of the pipelined model), ``stages[r]`` the stages rank r held."""
    schedule: str
    losses: list[float]
    grads: dict[str, torch.Tensor]
    stages: list[list[int]]

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)


@boundary(arguments.run_pipeline)
def run_pipeline(model: TinyDeepSeek, tokens: torch.Tensor, schedule: str = "1F1B", n_ranks: int = 2,
                 n_micro_batches: int = 4, timeout_s: float = 30.0, deadline_s: float = 120.0) -> PipelineRun:
    """One training step of ``model`` (``mtp_depth = 0``; cut by ``stages.StageModule``) on the windows ``tokens``
    int64 [B, T + 1], pipelined over ``n_ranks`` local gloo processes with torch's ``schedule`` (a key of
    ``torch_orders.TORCH_SCHEDULES``) in ``n_micro_batches`` micro-batches of equal size. The model is copied into
    each process; its own gradients are not touched. ``timeout_s``: the process group's timeout (a receive waiting
    longer raises); ``deadline_s`` bounds the launch. Returns a ``PipelineRun``. Raises
    ``distributed.DistributedRunError`` when a rank fails or hangs; TypeError / ValueError for an unknown schedule,
    more stages than blocks, a batch that does not split into equal micro-batches, or fewer micro-batches than the
    schedule needs."""
    results = distributed.run_ranks(pipeline_worker, n_ranks, (model, tokens, schedule, n_micro_batches),
                                    timeout_s=timeout_s, deadline_s=deadline_s)
    grads = {name: grad for result in results for name, grad in result["grads"].items()}
    losses = [loss for result in results for loss in result["losses"]]
    return PipelineRun(schedule, losses, grads, [result["stages"] for result in results])


def max_abs_differences(run: PipelineRun, loss: float, grads: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(|run.loss - loss|, the largest |difference| of any gradient entry) against a one-process step
    (``stages.reference_step``). Raises ValueError when the two have gradients for different parameters."""
    if set(run.grads) != set(grads):
        raise ValueError(f"the pipeline and the reference have gradients of different parameters: "
                         f"{sorted(set(run.grads) ^ set(grads))}")
    grad_diff = max(float((run.grads[name] - grads[name]).abs().max()) for name in grads)
    return abs(run.loss - loss), grad_diff
