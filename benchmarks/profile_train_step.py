"""Where the time of one training step of the tiny model goes: a table by part of the model, from torch.profiler.

    .venv/bin/python benchmarks/profile_train_step.py                 # the default model and batch, 2 threads
    .venv/bin/python benchmarks/profile_train_step.py --mtp-depth 1 --threads 1 --steps 20

Each step is ``train_step`` (forward, backward, gradient clipping, AdamW, the loss-free bias update) on
batches of Python's documentation text. Every operator the profiler records is charged to one part:

- a forward operator to the innermost labelled part it runs in (attention, routing, dispatch, ...);
- a backward operator to the part whose forward operator created its autograd node (same sequence number);
- the optimizer, gradient clipping and the bias update to themselves.

"Python" is the time inside a part that no operator accounts for (interpreter, module calls, autograd
bookkeeping); "other" is what falls outside every labelled part (zero_grad, the step's loss totals). The profiler
adds a few microseconds per operator, so the total is higher than an unprofiled step (printed too).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from course_lib.training import data
from course_lib.training.step import train_step
from course_lib.training.config import TrainConfig
from course_lib.core.layers import SwiGLU
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from course_lib.moe.layer import DeepSeekMoE

PREFIX = "part: "
PARTS = ("embedding, norms, head, loss", "attention", "routing", "dispatch (routed experts)", "shared expert",
         "dense FFN", "MTP modules", "gradient clipping", "optimizer (AdamW)", "bias update", "other")


def labelled(fn: Callable, part: str) -> Callable:
    """``fn`` wrapped in a profiler range named after ``part``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(PREFIX + part):
            return fn(*args, **kwargs)
    return wrapper


def label_parts(model: TinyDeepSeek) -> None:
    """Wrap the model's modules and methods in profiler ranges (instance attributes: the classes stay as they are)."""
    def label(module: nn.Module, part: str) -> None:
        module.forward = labelled(module.forward, part)

    label(model.embed, PARTS[0])
    label(model.norm, PARTS[0])
    label(model.head, PARTS[0])
    for block in model.blocks:
        label(block.attn_norm, PARTS[1])
        label(block.attn, PARTS[1])
        label(block.ffn_norm, PARTS[0])
        if isinstance(block.ffn, DeepSeekMoE):
            moe = block.ffn
            label(moe, PARTS[2])  # what the layer does outside route, routed_experts and shared: load counting
            moe.route = labelled(moe.route, PARTS[2])
            moe.routed_experts = labelled(moe.routed_experts, PARTS[3])
            moe.update_bias = labelled(moe.update_bias, PARTS[9])
            if moe.shared is not None:
                label(moe.shared, PARTS[4])
        elif isinstance(block.ffn, SwiGLU):
            label(block.ffn, PARTS[5])
    for module in model.mtp_modules:
        label(module, PARTS[6])


@contextlib.contextmanager
def labelled_clipping() -> Iterator[None]:
    """Label ``torch.nn.utils.clip_grad_norm_`` (train_step calls it through the module attribute)."""
    original = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = labelled(original, PARTS[7])
    try:
        yield
    finally:
        torch.nn.utils.clip_grad_norm_ = original


def part_of(event, seq_part: dict[int, str]) -> str:
    """The part an event is charged to (see the module docstring)."""
    node = event
    while node is not None:
        if node.name.startswith(PREFIX):
            return node.name[len(PREFIX):]
        if node.name.startswith("Optimizer.step#"):
            return PARTS[8]
        if node.name.startswith("autograd::engine::evaluate_function") and node.sequence_nr in seq_part:
            return seq_part[node.sequence_nr]
        node = node.cpu_parent
    return PARTS[-1]


def by_operator(events) -> dict[str, collections.Counter]:
    """Self microseconds per part and operator name (backward operators named after their autograd node)."""
    seq_part = forward_parts(events)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in events:
        if not event.name.startswith((PREFIX, "step#")):
            table[part_of(event, seq_part)][event.name] += event.self_cpu_time_total
    return table


