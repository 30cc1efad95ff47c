"""One training step of the tiny DeepSeek-style model ([V3] 2.1.2 and 2.2, [LF]), with ``balance="loss_free"``:

    for tokens in micro_batches:                     # every training forward counts its experts' load
        loss = main + (lambda / D) * sum_k L_k       # (+ balance losses for "aux" or sequence-wise)
        (loss * share_of_positions).backward()       # B_i T_i / sum_j B_j T_j, not 1 / len(micro_batches)
    optimizer.step()                                 # the bias is NOT a parameter: the optimizer never sees it
    for moe in model.moe_layers():
        moe.update_bias(gamma)                       # once per optimizer step, from the load of the whole step

Balancing modes: ``none``; ``aux``, the classical auxiliary loss alpha * sum_i f_i P_i of each MoE layer over the
tokens of a micro-batch (``balance.balance_loss``); ``loss_free``, the bias update above. ``seq_alpha > 0`` adds
V3's complementary sequence-wise loss (``balance.sequence_balance_loss``) in any mode.

Precision (``dtype``): ``"float32"`` trains in float32; ``"bfloat16"`` runs the forward passes under
``torch.autocast`` with bfloat16 (the natural choice on a GPU; also works on a CPU). The weights, the optimizer
state and the routing state (each MoE layer's bias and load) stay float32, and the router computes in float32
under autocast, as DeepSeek-V3's released gate does.

A step that fails (an exception of any kind, TrainingDiverged included) leaves the weights, the optimizer state
and the routing state of every MoE layer as they were before the step (``StepRollback``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from course_lib.core.validation import NonFiniteError, boundary
from course_lib.model.tiny import TinyDeepSeek
from course_lib.moe import balance
from course_lib.moe.layer import RoutingStateModule
from course_lib.training import arguments


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite numbers."""


