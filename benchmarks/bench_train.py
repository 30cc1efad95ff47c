"""Training throughput (tokens per second) of the tiny DeepSeek-style model against the dense model with the same
activated parameters, at 1 and 2 threads, in one run.

    .venv/bin/python benchmarks/bench_train.py                 # the default model, CPU, --threads 1 2
    .venv/bin/python benchmarks/bench_train.py --device cuda --dim 512 --n-layers 8 --batch-size 64 --seq-len 256

Both models take full training steps (``train_step``: forward, backward, gradient clipping, AdamW, the
loss-free bias update) on the same batches of Python's documentation text. The dense model is
``ModelConfig.dense_baseline()``: every layer a SwiGLU whose hidden size is that of the shared plus top_k routed
experts, so a token activates the same parameters in both models except the MoE router's centroids. A round is
``--steps-per-round`` steps of each model, in turns. Figure: MoE tokens/s / dense tokens/s at 2 threads, goal at
least 0.85.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch

from course_lib.training import data
from course_lib.training.step import train_step
from course_lib.training.config import TrainConfig
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.core.runtime import get_device

import timing

SIZES = ("dim", "n_layers", "n_heads", "n_routed_experts", "top_k", "expert_dim", "n_shared_experts")


def steps_of(model: TinyDeepSeek, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor]):
    """A function that takes one training step on each batch (synchronised on a GPU)."""
    def run() -> None:
        for batch in batches:
            train_step(model, optimizer, [batch], balance_mode="loss_free", gamma=0.01, grad_clip=1.0)
        if batches[0].device.type == "cuda":
            torch.cuda.synchronize()
    return run


def main(argv: list[str] | None = None) -> None:
    defaults = ModelConfig()
    parser = timing.parser(__doc__.split("\n\n")[0])
    parser.set_defaults(rounds=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--seq-len", type=int, default=TrainConfig().seq_len)
    parser.add_argument("--steps-per-round", type=int, default=5)
    for name in SIZES:
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    args = timing.parse(parser, argv)
    if args.quick:
        args.steps_per_round, args.batch_size, args.seq_len = 1, 2, 16
    device = get_device(args.device)
    corpus = data.python_docs()
    moe_cfg = dataclasses.replace(defaults, vocab_size=corpus.tokenizer.vocab_size,
                                  max_seq_len=max(defaults.max_seq_len, args.seq_len),
                                  **{k: getattr(args, k) for k in SIZES})
    generator = torch.Generator().manual_seed(0)
    batches = [corpus.get_batch("train", args.batch_size, args.seq_len, generator).to(device)
               for _ in range(args.steps_per_round)]
    candidates, models = {}, {}
    for name, cfg in (("MoE", moe_cfg), ("dense", moe_cfg.dense_baseline())):
        torch.manual_seed(0)
        models[name] = model = TinyDeepSeek(cfg).to(device)
        candidates[name] = steps_of(model, torch.optim.AdamW(model.parameters(), lr=1e-3), batches)
    tokens = args.batch_size * args.seq_len * args.steps_per_round
    timing.header(f"training steps, device {device}, batch {args.batch_size} x {args.seq_len} tokens, rounds of "
                  f"{args.steps_per_round} steps per model")
    for name, model in models.items():
        total, activated = model.count_params()
        print(f"  {name:>6}: {total:>10,} parameters, {activated:>10,} activated per token")
    results = timing.per_thread_count(args.threads, lambda: timing.interleaved(candidates, args.rounds, warmup=1))
    for threads, times in results.items():
        print(f"{threads} thread(s):")
        for name, seconds in times.items():
            print(f"  {name:>6}: {tokens / statistics.median(seconds):>10,.0f} tokens/s (median), "
                  f"{tokens / min(seconds):>10,.0f} tokens/s (best round)")
    for threads, times in results.items():
        timing.figure("train_moe_vs_dense", threads, 1 / timing.ratio(times, "MoE", "dense"),
                      "training tokens/s, MoE / dense with the same activated parameters", ">= 0.85 at 2 threads",
                      args.rounds)


if __name__ == "__main__":
    main()