def forward_parts(events) -> dict[int, str]:
    """Sequence number -> part, for the forward operators that created an autograd node."""
    seq_part: dict[int, str] = {}
    for event in events:
        if event.sequence_nr >= 0 and not event.name.startswith("autograd::"):
            seq_part.setdefault(event.sequence_nr, part_of(event, {}))
    return seq_part


def charge(events) -> dict[str, dict[str, float]]:
    """Microseconds per part, split into "operators" (self time of aten/autograd operators) and "Python" (self
    time of the part's own ranges)."""
    seq_part = forward_parts(events)
    table: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"operators": 0.0, "Python": 0.0})
    for event in events:
        if event.name.startswith("step#"):
            continue
        kind = "Python" if event.name.startswith(PREFIX) else "operators"
        table[part_of(event, seq_part)][kind] += event.self_cpu_time_total
    return table


def main(argv: list[str] | None = None) -> None:
    defaults = ModelConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (after 3 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument("--seq-len", type=int, default=TrainConfig().seq_len)
    parser.add_argument("--mtp-depth", type=int, default=defaults.mtp_depth)
    parser.add_argument("--dense", action="store_true", help="profile the dense baseline instead")
    parser.add_argument("--quick", action="store_true", help="2 steps of a small batch, 1 thread (for the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.seq_len, args.threads = 2, 4, 16, 1
    torch.set_num_threads(args.threads)
    corpus = data.python_docs()
    config = dataclasses.replace(defaults, vocab_size=corpus.tokenizer.vocab_size, mtp_depth=args.mtp_depth)
    if args.dense:
        config = config.dense_baseline()
    torch.manual_seed(0)
    model = TinyDeepSeek(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    batches = [corpus.get_batch("train", args.batch_size, args.seq_len, generator) for _ in range(args.steps + 3)]

    def step(tokens: torch.Tensor) -> None:
        train_step(model, optimizer, [tokens], balance_mode="loss_free", gamma=0.01, grad_clip=1.0,
                         mtp_lambda=0.3)

    for tokens in batches[:3]:
        step(tokens)
    start = time.perf_counter()
    for tokens in batches[3:]:
        step(tokens)
    plain = (time.perf_counter() - start) / args.steps

    label_parts(model)
    with labelled_clipping(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for i, tokens in enumerate(batches[3:]):
            with record_function(f"step#{i}"):
                step(tokens)
    events = prof.events()
    steps = [e for e in events if e.name.startswith("step#")]
    profiled = sum(e.cpu_time_total for e in steps) / len(steps) / 1e6
    table = charge(events)
    total = sum(sum(v.values()) for v in table.values())
    print(f"{'MoE' if not args.dense else 'dense'} model, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"MTP depth {config.mtp_depth}, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"one step: {plain * 1e3:.1f} ms unprofiled, {profiled * 1e3:.1f} ms profiled (mean of {args.steps})")
    print(f"{'part':<30} {'ms/step':>8} {'share':>6} {'operators':>10} {'Python':>7}")
    for part in PARTS:
        if part not in table:
            continue
        ops, python = table[part]["operators"], table[part]["Python"]
        ms = (ops + python) / len(steps) / 1e3
        print(f"{part:<30} {ms:>8.2f} {(ops + python) / total:>6.1%} {ops / len(steps) / 1e3:>10.2f} "
              f"{python / len(steps) / 1e3:>7.2f}")
    print("heaviest operators of the heaviest parts (self time, ms/step):")
    for part, operators in sorted(by_operator(events).items(), key=lambda kv: -sum(kv[1].values()))[:4]:
        print(f"  {part}: " + ", ".join(f"{name.removeprefix('aten::')} {us / len(steps) / 1e3:.2f}"
                                        for name, us in operators.most_common(6)))


if __name__ == "__main__":
    main()