@boundary(arguments.autocast)
def autocast(device: torch.device, dtype: str = "float32") -> torch.autocast:
    """The autocast context of ``TrainConfig.dtype`` on ``device``: bfloat16 autocast, or off for float32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


class StepResult(NamedTuple):
    """What one optimizer step measured. Losses are the step's: the micro-batches' losses weighted by their share
    of the input positions, B_i T_i / sum_j B_j T_j; loads: float32 [n_moe_layers, n_routed_experts], the
    assignments each MoE layer counted during the step."""

    loss: float
    main_loss: float
    mtp_loss: float
    balance_loss: float
    grad_norm: float
    loads: torch.Tensor

    def __repr__(self) -> str:
        return (f"StepResult(loss={self.loss:.4f}, main_loss={self.main_loss:.4f}, mtp_loss={self.mtp_loss:.4f}, "
                f"balance_loss={self.balance_loss:.4g}, grad_norm={self.grad_norm:.3f}, "
                f"loads=[{' x '.join(map(str, self.loads.shape))}] float32)")


class StepRollback:
    """Undo a failed optimizer step: any exception leaving the ``with`` block (TrainingDiverged, an error in a hook,
    KeyboardInterrupt, ...) puts back the weights, the optimizer state and the routing state (``bias`` and
    ``load`` of every ``moe.RoutingStateModule`` of the model), clears the gradients, and goes on::

        with StepRollback(model, optimizer) as rollback:
            ...forward, backward...
            rollback.optimizer_step()       # copies the weights and the optimizer state, then optimizer.step()
            ...bias updates...

    The routing state (two [n_routed] vectors per MoE layer) is copied on entry; the weights and the optimizer's
    tensors only in ``optimizer_step``, as nothing before it changes them: one copy of each tensor, put back in
    place on failure (no deep copy of the optimizer's state_dict, no load_state_dict). Used by ``train_step``
    and by ``expert_parallel.train_step`` (on each rank). Raises TypeError unless given a module and an optimizer.
    """

    @boundary(arguments.step_rollback)
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.routing: list[tuple[RoutingStateModule, torch.Tensor, torch.Tensor]] = []
        self.weights: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.optimizer_state: dict[torch.Tensor, dict[str, Any]] | None = None

    def __enter__(self) -> StepRollback:
        self.routing = [(layer, layer.bias.clone(), layer.load.clone()) for layer in self.model.modules()
                        if isinstance(layer, RoutingStateModule)]
        return self

    def optimizer_step(self) -> None:
        self.weights = [(p, p.detach().clone()) for p in self.model.parameters()]
        self.optimizer_state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                                for p, state in self.optimizer.state.items()}
        self.optimizer.step()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is None:
            return False
        with torch.no_grad():
            for layer, bias, load in self.routing:
                layer.bias.copy_(bias)
                layer.load.copy_(load)
            for p, before in self.weights:
                p.copy_(before)
            if self.optimizer_state is not None:
                for p in list(self.optimizer.state):  # a parameter's first step made its state: drop it
                    if p not in self.optimizer_state:
                        del self.optimizer.state[p]
                for p, before in self.optimizer_state.items():
                    state = self.optimizer.state[p]
                    for k, v in before.items():
                        if isinstance(v, torch.Tensor) and isinstance(state.get(k), torch.Tensor):
                            state[k].copy_(v)
                        else:
                            state[k] = v
        self.optimizer.zero_grad(set_to_none=True)
        return False  # the exception goes on


@boundary(arguments.train_step)
def train_step(model: TinyDeepSeek, optimizer: torch.optim.Optimizer, micro_batches: list[torch.Tensor], *,
               balance_mode: str = "loss_free", gamma: float = 0.01, alpha: float = 0.0, seq_alpha: float = 0.0,
               mtp_lambda: float = 0.3, grad_clip: float = 0.0, dtype: str = "float32") -> StepResult:
    """One optimizer step over ``micro_batches`` (each int64 [batch, T + 1]), then the balancing update.

    ``dtype``: "float32", or "bfloat16" to run the forward passes under bfloat16 autocast (``TrainConfig.dtype``).
    Raises TrainingDiverged when the loss (checked before its backward) or the gradient norm is not finite, or a
    layer meets NaN or inf (``validation.NonFiniteError``: FP8 quantisation), TypeError / ValueError for bad
    settings and micro-batches (``arguments.train_step``, once per step). Any exception raised during the step
    (TrainingDiverged, an error in a hook, KeyboardInterrupt, ...) leaves the weights, the optimizer state and
    every MoE layer's ``bias`` and ``load`` as they were before the step (the gradients are cleared).
    """
    moes = model.moe_layers()
    with StepRollback(model, optimizer) as rollback:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        device = next(model.parameters()).device
        try:
            totals = forward_backward(model, micro_batches, device, balance_mode, alpha, seq_alpha, mtp_lambda, dtype)
        except NonFiniteError as error:  # a layer met NaN or inf before the loss (an FP8 layer)
            raise TrainingDiverged(f"non-finite values inside the model: {error}") from error
        max_norm = grad_clip if grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"the gradient norm is {grad_norm} although the loss {totals[0]:.4g} is finite")
        rollback.optimizer_step()
        loads = torch.stack([moe.load.clone() for moe in moes]).cpu() if moes else torch.zeros(0, 0)
        for moe in moes:
            if balance_mode == "loss_free":
                moe.update_bias(gamma)  # uses and resets moe.load: the whole step's load
            else:
                moe.load.zero_()
    return StepResult(*(float(x) for x in totals), grad_norm, loads)


def forward_backward(model: TinyDeepSeek, micro_batches: list[torch.Tensor], device: torch.device,
                     balance_mode: str, alpha: float, seq_alpha: float, mtp_lambda: float,
                     dtype: str) -> torch.Tensor:
    """Forward and backward of every micro-batch (``train_step``'s first half); returns the step's (loss, main,
    MTP, balance) as float32 [4]. Raises TrainingDiverged for a non-finite loss, before its backward.

    Each micro-batch's losses are weighted by its share of the step's input positions, B_i T_i / sum_j B_j T_j,
    not by 1 / n_micro: the main loss and every MTP depth's L_k divide their sums by the B T input positions
    ([V3] eq. 24: L_k sums T - k terms but divides by T), so the weighted sum is the step's sum over all windows
    divided by all its positions, which equals the loss of one batch holding every window (micro-batches of equal
    T). The balance losses, computed per micro-batch, take the same weights.
    """
    moes = model.moe_layers()
    totals = torch.zeros(4)  # loss, main, mtp, balance
    shares = position_shares(micro_batches)
    for tokens, share in zip(micro_batches, shares):
        with autocast(device, dtype):
            main, mtp = model.losses(tokens, mtp_lambda)  # inside train_step: checked there, once
        balance_term = main.new_zeros(())
        for moe in moes:
            if balance_mode == "aux" and alpha > 0:
                balance_term = balance_term + balance.balance_loss(
                    moe.last_scores.reshape(-1, moe.n_routed_experts), moe.top_k, alpha)
            if seq_alpha > 0:
                balance_term = balance_term + balance.sequence_balance_loss(moe.last_scores, moe.top_k, seq_alpha)
        loss = main + mtp + balance_term
        values = torch.stack([loss, main, mtp, balance_term]).detach().float().cpu()
        if not torch.isfinite(values).all():  # before backward, which may fail on NaN itself (FP8's quantisation)
            raise TrainingDiverged(f"the loss is not a finite number (loss {values[0]:.4g}, main {values[1]:.4g}, "
                                   f"MTP {values[2]:.4g}, balance {values[3]:.4g})")
        (loss * share).backward()
        totals += values * share
    return totals


def loss_positions(tokens: torch.Tensor) -> int:
    """B * T, the input positions of windows tokens [B, T + 1]: the count that the main loss and every MTP
    depth's loss divide their sums by ([V3] eq. 24)."""
    return tokens.shape[0] * (tokens.shape[1] - 1)


def position_shares(micro_batches: list[torch.Tensor]) -> list[float]:
    """Each micro-batch's share of the step's input positions, B_i T_i / sum_j B_j T_j (sums to 1)."""
    counts = [loss_positions(tokens) for tokens in micro_batches]
    return [count / sum(counts) for count in counts]
