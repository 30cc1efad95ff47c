"""The checks at the training boundaries: one validator per boundary, named after it, taking the boundary's
parameters by name (``core.validation.boundary``), raising TypeError for a wrong type and ValueError for a wrong
value. The command line's (``cli``) and a checkpoint's (``checkpoint``) checks live with them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from course_lib.core.validation import check_int, check_number
from course_lib.model import arguments as model_arguments
from course_lib.moe.balance import BALANCE_MODES

if TYPE_CHECKING:
    from course_lib.training.config import TrainConfig

DTYPES = ("float32", "bfloat16")  # TrainConfig.dtype: float32, or bfloat16 autocast


def train_config(config: TrainConfig) -> None:
    """``TrainConfig``: a balancing mode and a dtype of the lists; steps, batch_size, seq_len, micro_batches,
    eval_interval, eval_tokens ints >= 1; every other number finite and >= 0."""
    if config.balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {config.balance!r}")
    autocast(None, config.dtype)
    positive = ("steps", "batch_size", "seq_len", "micro_batches", "eval_interval", "eval_tokens")
    for f in dataclasses.fields(config):  # every other number (lr, ..., warmup_steps, seed) is >= 0
        value = getattr(config, f.name)
        if f.type in ("int", int):
            check_int(f.name, value, 1 if f.name in positive else 0)
        if f.type in ("float", float):
            check_number(f.name, value, 0)


def autocast(device: Any, dtype: Any) -> None:
    """``step.autocast``: a dtype of ``DTYPES``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} (bfloat16 = autocast), got {dtype!r}")


def train_step(model: Any, optimizer: Any, micro_batches: Any, balance_mode: Any, gamma: Any, alpha: Any,
               seq_alpha: Any, mtp_lambda: Any, grad_clip: Any, dtype: Any) -> None:
    """``step.train_step``: the settings, and a non-empty list of windows [batch, T + 1] in the model's vocabulary
    (each read back once: the forward passes inside the step read none)."""
    if balance_mode not in BALANCE_MODES:
        raise ValueError(f"balance_mode must be one of {BALANCE_MODES}, got {balance_mode!r}")
    for name, value in (("gamma", gamma), ("alpha", alpha), ("seq_alpha", seq_alpha), ("mtp_lambda", mtp_lambda),
                        ("grad_clip", grad_clip)):
        check_number(name, value, 0)
    autocast(None, dtype)
    if isinstance(micro_batches, torch.Tensor) or not micro_batches:
        raise ValueError("micro_batches must be a non-empty list of int64 tensors [batch, T + 1]: one optimizer step "
                         "needs at least one batch of tokens")
    for tokens in micro_batches:
        model_arguments.check_tokens(model, tokens, windows=True)


def step_rollback(self: Any, model: Any, optimizer: Any) -> None:
    """``step.StepRollback(model, optimizer)``: a module and an optimizer."""
    if not isinstance(model, torch.nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"StepRollback(model, optimizer) takes a torch.nn.Module and a torch.optim.Optimizer, got "
                        f"{type(model).__name__} and {type(optimizer).__name__}")


def lr_at(step: Any, cfg: Any) -> None:
    """``config.lr_at``: a 0-based optimizer step."""
    check_int("step", step, 0)


def make_optimizer(model: Any, cfg: Any) -> None:
    """``config.make_optimizer``: a module and a TrainConfig."""
    from course_lib.training.config import TrainConfig

    if not isinstance(model, torch.nn.Module) or not isinstance(cfg, TrainConfig):
        raise TypeError(f"make_optimizer(model: nn.Module, cfg: TrainConfig), got {type(model).__name__}, "
                        f"{type(cfg).__name__}")


def mean_maxvio(loads: Any) -> None:
    """``loop.mean_maxvio``: loads [n_layers, n_experts]."""
    if not isinstance(loads, torch.Tensor) or loads.dim() != 2:
        raise ValueError(f"loads must be a 2-D tensor [n_layers, n_experts], got {loads!r:.80}")


def trainer(self: Any, model: Any, corpus: Any, cfg: Any, device: Any) -> None:
    """``loop.Trainer(model, corpus, cfg, device)``: a TinyDeepSeek, a Corpus of its vocabulary, a TrainConfig
    whose seq_len fits the model."""
    from course_lib.model.tiny import TinyDeepSeek
    from course_lib.training.config import TrainConfig
    from course_lib.training.data import Corpus

    if not isinstance(model, TinyDeepSeek) or not isinstance(corpus, Corpus) or not isinstance(cfg, TrainConfig):
        raise TypeError(f"Trainer(model: TinyDeepSeek, corpus: Corpus, cfg: TrainConfig), got "
                        f"{type(model).__name__}, {type(corpus).__name__}, {type(cfg).__name__}")
    if corpus.tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the corpus has {corpus.tokenizer.vocab_size} tokens, the model's vocab_size is "
                         f"{model.config.vocab_size}")
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"seq_len={cfg.seq_len} exceeds the model's max_seq_len={model.config.max_seq_len}")


def train(self: Any, steps: Any, progress: Any) -> None:
    """``Trainer.train``: steps None or an int >= 0 (0: nothing to do, a notebook's steps // 4 on a tiny run)."""
    if steps is not None:
        check_int("steps", steps, 0)


def evaluate(self: Any, max_tokens: Any) -> None:
    """``Trainer.evaluate``: max_tokens None or an int >= 1."""
    if max_tokens is not None:
        check_int("max_tokens", max_tokens, 1)


def summary(self: Any, last_steps: Any) -> None:
    """``Trainer.summary``: last_steps an int >= 1, and at least one step trained."""
    check_int("last_steps", last_steps, 1)
    if not self.history.step:
        raise ValueError("nothing to summarise: train at least one step first")
