"""Training the tiny DeepSeek-style model: the training step, the loop, validation, checkpoints and the CLI.

The training step ([V3] 2.1.2 and 2.2, [LF]) with ``balance="loss_free"``:

    for tokens in micro_batches:                     # every training forward counts its experts' load
        loss = main + (lambda / D) * sum_k L_k       # (+ balance losses for "aux" or sequence-wise)
        (loss * share_of_positions).backward()       # B_i T_i / sum_j B_j T_j, not 1 / len(micro_batches)
    optimizer.step()                                 # the bias is NOT a parameter: the optimizer never sees it
    for moe in model.moe_layers():
        moe.update_bias(gamma)                       # once per optimizer step, from the load of the whole step

Balancing modes: ``none``; ``aux``, the classical auxiliary loss alpha * sum_i f_i P_i of each MoE layer over the
tokens of a micro-batch (``balance.balance_loss``); ``loss_free``, the bias update above. ``seq_alpha > 0`` adds
V3's complementary sequence-wise loss (``balance.sequence_balance_loss``) in any mode.

Precision (``TrainConfig.dtype``): ``"float32"`` (the default) trains in float32; ``"bfloat16"`` runs the forward
passes under ``torch.autocast`` with bfloat16 (the natural choice on a GPU; also works on a CPU). The weights,
the optimizer state and the routing state (each MoE layer's bias and load) stay float32, and the router computes
in float32 under autocast, as DeepSeek-V3's released gate does.

A step that fails (an exception of any kind, TrainingDiverged included) leaves the weights, the optimizer state,
the routing state of every MoE layer and the trainer's data position as they were before the step.

Command line (the same loop, for scripts and a GPU)::

    python -m course_lib.training.train --balance loss_free --mtp-depth 1 --steps 600 --device auto --seed 0 --json out.json

A damaged checkpoint given to ``--resume`` prints a one-line error naming the file and the entry, and exits with
status 2 (3 when training diverges).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from course_lib.moe import balance
from course_lib.moe.balance import BALANCE_MODES
from course_lib.training.data import CharTokenizer, Corpus, python_docs, synthetic_task
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.moe.layer import RoutingStateModule
from course_lib.core.runtime import get_device, seed_everything
from course_lib.core.validation import NonFiniteError, check_int, check_number

DTYPES = ("float32", "bfloat16")  # TrainConfig.dtype: float32, or bfloat16 autocast
CHECKPOINT_FORMAT = "course_lib.tiny_deepseek"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the defaults train the default ModelConfig to readable text in about a minute on 2 CPU cores."""

    steps: int = 600
    batch_size: int = 16
    seq_len: int = 64  # T: tokens per sequence
    micro_batches: int = 1  # micro-batches per optimizer step (gradient accumulation)
    lr: float = 3e-3
    min_lr: float = 3e-4  # cosine decay from lr to min_lr after the warm-up
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    balance: str = "loss_free"  # "none", "aux" or "loss_free"
    alpha: float = 0.01  # weight of the auxiliary balance loss (balance="aux")
    gamma: float = 0.01  # bias update speed (balance="loss_free"); V3 used 0.001 over a far longer run
    seq_alpha: float = 0.0  # weight of V3's sequence-wise balance loss (V3: 0.0001); 0 = off
    mtp_lambda: float = 0.3  # lambda of the MTP loss (V3: 0.3, later 0.1)
    eval_interval: int = 100  # validate every this many steps (and at the end)
    eval_tokens: int = 40_000  # validation tokens per evaluation (the whole split of Python's docs: about 38K)
    seed: int = 0
    dtype: str = "float32"  # "float32", or "bfloat16": forward passes under torch.autocast (the GPU choice)

    def __post_init__(self) -> None:
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES} (bfloat16 = autocast), got {self.dtype!r}")
        positive = ("steps", "batch_size", "seq_len", "micro_batches", "eval_interval", "eval_tokens")
        for f in dataclasses.fields(self):  # every other number (lr, ..., warmup_steps, seed) is >= 0
            value = getattr(self, f.name)
            if f.type in ("int", int):
                check_int(f.name, value, 1 if f.name in positive else 0)
            if f.type in ("float", float):
                check_number(f.name, value, 0)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite numbers."""


class CheckpointError(ValueError):
    """A file is not a usable checkpoint of this model: truncated, foreign, damaged, or from another
    configuration. The message is one line naming the file and, for a damaged entry, the entry."""


def autocast(device: torch.device, dtype: str = "float32") -> torch.autocast:
    """The autocast context of ``TrainConfig.dtype`` on ``device``: bfloat16 autocast, or off for float32."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (bfloat16 = autocast), got {dtype!r}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr``."""
    check_int("step", step, 0)  # 0-based optimizer step
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


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

    The routing state (two [n_routed] vectors per MoE layer) is copied on entry; the weights and the optimizer
    state only in ``optimizer_step``, as nothing before it changes them. Used by ``train_step`` and by
    ``expert_parallel.step.expert_parallel_step`` (on each rank). Raises TypeError unless given a module and an
    optimizer.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(model, torch.nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"StepRollback(model, optimizer) takes a torch.nn.Module and a torch.optim.Optimizer, got "
                            f"{type(model).__name__} and {type(optimizer).__name__}")
        self.model, self.optimizer = model, optimizer
        self.routing: list[tuple[RoutingStateModule, torch.Tensor, torch.Tensor]] = []
        self.weights: list[torch.Tensor] | None = None
        self.optimizer_state: dict[str, Any] | None = None

    def __enter__(self) -> StepRollback:
        self.routing = [(layer, layer.bias.clone(), layer.load.clone()) for layer in self.model.modules()
                        if isinstance(layer, RoutingStateModule)]
        return self

    def optimizer_step(self) -> None:
        self.weights = [p.detach().clone() for p in self.model.parameters()]
        self.optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        self.optimizer.step()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is None:
            return False
        with torch.no_grad():
            for layer, bias, load in self.routing:
                layer.bias.copy_(bias)
                layer.load.copy_(load)
            if self.weights is not None:
                for p, before in zip(self.model.parameters(), self.weights):
                    p.copy_(before)
        if self.optimizer_state is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
        self.optimizer.zero_grad(set_to_none=True)
        return False  # the exception goes on


