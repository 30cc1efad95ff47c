"""Seconds that notebook 05's default training run takes to reach readable text: the tiny model's default
configuration, 600 steps of batch 16 x 64 characters of Python's documentation, validating every 150 steps, as
the notebook runs it (``Trainer``), from a fresh model to the final validation.

    .venv/bin/python benchmarks/bench_nb05_run.py              # 2 threads, one run (about a minute)
    .venv/bin/python benchmarks/bench_nb05_run.py --threads 1 2 --rounds 3

It prints the validation loss reached and a sample, so that "readable" can be seen, not only assumed
(notebook 05: a validation loss near 1.3 nats per character writes mostly real words). With several rounds the
thread counts take turns. Figure: seconds at 2 threads, goal at most 60 s on a quiet 2-core machine.
"""

from __future__ import annotations

import statistics
import time

import torch

from course_lib.training import data
from course_lib.training.config import TrainConfig
from course_lib.training.loop import Trainer
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.core.runtime import seed_everything

import timing


def default_run(corpus: data.Corpus, steps: int, eval_tokens: int) -> tuple[float, float, Trainer]:
    """Wall-clock and CPU seconds of notebook 05's main run (seed 0, validation every steps // 4), and its
    trainer. On a loaded machine the CPU seconds of a 1-thread run stay close to its wall time on a quiet one."""
    start, cpu_start = time.perf_counter(), time.process_time()
    seed_everything(0)
    cfg = TrainConfig(steps=steps, seed=0, eval_interval=max(1, steps // 4), eval_tokens=eval_tokens)
    trainer = Trainer(TinyDeepSeek(ModelConfig(vocab_size=corpus.tokenizer.vocab_size)), corpus, cfg, "cpu")
    trainer.train(progress=False)
    return time.perf_counter() - start, time.process_time() - cpu_start, trainer


def main(argv: list[str] | None = None) -> None:
    parser = timing.parser(__doc__.split("\n\n")[0])
    parser.set_defaults(threads=[2], rounds=1)
    parser.add_argument("--steps", type=int, default=TrainConfig().steps)
    args = timing.parse(parser, argv)
    steps, eval_tokens = (4, 1024) if args.quick else (args.steps, TrainConfig().eval_tokens)
    rounds = 1 if args.quick else args.rounds
    corpus = data.python_docs()
    timing.header(f"notebook 05's default run: {steps} steps of batch 16 x 64, validation every {max(1, steps // 4)}")
    seconds: dict[int, list[float]] = {n: [] for n in args.threads}
    before = torch.get_num_threads()
    try:
        for _ in range(rounds):
            for threads in args.threads:
                torch.set_num_threads(threads)
                elapsed, cpu, trainer = default_run(corpus, steps, eval_tokens)
                seconds[threads].append(elapsed)
                print(f"{threads} thread(s): {elapsed:.1f} s ({cpu:.1f} CPU s), validation loss "
                      f"{trainer.history.val_loss[-1]:.3f}")
        torch.set_num_threads(1)  # one token at a time: tiny operations, fastest on one thread
        sample = trainer.model.generate(corpus.tokenizer.encode("The "), 160, temperature=0.8, top_k=20,
                                        generator=torch.Generator().manual_seed(0), context=trainer.cfg.seq_len)
    finally:
        torch.set_num_threads(before)
    print("sample:", repr(corpus.tokenizer.decode(sample)))
    for threads, values in seconds.items():
        print(f"FIGURE nb05_default_run threads={threads}: {statistics.median(values):.1f} s (notebook 05's default "
              f"training run, {steps} steps, final validation loss {trainer.history.val_loss[-1]:.2f}, median of "
              f"{rounds} run(s); goal <= 60 s at 2 threads on a quiet machine)")


if __name__ == "__main__":
    main()
