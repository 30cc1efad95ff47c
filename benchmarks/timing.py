"""Timing shared by the benchmark scripts: candidates measured side by side in one run, in turns, round after round
(so that a load spike from another process hits all of them alike), at each thread count; medians and ratios.

Every script prints one line per figure and thread count that starts with ``FIGURE``, e.g.

    FIGURE moe_vs_dense threads=2: 1.21x (MoE layer / dense FFN, median of 20 interleaved rounds; goal <= 1.25x)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def parser(description: str) -> argparse.ArgumentParser:
    """The options every script takes: --threads (default 1 and 2), --rounds, --quick."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts (default: 1 2)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds per thread count")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run, 1 thread, 2 rounds, that only checks the script works (for the tests)")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the options; --quick sets 1 thread and at most 2 rounds."""
    args = p.parse_args(argv)
    if args.quick:
        args.threads, args.rounds = [1], min(args.rounds, 2)
    return args


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds of each call, per candidate: ``warmup`` untimed calls each, then ``rounds`` rounds in which every
    candidate runs once, in turns."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def per_thread_count(threads: Sequence[int], measure: Callable[[], dict[str, list[float]]]) -> dict[int, dict[str, list[float]]]:
    """``measure()`` at each torch thread count (the previous count is restored afterwards)."""
    before = torch.get_num_threads()
    results = {}
    try:
        for n in threads:
            torch.set_num_threads(n)
            results[n] = measure()
    finally:
        torch.set_num_threads(before)
    return results


def print_table(times: dict[str, list[float]], baseline: str, unit: str = "ms", scale: float = 1e3) -> None:
    """Median and best time of each candidate and its ratio to ``baseline`` (medians)."""
    base = statistics.median(times[baseline])
    print(f"  {'candidate':<46} {'median ' + unit:>10} {'best ' + unit:>8} {'/ ' + baseline[:14]:>17}")
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {name:<46} {median * scale:>10.1f} {min(seconds) * scale:>8.1f} {median / base:>17.2f}")


def ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """median(numerator) / median(denominator)."""
    return statistics.median(times[numerator]) / statistics.median(times[denominator])


def figure(name: str, threads: int, value: float, what: str, goal: str, rounds: int, fmt: str = "{:.2f}x") -> None:
    """The summary line of one figure (the line the README quotes)."""
    print(f"FIGURE {name} threads={threads}: {fmt.format(value)} ({what}, median of {rounds} interleaved rounds; "
          f"goal {goal})")


def compare_and_report(threads: Sequence[int], candidates: dict[str, Callable[[], object]], rounds: int,
                       baseline: str, numerator: str, name: str, what: str, goal: str) -> None:
    """Time ``candidates`` in turns at each thread count, print a table per thread count (ratios to ``baseline``),
    then the FIGURE line of numerator / baseline for each thread count."""
    results = per_thread_count(threads, lambda: interleaved(candidates, rounds))
    for count, times in results.items():
        print(f"{count} thread(s):")
        print_table(times, baseline)
    for count, times in results.items():
        figure(name, count, ratio(times, numerator, baseline), what, goal, rounds)


def header(text: str) -> None:
    print(f"{text}; torch {torch.__version__}, CPU")