def train_step(model: TinyDeepSeek, optimizer: torch.optim.Optimizer, micro_batches: list[torch.Tensor], *,
               balance_mode: str = "loss_free", gamma: float = 0.01, alpha: float = 0.0, seq_alpha: float = 0.0,
               mtp_lambda: float = 0.3, grad_clip: float = 0.0, dtype: str = "float32") -> StepResult:
    """One optimizer step over ``micro_batches`` (each int64 [batch, T + 1]), then the balancing update.

    ``dtype``: "float32", or "bfloat16" to run the forward passes under bfloat16 autocast (``TrainConfig.dtype``).
    Raises TrainingDiverged when the loss (checked before its backward) or the gradient norm is not finite, or a
    layer meets NaN or inf (``validation.NonFiniteError``: FP8 quantisation, the router), TypeError / ValueError
    for bad settings and micro-batches (checked once per step, ``TinyDeepSeek.check_tokens``). Any
    exception raised during the step (TrainingDiverged, an error in a hook, KeyboardInterrupt, ...) leaves the
    weights, the optimizer state and every MoE layer's ``bias`` and ``load`` as they were before the step (the
    gradients are cleared).
    """
    if balance_mode not in BALANCE_MODES:
        raise ValueError(f"balance_mode must be one of {BALANCE_MODES}, got {balance_mode!r}")
    for name, value in (("gamma", gamma), ("alpha", alpha), ("seq_alpha", seq_alpha), ("mtp_lambda", mtp_lambda),
                        ("grad_clip", grad_clip)):
        check_number(name, value, 0)
    if isinstance(micro_batches, torch.Tensor) or not micro_batches:
        raise ValueError("micro_batches must be a non-empty list of int64 tensors [batch, T + 1]: one optimizer step "
                         "needs at least one batch of tokens")
    for tokens in micro_batches:  # once per step, here: the forward passes below skip the check
        model.check_tokens(tokens, windows=True)
    moes = model.moe_layers()
    with StepRollback(model, optimizer) as rollback:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        device = next(model.parameters()).device
        try:
            totals = _forward_backward(model, micro_batches, device, balance_mode, alpha, seq_alpha, mtp_lambda,
                                       dtype)
        except NonFiniteError as error:  # a layer met NaN or inf before the loss (an FP8 layer, the router)
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


