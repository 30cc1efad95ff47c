"""A training run's settings and record: ``TrainConfig`` (with its learning-rate schedule ``lr_at`` and its
optimizer ``make_optimizer``) and ``History``, the metrics per step and per validation. The loop (``loop``) and
the checkpoints (``checkpoint``) share them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from course_lib.core.validation import boundary
from course_lib.training import arguments


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
        arguments.train_config(self)


@boundary(arguments.lr_at)
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


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
        """Build from ``dataclasses.asdict`` output (a checkpoint's history), checking it first: ValueError
        (``arguments.history_from_dict``) names what is wrong."""
        arguments.history_from_dict(values)
        return cls(**values)


@boundary(arguments.make_optimizer)
def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on norms' weights); the routing bias is a buffer, not a
    parameter, so the optimizer never sees it."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95))
