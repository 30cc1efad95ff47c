"""The training loop around ``step.train_step``: ``Trainer`` draws the batches, sets the learning rate of the
schedule, records the metrics (``config.History``), validates, and saves and resumes runs (``checkpoint``).
``train()`` can be called repeatedly (it continues), and ``Trainer.resume`` continues a saved run exactly where it
stopped; a failed step leaves the trainer's data position as it was (its batches are drawn again)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from course_lib.core.runtime import eval_mode, get_device
from course_lib.core.validation import boundary
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.moe import balance
from course_lib.training import arguments
from course_lib.training.checkpoint import check_same_config, check_same_data, open_checkpoint, save_checkpoint
from course_lib.training.config import History, TrainConfig, lr_at, make_optimizer
from course_lib.training.data import Corpus
from course_lib.training.step import StepResult, TrainingDiverged, autocast, train_step


@boundary(arguments.mean_maxvio)
def mean_maxvio(loads: torch.Tensor) -> float:
    """MaxVio averaged over MoE layers ([LF] reports the layer average). loads: [n_layers, n_experts]."""
    if loads.numel() == 0:
        return 0.0
    return sum(balance.max_violation(layer) for layer in loads) / len(loads)


class Trainer:
    """The training loop around ``train_step``: data, optimizer, learning-rate schedule, metrics, validation,
    checkpoints. ``train()`` can be called repeatedly (it continues), and ``Trainer.resume`` continues a saved run
    exactly where it stopped."""

    @boundary(arguments.trainer)
    def __init__(self, model: TinyDeepSeek, corpus: Corpus, cfg: TrainConfig = TrainConfig(),
                 device: str | torch.device = "auto") -> None:
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
    @boundary(arguments.train)
    def train(self, steps: int | None = None, progress: bool = True) -> History:
        """Train ``steps`` more optimizer steps (default: up to ``cfg.steps``), validating every
        ``eval_interval`` steps and at the end of the run."""
        from tqdm.auto import tqdm

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
    @boundary(arguments.evaluate)
    def evaluate(self, max_tokens: int | None = None) -> dict[str, Any]:
        """Main-head loss, MTP loss and MaxVio_global on the first ``max_tokens`` (default ``cfg.eval_tokens``)
        tokens of the validation split, the same windows every time.
        Eval forwards never change the experts' load counts or biases.

        Returns val_loss, val_mtp_loss (0 without MTP), maxvio_global (mean over MoE layers) and
        loads (float32 [n_moe_layers, n_routed_experts], assignments over the whole validation set).
        """
        model, cfg = self.model, self.cfg
        moes = model.moe_layers()
        loads = torch.zeros(len(moes), moes[0].n_routed_experts if moes else 0)
        main_sum = mtp_sum = 0.0
        windows = 0
        with eval_mode(model):
            for tokens in self.corpus.eval_batches(cfg.batch_size, cfg.seq_len, max_tokens or cfg.eval_tokens):
                with autocast(self.device, cfg.dtype):
                    main, mtp = model.losses(tokens.to(self.device), cfg.mtp_lambda)
                main_sum += float(main) * len(tokens)
                mtp_sum += float(mtp) * len(tokens)
                windows += len(tokens)
                for i, moe in enumerate(moes):
                    loads[i] += moe.last_load.cpu()
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

    @boundary(arguments.summary)
    def summary(self, last_steps: int = 50) -> dict[str, Any]:
        """The final metrics of a run (the CLI's JSON): the last validation, MaxVio_batch and tokens/s averaged
        over the last ``last_steps`` steps (tokens/s leaves out the first 5 steps, which warm up)."""
        h = self.history
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
        """Save everything a resume needs (``checkpoint.save_checkpoint``): weights and biases, optimizer state,
        step, RNG states (the data position), history, configs and the tokenizer, atomically."""
        save_checkpoint(self, path)

    @classmethod
    def resume(cls, path: str | Path, corpus: Corpus, device: str | torch.device = "auto",
               model_config: ModelConfig | None = None, steps: int | None = None) -> Trainer:
        """Continue a run saved with ``save``: the next step is exactly the one the run would have taken.

        ``model_config``: when given, it must equal the checkpoint's (CheckpointError naming the differences
        otherwise). ``steps``: a new total number of steps (to extend a finished run); the learning-rate schedule
        follows the new total from here on. Every entry of the file is checked before anything (the global RNG
        included) is changed: a damaged file raises CheckpointError naming the file and the entry.
        """
        ckpt = open_checkpoint(path)
        if model_config is not None:
            check_same_config(model_config, ckpt.model_config, path)
        check_same_data(ckpt.meta, corpus, path)
        cfg = ckpt.train_config if steps is None else dataclasses.replace(ckpt.train_config, steps=steps)
        trainer = cls(ckpt.model, corpus, cfg, device)
        trainer.optimizer.load_state_dict(ckpt.state["optimizer"])  # checked by open_checkpoint on a copy
        trainer.data_rng.set_state(ckpt.state["data_rng"])
        torch.set_rng_state(ckpt.state["torch_rng"])
        if ckpt.state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt.state["cuda_rng"])
        trainer.step = ckpt.meta["step"]
        trainer.history = ckpt.history
        return trainer