def _forward_backward(model: TinyDeepSeek, micro_batches: list[torch.Tensor], device: torch.device,
                      balance_mode: str, alpha: float, seq_alpha: float, mtp_lambda: float,
                      dtype: str) -> torch.Tensor:
    """Forward and backward of every micro-batch; returns the step's (loss, main, MTP, balance) as float32 [4].
    Raises TrainingDiverged for a non-finite loss, before its backward.

    Each micro-batch's losses are weighted by its share of the step's input positions, B_i T_i / sum_j B_j T_j,
    not by 1 / n_micro: the main loss and every MTP depth's L_k divide their sums by the B T input positions
    ([V3] eq. 24: L_k sums T - k terms but divides by T), so the weighted sum is the step's sum over all windows
    divided by all its positions, which equals the loss of one batch holding every window (micro-batches of equal
    T). The balance losses, computed per micro-batch, take the same weights.
    """
    moes = model.moe_layers()
    totals = torch.zeros(4)  # loss, main, mtp, balance
    shares = _position_shares(micro_batches)
    for tokens, share in zip(micro_batches, shares):
        with autocast(device, dtype):
            main, mtp = model._losses(tokens, mtp_lambda)  # tokens and mtp_lambda checked by train_step
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


def _position_shares(micro_batches: list[torch.Tensor]) -> list[float]:
    """Each micro-batch's share of the step's input positions, B_i T_i / sum_j B_j T_j (sums to 1)."""
    counts = [loss_positions(tokens) for tokens in micro_batches]
    return [count / sum(counts) for count in counts]


@dataclass
class History:
    """Metrics per optimizer step, and per validation. loads[step][layer][expert]: assignments of the step."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    main_loss: list[float] = field(default_factory=list)
    mtp_loss: list[float] = field(default_factory=list)
    balance_loss: list[float] = field(default_factory=list)
    maxvio_batch: list[float] = field(default_factory=list)  # mean over the MoE layers
    lr: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    loads: list[list[list[float]]] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_mtp_loss: list[float] = field(default_factory=list)
    maxvio_global: list[float] = field(default_factory=list)

    def load_tensor(self) -> torch.Tensor:
        """The loads as float32 [steps, n_moe_layers, n_routed_experts]."""
        return torch.tensor(self.loads, dtype=torch.float32)

    def __repr__(self) -> str:
        if not self.step:
            return "History(steps=0)"
        text = f"History(steps={len(self.step)}, last loss {self.loss[-1]:.4g} at step {self.step[-1]}"
        if self.val_loss:
            text += (f", val_loss {self.val_loss[-1]:.4g} at step {self.eval_step[-1]}, "
                     f"MaxVio_global {self.maxvio_global[-1]:.3g}")
        return text + f", MaxVio_batch {self.maxvio_batch[-1]:.3g}, {self.tokens_per_s[-1]:,.0f} tokens/s)"

    @classmethod
    def from_dict(cls, values: Any) -> History:
        """Build from ``dataclasses.asdict`` output, checking it: ValueError names what is wrong."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(values, dict) or set(values) != set(names):
            got = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"expected a dict with the fields {names}, got {got}")
        for name in names:
            column = values[name]
            if not isinstance(column, list):
                raise ValueError(f"{name} must be a list, got {type(column).__name__}")
            if name == "loads" and not all(isinstance(row, list) and all(isinstance(r, list) for r in row)
                                           for row in column):
                raise ValueError("loads must be a list (steps) of lists (layers) of lists (experts)")
            flat = [x for row in column for layer in row for x in layer] if name == "loads" else column
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in flat):
                raise ValueError(f"{name} must hold numbers only")
        for group in (names[:9], names[9:]):  # per-step columns, per-validation columns
            lengths = {len(values[name]) for name in group}
            if len(lengths) > 1:
                raise ValueError(f"the columns {group} have different lengths {sorted(lengths)}")
        return cls(**values)


