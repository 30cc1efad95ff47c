"""One optimizer step of data + expert parallelism on the tiny model (every rank calls it on its share of the
batch): the replicated parameters' gradients are SUM-all-reduced (data parallelism), the experts' gradients are
complete after backward (the combine's backward brings them from every rank), the gradient norm for clipping is
global, and each MoE layer's bias is updated from the load of the whole step (expert parallelism,
``layer.ExpertParallelMoE``). The step equals ``training.step.train_step`` on the whole batch (tested).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from course_lib.model.tiny import TinyDeepSeek
from course_lib.parallel.expert_parallel.layer import expert_parallel_layers
from course_lib.training.step import StepRollback, TrainingDiverged, loss_positions


def replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` except the experts' own weights of its ExpertParallelMoE layers."""
    own = {id(p) for layer in expert_parallel_layers(model) for p in layer.expert_parameters()}
    return [p for p in model.parameters() if id(p) not in own]


def all_reduce_gradients(params: list[nn.Parameter]) -> None:
    """SUM-all-reduce the gradients of ``params`` (one flat buffer, one collective). A missing gradient counts as 0."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for p, chunk in zip(params, flat.split([g.numel() for g in grads])):
        p.grad = chunk.view_as(p).clone()


def squared_norm(params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    """The sum of the squared gradients of ``params`` (float64 scalar on ``device``); missing gradients count as 0."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:
        if p.grad is not None:
            total += (p.grad.double() ** 2).sum()
    return total


class ExpertParallelStepResult(NamedTuple):
    """One data- and expert-parallel optimizer step: ``loss`` (main + MTP) and ``main_loss`` are means over the
    global batch, the same on every rank; ``grad_norm`` is the global norm before clipping; ``loads``: float32
    [n_moe_layers, n_routed], the load used by the bias update (global, or this rank's with global_load=False)."""

    loss: float
    main_loss: float
    grad_norm: float
    loads: torch.Tensor


def expert_parallel_step(model: TinyDeepSeek, optimizer: torch.optim.Optimizer, tokens: torch.Tensor, *,
                         gamma: float = 0.01, mtp_lambda: float = 0.3, grad_clip: float = 0.0,
                         global_load: bool = True) -> ExpertParallelStepResult:
    """One optimizer step of data + expert parallelism on this rank's share of the batch (every rank calls it).

    tokens: int64 [B_r, T_r + 1], this rank's windows; the ranks' shares may differ in windows and in length.
    Each rank backpropagates its loss weighted by its share of the global input positions,
    B_r T_r / sum_s B_s T_s (``training.step.loss_positions``, SUM-all-reduced with the losses): the main loss and
    every MTP depth's loss divide their sums by B T ([V3] eq. 24), so the weighted sum over ranks is the loss of
    the whole batch. The replicated parameters' gradients are SUM-all-reduced, the experts' gradients are already
    complete (the combine's backward brings each rank's weighted share), so the step equals
    ``training.step.train_step`` on the whole batch with ``balance_mode="loss_free"`` (or on the ranks' shares as
    micro-batches, when their lengths differ; tested). The gradient norm for clipping is global. Then each MoE
    layer's bias is updated from the global load (``ExpertParallelMoE.update_bias``).

    Raises training.step.TrainingDiverged (on every rank) when the loss or the gradient norm is not finite. Any
    exception (that, an error in a hook or in the optimizer, KeyboardInterrupt, ...) leaves this rank's weights,
    optimizer state and every layer's bias and load as they were (``training.step.StepRollback``), and so on every
    rank: a rank that fails leaves the others waiting in a collective, which raises (the peer is gone, or the
    process group's timeout passes) and rolls them back too. The step ends with a barrier, so no rank keeps a step
    that another rank failed after the last exchange of data.
    """
    with StepRollback(model, optimizer) as rollback:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        main, mtp = model.losses(tokens, mtp_lambda)
        count = loss_positions(tokens)
        sums = torch.stack([main + mtp, main]).detach().double() * count
        sums = torch.cat([sums, sums.new_tensor([count])])  # [loss x count, main x count, count]
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        losses = sums[:2] / sums[2]  # the global batch's (loss, main loss)
        if not torch.isfinite(losses).all():
            raise TrainingDiverged(f"the loss ({float(losses[0]):.4g}, main {float(losses[1]):.4g}) is not finite")
        ((main + mtp) * (count / float(sums[2]))).backward()  # this rank's share of the global positions
        shared = replicated_parameters(model)
        all_reduce_gradients(shared)
        own = [p for layer in expert_parallel_layers(model) for p in layer.expert_parameters()]
        own_squares = squared_norm(own, tokens.device).reshape(1)
        dist.all_reduce(own_squares, op=dist.ReduceOp.SUM)  # every rank's experts
        grad_norm = float((own_squares[0] + squared_norm(shared, tokens.device)).sqrt())
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm is {grad_norm} although the loss {float(losses[0]):.4g} is "
                                   f"finite")
        if grad_clip > 0:
            scale = min(1.0, grad_clip / (grad_norm + 1e-6))  # as torch.nn.utils.clip_grad_norm_
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        rollback.optimizer_step()
        loads = [layer.update_bias(gamma, global_load) for layer in expert_parallel_layers(model)]
        result = ExpertParallelStepResult(float(losses[0]), float(losses[1]), grad_norm,
                            torch.stack(loads).cpu() if loads else torch.zeros(0, 0))
        dist.barrier()  # commit: every rank got here; a rank that failed makes the others raise and roll back
    return result
