"""Train the tiny DeepSeek-style model from the command line: the same loop (``loop.Trainer``), for scripts and a GPU.

    python -m course_lib.training --balance loss_free --mtp-depth 1 --steps 600 --device auto --seed 0 --json out.json

Every field of ``ModelConfig`` and ``TrainConfig`` is a flag (``--dim``, ``--lr``, ...); ``--save`` / ``--resume``
write and continue checkpoints. A bad setting or a damaged checkpoint given to ``--resume`` prints a one-line
error naming the file and the entry, and exits with status 2 (3 when training diverges).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from course_lib.core.runtime import seed_everything
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.moe.balance import BALANCE_MODES
from course_lib.training.arguments import DTYPES
from course_lib.training.checkpoint import CheckpointError
from course_lib.training.config import TrainConfig
from course_lib.training.data import python_docs, synthetic_task
from course_lib.training.loop import Trainer
from course_lib.training.step import TrainingDiverged


def build_parser() -> argparse.ArgumentParser:
    model_defaults, train_defaults = ModelConfig(), TrainConfig()
    p = argparse.ArgumentParser(prog="python -m course_lib.training", description=__doc__.split("\n\n")[0])
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
    model_names = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size", "yarn"}
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