def make_optimizer(model: TinyDeepSeek, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on norms' weights); the routing bias is a buffer, not a
    parameter, so the optimizer never sees it."""
    if not isinstance(model, torch.nn.Module) or not isinstance(cfg, TrainConfig):
        raise TypeError(f"make_optimizer(model: nn.Module, cfg: TrainConfig), got {type(model).__name__}, "
                        f"{type(cfg).__name__}")
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95))


def mean_maxvio(loads: torch.Tensor) -> float:
    """MaxVio averaged over MoE layers ([LF] reports the layer average). loads: [n_layers, n_experts]."""
    if not isinstance(loads, torch.Tensor) or loads.dim() != 2:
        raise ValueError(f"loads must be a 2-D tensor [n_layers, n_experts], got {loads!r:.80}")
    if loads.numel() == 0:
        return 0.0
    return sum(balance.max_violation(layer) for layer in loads) / len(loads)


class Trainer:
    """The training loop around ``train_step``: data, optimizer, learning-rate schedule, metrics, validation,
    checkpoints. ``train()`` can be called repeatedly (it continues), and ``Trainer.resume`` continues a saved run
    exactly where it stopped."""

    def __init__(self, model: TinyDeepSeek, corpus: Corpus, cfg: TrainConfig = TrainConfig(),
                 device: str | torch.device = "auto") -> None:
        if not isinstance(model, TinyDeepSeek) or not isinstance(corpus, Corpus) or not isinstance(cfg, TrainConfig):
            raise TypeError(f"Trainer(model: TinyDeepSeek, corpus: Corpus, cfg: TrainConfig), got "
                            f"{type(model).__name__}, {type(corpus).__name__}, {type(cfg).__name__}")
        if corpus.tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(f"the corpus has {corpus.tokenizer.vocab_size} tokens, the model's vocab_size is "
                             f"{model.config.vocab_size}")
        if cfg.seq_len > model.config.max_seq_len:
            raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
        self.cfg, self.corpus = cfg, corpus
        self.device = get_device(device)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(model, cfg)
        self.data_rng = torch.Generator().manual_seed(cfg.seed)  # its state is the position in the data
        self.step = 0
        self.history = History()

    def __repr__(self) -> str:
        total, _ = self.model.count_params()
        return (f"Trainer(step {self.step} of {self.cfg.steps}, {self.cfg.balance} balancing, {self.cfg.dtype} on "
                f"{self.device}, {total:,} parameters, {self.corpus.tokenizer.vocab_size} tokens)")

    # ------------------------------------------------------------------------------------------ training
    def train(self, steps: int | None = None, progress: bool = True) -> History:
        """Train ``steps`` more optimizer steps (default: up to ``cfg.steps``), validating every
        ``eval_interval`` steps and at the end of the run."""
        from tqdm.auto import tqdm

        if steps is not None:
            check_int("steps", steps, 0)  # 0: nothing to do (a notebook's steps // 4 on a tiny run)
        last = self.cfg.steps if steps is None else min(self.cfg.steps, self.step + steps)
        cfg = self.cfg
        bar = tqdm(total=last - self.step, desc="training", disable=not progress, leave=True)
        while self.step < last:
            data_position = self.data_rng.get_state()
            batches = [self.corpus.get_batch("train", cfg.batch_size, cfg.seq_len, self.data_rng).to(self.device)
                       for _ in range(cfg.micro_batches)]
            lr = lr_at(self.step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            start = time.perf_counter()
            try:
                result = train_step(self.model, self.optimizer, batches, balance_mode=cfg.balance, gamma=cfg.gamma,
                                    alpha=cfg.alpha, seq_alpha=cfg.seq_alpha, mtp_lambda=cfg.mtp_lambda,
                                    grad_clip=cfg.grad_clip, dtype=cfg.dtype)
            except BaseException as error:
                self.data_rng.set_state(data_position)  # the failed step's batches are drawn again next time
                bar.close()
                if not isinstance(error, TrainingDiverged):
                    raise
                raise TrainingDiverged(
                    f"Training stopped at step {self.step + 1} (learning rate {lr:.3g}): {error}. The weights are "
                    f"those after step {self.step}. Try a lower learning rate (e.g. lr={lr / 3:.2g}), gradient "
                    f"clipping (grad_clip=1.0), more warm-up steps, or smaller balancing weights (alpha, gamma)."
                ) from None
            seconds = time.perf_counter() - start
            self.step += 1
            self._record(result, lr, cfg.batch_size * cfg.seq_len * cfg.micro_batches / seconds)
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.3f}", maxvio=f"{self.history.maxvio_batch[-1]:.2f}")
            if self.step % cfg.eval_interval == 0 or self.step == cfg.steps:
                self.validate()
        bar.close()
        return self.history

    def _record(self, result: StepResult, lr: float, tokens_per_s: float) -> None:
        h = self.history
        h.step.append(self.step)
        h.loss.append(result.loss)
        h.main_loss.append(result.main_loss)
        h.mtp_loss.append(result.mtp_loss)
        h.balance_loss.append(result.balance_loss)
        h.maxvio_batch.append(mean_maxvio(result.loads))
        h.lr.append(lr)
        h.tokens_per_s.append(tokens_per_s)
        h.loads.append(result.loads.tolist())

    @torch.no_grad()
    def evaluate(self, max_tokens: int | None = None) -> dict[str, Any]:
        """Main-head loss, MTP loss and MaxVio_global on the first ``max_tokens`` (default ``cfg.eval_tokens``)
        tokens of the validation split, the same windows every time.
        Eval forwards never change the experts' load counts or biases.

        Returns val_loss, val_mtp_loss (0 without MTP), maxvio_global (mean over MoE layers) and
        loads (float32 [n_moe_layers, n_routed_experts], assignments over the whole validation set).
        """
        if max_tokens is not None:
            check_int("max_tokens", max_tokens, 1)
        model, cfg = self.model, self.cfg
        was_training = model.training
        model.eval()
        moes = model.moe_layers()
        loads = torch.zeros(len(moes), moes[0].n_routed_experts if moes else 0)
        main_sum = mtp_sum = 0.0
        windows = 0
        for tokens in self.corpus.eval_batches(cfg.batch_size, cfg.seq_len, max_tokens or cfg.eval_tokens):
            with autocast(self.device, cfg.dtype):
                main, mtp = model.losses(tokens.to(self.device), cfg.mtp_lambda)
            main_sum += float(main) * len(tokens)
            mtp_sum += float(mtp) * len(tokens)
            windows += len(tokens)
            for i, moe in enumerate(moes):
                loads[i] += moe.last_load.cpu()
        model.train(was_training)
        return {"val_loss": main_sum / windows, "val_mtp_loss": mtp_sum / windows,
                "maxvio_global": mean_maxvio(loads), "loads": loads}

    def validate(self) -> dict[str, Any]:
        """``evaluate`` and record the result in the history."""
        result = self.evaluate()
        h = self.history
        h.eval_step.append(self.step)
        h.val_loss.append(result["val_loss"])
        h.val_mtp_loss.append(result["val_mtp_loss"])
        h.maxvio_global.append(result["maxvio_global"])
        return result

    def summary(self, last_steps: int = 50) -> dict[str, Any]:
        """The final metrics of a run (the CLI's JSON): the last validation, MaxVio_batch and tokens/s averaged
        over the last ``last_steps`` steps (tokens/s leaves out the first 5 steps, which warm up)."""
        check_int("last_steps", last_steps, 1)
        h = self.history
        if not h.step:
            raise ValueError("nothing to summarise: train at least one step first")
        if not h.eval_step or h.eval_step[-1] != self.step:
            self.validate()
        speeds = h.tokens_per_s[5:] or h.tokens_per_s
        total, activated = self.model.count_params()
        return {
            "step": self.step, "val_loss": h.val_loss[-1], "val_mtp_loss": h.val_mtp_loss[-1],
            "maxvio_global": h.maxvio_global[-1],
            "maxvio_batch": sum(h.maxvio_batch[-last_steps:]) / len(h.maxvio_batch[-last_steps:]),
            "train_loss": sum(h.main_loss[-last_steps:]) / len(h.main_loss[-last_steps:]),
            "tokens_per_s": sum(speeds[-last_steps:]) / len(speeds[-last_steps:]),
            "params_total": total, "params_activated": activated, "device": str(self.device),
            "model_config": dataclasses.asdict(self.model.config), "train_config": dataclasses.asdict(self.cfg),
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> None:
        """Save everything a resume needs: weights and biases, optimizer state, step, RNG states (the data
        position), history, configs and the tokenizer. Written to a temporary file first, then renamed over
        ``path``, so an interrupted save never leaves a half-written checkpoint."""
        path = Path(path)
        state = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "model_config": json.dumps(dataclasses.asdict(self.model.config)),
            "train_config": json.dumps(dataclasses.asdict(self.cfg)),
            "meta": json.dumps({"step": self.step, "chars": self.corpus.tokenizer.chars,
                                "n_train": len(self.corpus.train), "n_val": len(self.corpus.val),
                                "history": dataclasses.asdict(self.history)}),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "data_rng": self.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def resume(cls, path: str | Path, corpus: Corpus, device: str | torch.device = "auto",
               model_config: ModelConfig | None = None, steps: int | None = None) -> Trainer:
        """Continue a run saved with ``save``: the next step is exactly the one the run would have taken.

        ``model_config``: when given, it must equal the checkpoint's (CheckpointError naming the differences
        otherwise). ``steps``: a new total number of steps (to extend a finished run); the learning-rate schedule
        follows the new total from here on. Every entry of the file is checked before anything (the global RNG
        included) is changed: a damaged file raises CheckpointError naming the file and the entry.
        """
        ckpt = _read(path)
        if model_config is not None:
            check_same_config(model_config, ckpt.model_config, path)
        meta = ckpt.meta
        if meta["chars"] != corpus.tokenizer.chars or (meta["n_train"], meta["n_val"]) != (len(corpus.train),
                                                                                           len(corpus.val)):
            raise CheckpointError(f"{path} was trained on other data ({meta['n_train']} training tokens, "
                                  f"{len(meta['chars'])} characters) than the corpus given ({len(corpus.train)}, "
                                  f"{corpus.tokenizer.vocab_size}): resume it with the same corpus")
        cfg = ckpt.train_config if steps is None else dataclasses.replace(ckpt.train_config, steps=steps)
        trainer = cls(ckpt.model, corpus, cfg, device)
        trainer.optimizer.load_state_dict(ckpt.state["optimizer"])  # checked by _read on a copy
        trainer.data_rng.set_state(ckpt.state["data_rng"])
        torch.set_rng_state(ckpt.state["torch_rng"])
        if ckpt.state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt.state["cuda_rng"])
        trainer.step = meta["step"]
        trainer.history = ckpt.history
        return trainer


class _Checkpoint(NamedTuple):
    """A checkpoint whose every entry was checked: the raw state and its parsed parts."""

    state: dict[str, Any]
    model_config: ModelConfig
    train_config: TrainConfig
    meta: dict[str, Any]
    history: History
    model: TinyDeepSeek  # with the checkpoint's weights and biases loaded


def _entry_error(path: Path, entry: str, reason: str) -> CheckpointError:
    reason = " ".join(str(reason).split())[:300]  # one line
    return CheckpointError(f"{path}: the entry {entry!r} is damaged: {reason}")


def _json_dict(path: Path, state: dict[str, Any], entry: str) -> dict[str, Any]:
    try:
        value = json.loads(state[entry])
    except (TypeError, ValueError) as error:  # not a string, or malformed JSON
        raise _entry_error(path, entry, f"not a JSON text ({type(error).__name__}: {error})") from None
    if not isinstance(value, dict):
        raise _entry_error(path, entry, f"expected a JSON object, got {type(value).__name__}")
    return value


def _read(path: str | Path) -> _Checkpoint:
    """Load a checkpoint and check every entry (see ``read_checkpoint``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError ... depending on the damage
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it is truncated, corrupt, not written by torch.save, or holds "
            f"objects other than tensors and plain values ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint of this course's tiny model "
                              f"(expected a dict with format={CHECKPOINT_FORMAT!r}; was it written by Trainer.save?)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')!r}, this code reads version "
                              f"{CHECKPOINT_VERSION}")
    missing = {"model_config", "train_config", "meta", "model", "optimizer", "data_rng", "torch_rng",
               "cuda_rng"} - set(state)
    if missing:
        raise CheckpointError(f"{path} lacks the entries {sorted(missing)}: it is incomplete")

    try:
        config = ModelConfig.from_dict(_json_dict(path, state, "model_config"))
    except (TypeError, ValueError) as error:
        raise error if isinstance(error, CheckpointError) else _entry_error(path, "model_config", error) from None
    try:
        train_config = TrainConfig(**_json_dict(path, state, "train_config"))
    except (TypeError, ValueError) as error:
        raise error if isinstance(error, CheckpointError) else _entry_error(path, "train_config", error) from None

    meta = _json_dict(path, state, "meta")
    if set(meta) != {"step", "chars", "n_train", "n_val", "history"}:
        raise _entry_error(path, "meta", f"expected the fields step, chars, n_train, n_val, history, got "
                                         f"{sorted(meta)}")
    for name in ("step", "n_train", "n_val"):
        try:
            check_int(name, meta[name], 0)
        except (TypeError, ValueError) as error:
            raise _entry_error(path, "meta", str(error)) from None
    try:
        tokenizer = CharTokenizer(meta["chars"])
    except ValueError as error:
        raise _entry_error(path, "meta", f"chars (the tokenizer's alphabet): {error}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise _entry_error(path, "meta", f"the tokenizer has {tokenizer.vocab_size} characters, the model's "
                                         f"vocab_size is {config.vocab_size}")
    try:
        history = History.from_dict(meta["history"])
    except ValueError as error:
        raise _entry_error(path, "meta", f"history: {error}") from None
    if len(history.step) != meta["step"]:
        raise _entry_error(path, "meta", f"history has {len(history.step)} steps, the checkpoint says {meta['step']}")

    with torch.random.fork_rng(devices=[]):  # reading a checkpoint leaves the global random state alone
        model = TinyDeepSeek(config)
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise _entry_error(path, "model", "expected a dict of tensors (a state_dict)")
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(weights)) + sorted(
        k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if wrong:
        raise _entry_error(path, "model", f"the weights do not fit its own model config (first mismatches: "
                                          f"{wrong[:5]})")
    bad = [k for k, v in weights.items() if not v.is_floating_point() or not bool(torch.isfinite(v).all())]
    if bad:
        raise _entry_error(path, "model", f"tensors that are not finite floating-point numbers: {bad[:5]}")
    model.load_state_dict(weights)

    try:  # the optimizer state must fit this model's parameters: load it into a scratch optimizer
        scratch = make_optimizer(model, train_config)
        settings = set(scratch.param_groups[0])
        scratch.load_state_dict(copy.deepcopy(state["optimizer"]))
        for group in scratch.param_groups:
            if set(group) != settings:
                raise ValueError(f"param_groups hold the settings {sorted(group)}, expected {sorted(settings)}")
            for param in group["params"]:
                param_state = scratch.state.get(param, {})
                if param_state and set(param_state) != {"step", "exp_avg", "exp_avg_sq"}:
                    raise ValueError(f"a parameter's state holds {sorted(param_state)}, expected step, exp_avg, "
                                     f"exp_avg_sq")
                for key in ("exp_avg", "exp_avg_sq"):
                    value = param_state.get(key, param)
                    if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                        raise ValueError(f"{key} of a parameter {list(param.shape)} is "
                                         f"{list(value.shape) if isinstance(value, torch.Tensor) else value!r}")
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise _entry_error(path, "optimizer", f"{type(error).__name__}: {error}") from None

    for entry in ("data_rng", "torch_rng"):
        try:
            torch.Generator().set_state(state[entry])
        except (TypeError, RuntimeError) as error:
            raise _entry_error(path, entry, f"not a CPU generator state ({type(error).__name__}: {error})") from None
    if not isinstance(state["cuda_rng"], list) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in state["cuda_rng"]):
        raise _entry_error(path, "cuda_rng", "expected a list of uint8 tensors (CUDA generator states)")
    return _Checkpoint(state, config, train_config, meta, history, model)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint written by ``Trainer.save`` (tensors and plain values only:
    ``torch.load(weights_only=True)`` refuses anything else). Every entry is checked (the configs, the metadata
    with the tokenizer and the history, the weights, the optimizer and RNG states). Returns the checkpoint's
    dict. Raises CheckpointError with a one-line reason naming the file and the damaged entry."""
    return _read(path).state


def check_same_config(expected: ModelConfig, found: ModelConfig, path: str | Path = "the checkpoint") -> None:
    """Raise CheckpointError listing every field where ``found`` (a checkpoint's config) differs from ``expected``."""
    if not isinstance(expected, ModelConfig) or not isinstance(found, ModelConfig):
        raise TypeError(f"check_same_config compares two ModelConfig, got {type(expected).__name__} and "
                        f"{type(found).__name__}")
    a, b = dataclasses.asdict(expected), dataclasses.asdict(found)
    differences = [f"{k}: checkpoint {b[k]!r}, expected {a[k]!r}" for k in a if a[k] != b[k]]
    if differences:
        raise CheckpointError(f"{path} was saved from another model configuration: " + "; ".join(differences))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TinyDeepSeek, CharTokenizer]:
    """The trained model (in eval mode) and its tokenizer from a checkpoint, for generation. Raises
    CheckpointError for a damaged file."""
    ckpt = _read(path)
    return ckpt.model.to(get_device(device)).eval(), CharTokenizer(ckpt.meta["chars"])


