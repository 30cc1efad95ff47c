"""Training throughput (tokens per second) of the tiny DeepSeek-style model against the dense model with the same
activated parameters, in one run.

    .venv/bin/python benchmarks/bench_train.py                 # the default model, CPU, 2 threads
    .venv/bin/python benchmarks/bench_train.py --device cuda --dim 512 --n-layers 8 --batch-size 64 --seq-len 256

Both models take full training steps (``train.train_step``: forward, backward, AdamW, the loss-free bias update)
on the same batches of Python's documentation text. The dense model is ``ModelConfig.dense_baseline()``: every
layer a SwiGLU whose hidden size is that of the shared plus top_k routed experts, so a token activates the same
parameters in both models except the MoE router's centroids. The models are timed in turns, round after round,
so a load spike from another process hits both alike; the table shows the median and the best round.
Target (issue 5): the MoE model at least 70% of the dense model's throughput.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from course_lib import data, train
from course_lib.model import ModelConfig, TinyDeepSeek
from course_lib.runtime import get_device


def time_steps(model: TinyDeepSeek, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor]) -> float:
    """Seconds for one training step on each batch, in total (synchronised on a GPU)."""
    device = batches[0].device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        train.train_step(model, optimizer, [batch], balance_mode="loss_free", gamma=0.001, grad_clip=1.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    defaults = ModelConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=train.TrainConfig().batch_size)
    parser.add_argument("--seq-len", type=int, default=train.TrainConfig().seq_len)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=5)
    for name in ("dim", "n_layers", "n_heads", "n_routed_experts", "top_k", "expert_dim", "n_shared_experts"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    moe_cfg = dataclasses.replace(defaults, max_seq_len=max(defaults.max_seq_len, args.seq_len), **{
        k: getattr(args, k) for k in ("dim", "n_layers", "n_heads", "n_routed_experts", "top_k", "expert_dim",
                                      "n_shared_experts")})
    corpus = data.python_docs()
    generator = torch.Generator().manual_seed(0)
    batches = [corpus.get_batch("train", args.batch_size, args.seq_len, generator).to(device)
               for _ in range(args.steps_per_round)]
    runs = {}
    for name, cfg in (("MoE", moe_cfg), ("dense", moe_cfg.dense_baseline())):
        torch.manual_seed(0)
        model = TinyDeepSeek(cfg).to(device)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), [])
        time_steps(*runs[name][:2], batches[:2])  # warm-up
    for _ in range(args.rounds):
        for model, optimizer, times in runs.values():
            times.append(time_steps(model, optimizer, batches))
    tokens = args.batch_size * args.seq_len * args.steps_per_round
    print(f"device {device} ({args.threads} CPU threads), batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.rounds} rounds of {args.steps_per_round} training steps per model")
    speed = {}
    for name, (model, _, times) in runs.items():
        total, activated = model.count_params()
        speed[name] = tokens / statistics.median(times)
        print(f"{name:>6}: {total:>10,} parameters, {activated:>10,} activated   "
              f"{speed[name]:>10,.0f} tokens/s (median)   {tokens / min(times):>10,.0f} tokens/s (best round)")
    print(f"MoE throughput = {speed['MoE'] / speed['dense']:.0%} of the dense model's (target: at least 70%)")


if __name__ == "__main__":
    main()
