"""Generation speed of the tiny model with and without the KV cache, MHA against MLA, in one run.

    .venv/bin/python benchmarks/bench_generate.py                      # the default model, CPU, 1 thread
    .venv/bin/python benchmarks/bench_generate.py --tokens 500 --max-seq-len 512 --device cuda

Each model (random weights: the speed does not depend on them) samples ``--tokens`` tokens after a one-token
prompt with ``TinyDeepSeek.generate``, once with the cache (one token's forward per step) and once with
``use_cache=False`` (the whole text so far every step, as generation did before the cache). MLA runs in both its
naive and its absorbed form. The variants are timed in turns, round after round, so a load spike from another
process hits all of them alike; the table shows the median round in milliseconds per generated token, the
speed-up of the cache, and the cache's bytes at the end. One CPU thread by default: a one-token forward is too
small to share between threads (with 2 threads on a loaded machine, each step waits for the second thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.core.runtime import get_device


def set_absorb(model: TinyDeepSeek, absorb: bool) -> TinyDeepSeek:
    for block in model.blocks:
        block.attn.absorb = absorb
    return model


def time_generation(model: TinyDeepSeek, tokens: int, use_cache: bool, device: torch.device) -> float:
    """Milliseconds per generated token."""
    prompt = torch.tensor([1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(prompt, tokens, generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per run (at most max_seq_len - 1)")
    parser.add_argument("--max-seq-len", type=int, default=ModelConfig().max_seq_len)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 tokens, 1 round: only checks the script works (tests)")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = 8, 1
    if not 1 <= args.tokens < args.max_seq_len:
        parser.error(f"--tokens must lie in [1, max_seq_len - 1 = {args.max_seq_len - 1}] so that the cache is used "
                     f"at every step")
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    models = {}
    for name, attention, absorb in (("MHA", "mha", False), ("MLA naive", "mla", False), ("MLA absorbed", "mla", True)):
        torch.manual_seed(0)
        config = dataclasses.replace(ModelConfig(), attention=attention, max_seq_len=args.max_seq_len)
        models[name] = set_absorb(TinyDeepSeek(config).to(device), absorb)
    times = {(name, cached): [] for name in models for cached in (True, False)}
    for name, model in models.items():  # warm-up
        time_generation(model, 5, True, device)
    for _ in range(args.rounds):
        for (name, cached), runs in times.items():
            runs.append(time_generation(models[name], args.tokens, cached, device))
    print(f"device {device} ({args.threads} CPU threads), {args.tokens} tokens after a 1-token prompt, "
          f"median of {args.rounds} rounds")
    print(f"{'attention':<14} {'ms/token, cache':>16} {'ms/token, no cache':>19} {'speed-up':>9} {'cache bytes':>12}")
    speedups = {}
    for name, model in models.items():
        cached, uncached = statistics.median(times[name, True]), statistics.median(times[name, False])
        speedups[name] = uncached / cached
        cache = model.new_cache(1)
        with torch.no_grad():
            model(torch.zeros(1, args.tokens + 1, dtype=torch.long, device=device), cache)
        print(f"{name:<14} {cached:>16.2f} {uncached:>19.2f} {uncached / cached:>8.1f}x {cache.nbytes:>12,}")
    print(f"FIGURE generate_cache threads={args.threads}: "
          + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in speedups.items())
          + f" (ms/token without the cache / with it, {args.tokens} tokens, median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