# ------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    model_defaults, train_defaults = ModelConfig(), TrainConfig()
    p = argparse.ArgumentParser(prog="python -m course_lib.training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--balance", choices=BALANCE_MODES, default=train_defaults.balance)
    p.add_argument("--mtp-depth", type=int, default=model_defaults.mtp_depth, help="D, the number of MTP modules")
    p.add_argument("--steps", type=int, default=train_defaults.steps)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=DTYPES, default=train_defaults.dtype,
                   help="float32, or bfloat16 autocast (the weights and the routing state stay float32)")
    p.add_argument("--seed", type=int, default=train_defaults.seed)
    p.add_argument("--json", type=Path, help="write the final metrics (and the history) to this JSON file")
    p.add_argument("--data", choices=("docs", "synthetic"), default="docs",
                   help="docs: Python's documentation text; synthetic: the multi-domain task")
    p.add_argument("--dense", action="store_true",
                   help="train the dense baseline: every layer a SwiGLU with the MoE layer's activated parameters")
    for name in ("dim", "n_layers", "n_heads", "n_dense_layers", "n_routed_experts", "n_shared_experts", "top_k",
                 "expert_dim", "n_groups", "topk_groups", "max_seq_len", "dense_hidden", "q_lora_rank", "kv_lora_rank",
                 "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(model_defaults, name))
    p.add_argument("--attention", choices=("mha", "mla"), default=model_defaults.attention,
                   help="multi-head attention or Multi-head Latent Attention (sized by the --q-lora-rank etc.)")
    p.add_argument("--mla-absorb", action="store_true",
                   help="build MLA in its absorbed form (attention over the latents; the same outputs)")
    p.add_argument("--route-scale", type=float, default=model_defaults.route_scale)
    for name in ("batch_size", "seq_len", "micro_batches", "warmup_steps", "eval_interval", "eval_tokens"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(train_defaults, name))
    for name in ("lr", "min_lr", "weight_decay", "grad_clip", "alpha", "gamma", "seq_alpha", "mtp_lambda"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(train_defaults, name))
    p.add_argument("--save", type=Path, help="save a checkpoint here at the end (and every --save-every steps)")
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", type=Path, help="continue the run saved in this checkpoint (to --steps in total)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--sample", type=int, default=0, help="print this many generated characters at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def configs_from_args(args: argparse.Namespace, vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
    model_names = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size", "yarn"}  # yarn: set in code
    train_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"balance"}
    model_cfg = ModelConfig(vocab_size=vocab_size, **{k: getattr(args, k) for k in model_names})
    if args.dense:
        model_cfg = model_cfg.dense_baseline()
    return model_cfg, TrainConfig(balance=args.balance, **{k: getattr(args, k) for k in train_names})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = python_docs() if args.data == "docs" else synthetic_task(seed=args.seed)
    try:
        model_cfg, train_cfg = configs_from_args(args, corpus.tokenizer.vocab_size)
        if args.resume:
            trainer = Trainer.resume(args.resume, corpus, args.device, model_config=model_cfg, steps=args.steps)
        else:
            seed_everything(args.seed)
            trainer = Trainer(TinyDeepSeek(model_cfg), corpus, train_cfg, args.device)
    except (CheckpointError, ValueError, TypeError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)  # one line
        return 2
    total, activated = trainer.model.count_params()
    print(f"{args.balance} balancing, MTP depth {model_cfg.mtp_depth}, {total:,} parameters ({activated:,} "
          f"activated per token), device {trainer.device}, from step {trainer.step} to {train_cfg.steps}")
    try:
        while trainer.step < trainer.cfg.steps:
            chunk = args.save_every if args.save and args.save_every else trainer.cfg.steps
            trainer.train(chunk, progress=not args.no_progress)
            if args.save:
                trainer.save(args.save)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    summary = trainer.summary()
    print(f"step {summary['step']}: val loss {summary['val_loss']:.4f}, MaxVio_global {summary['maxvio_global']:.3f}, "
          f"MaxVio_batch {summary['maxvio_batch']:.3f}, {summary['tokens_per_s']:,.0f} tokens/s")
    if args.sample:
        prompt = corpus.tokenizer.encode("The ")
        generator = torch.Generator().manual_seed(args.seed)
        print(corpus.tokenizer.decode(trainer.model.generate(prompt, args.sample, temperature=0.8, top_k=10,
                                                             generator=generator, context=trainer.cfg.seq_len)))
    if args.json:
        summary["history"] = dataclasses.asdict(trainer.history)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
