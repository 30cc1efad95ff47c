"""Checker for notebook 12: the 1F1B order of one rank ([V3] Table 2; PipeDream-Flush, Narayanan et al. 2021).

The learner writes ``one_f_one_b_order(rank, n_stages, n_micro_batches)``, the list of rank ``rank``'s steps as
strings, ``"F3"`` for the forward of micro-batch 3 and ``"B3"`` for its backward (``str`` of a
``parallel.pipeline.schedules.Op`` is the same). The checker runs it on several pipelines, every rank, and names
the mistake it finds first:

- a micro-batch done twice or never (its forward, or its backward);
- a backward before its forward reached the last stage: on this rank the backward comes before the forward, or,
  with every rank running the learner's order, a rank waits for a gradient that cannot come (the timed run of
  ``parallel.pipeline.simulator`` deadlocks);
- the wrong warm-up count: 1F1B's rank r runs n_stages - 1 - r forwards, then one more forward before its first
  backward.

Another order (right counts, no deadlock) is compared with the reference, ``schedules.one_f_one_b_rank``, and the
first differing step is shown.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from course_lib.checks.learner import call_learner
from course_lib.checks.verdict import CheckFailed, checker
from course_lib.parallel.pipeline.schedules import BACKWARD, FORWARD, Op, Schedule, one_f_one_b_rank
from course_lib.parallel.pipeline.simulator import Costs, simulate

_CASES = [(4, 8), (4, 4), (2, 5), (8, 10)]  # (n_stages, n_micro_batches): every rank of each
_STEP = re.compile(r"^([FB])(\d+)$")


def _parse(got: object, label: str) -> list[tuple[str, int]]:
    """The learner's list as (kind, micro-batch) pairs, or CheckFailed saying what a step should look like."""
    if not isinstance(got, (list, tuple)):
        raise CheckFailed(f"For {label}: your function returned {type(got).__name__}; it should return a list of "
                          f"steps such as ['F0', 'F1', 'B0', ...].")
    steps = []
    for step in got:
        match = _STEP.match(str(step))
        if match is None:
            raise CheckFailed(f"For {label}: the step {step!r} is not 'F<micro-batch>' or 'B<micro-batch>' (e.g. "
                              f"'F0', 'B3').")
        steps.append((match.group(1), int(match.group(2))))
    return steps


def _counts_problem(steps: list[tuple[str, int]], n_micro_batches: int) -> str | None:
    counts = Counter(steps)
    for kind, word in ((FORWARD, "forward"), (BACKWARD, "backward")):
        for m in range(n_micro_batches):
            if counts[(kind, m)] != 1:
                times = "never" if counts[(kind, m)] == 0 else f"{counts[(kind, m)]} times"
                return (f"micro-batch {m} is done twice or never: its {word} {kind}{m} appears {times}. Every "
                        f"micro-batch 0 .. {n_micro_batches - 1} has exactly one forward and one backward on every "
                        f"rank.")
        extra = sorted(m for k, m in counts if k == kind and not 0 <= m < n_micro_batches)
        if extra:
            return (f"micro-batch {extra[0]} does not exist (there are {n_micro_batches}, numbered from 0), yet "
                    f"{kind}{extra[0]} appears: a micro-batch done twice or never.")
    return None


def _order_problem(steps: list[tuple[str, int]]) -> str | None:
    seen = set()
    for kind, m in steps:
        if kind == BACKWARD and m not in seen:
            return (f"a backward before its forward reached the last stage: B{m} comes before F{m} on this rank. The "
                    f"backward of a micro-batch needs its forward to have run through this stage and on to the last "
                    f"stage, where the loss is.")
        seen.add(m)
    return None


def _warm_up_problem(steps: list[tuple[str, int]], rank: int, n_stages: int) -> str | None:
    before = next(i for i, (kind, _) in enumerate(steps) if kind == BACKWARD)
    expected = n_stages - 1 - rank
    if before != expected + 1:
        return (f"the wrong warm-up count: your rank {rank} runs {before} forwards before its first backward. 1F1B's "
                f"warm-up on rank r is n_stages - 1 - r = {expected} forwards (the micro-batches that fill the "
                f"pipeline below it), then the steady phase starts with one more forward and its first backward: "
                f"{expected + 1} forwards in all before B0.")
    return None


def _deadlock_problem(orders: list[list[tuple[str, int]]], n_stages: int, n_micro_batches: int) -> str | None:
    ranks = tuple(tuple(Op(kind, m, r) for kind, m in order) for r, order in enumerate(orders))
    try:
        simulate(Schedule("yours", n_stages, n_micro_batches, ranks), Costs())
    except ValueError as error:
        return (f"a backward before its forward reached the last stage: with every rank running your order the "
                f"pipeline stops ({error}). A rank's backward of micro-batch m waits for the gradient from the next "
                f"stage, which needs micro-batch m's forward to have reached the last stage first.")
    return None


def check_one_f_one_b_order(fn: Callable[[int, int, int], list]) -> None:
    """Check ``fn(rank, n_stages, n_micro_batches) -> ['F0', 'F1', 'B0', ...]`` (1F1B, one rank's order)."""

    @checker("one_f_one_b_order")
    def body() -> str:
        for n_stages, n_micro_batches in _CASES:
            labels = [f"rank={rank}, n_stages={n_stages}, n_micro_batches={n_micro_batches}"
                      for rank in range(n_stages)]
            orders = [_parse(call_learner(fn, rank, n_stages, n_micro_batches, name="Your one_f_one_b_order",
                                          label=labels[rank]), labels[rank]) for rank in range(n_stages)]
            # the most telling mistake first, whichever rank shows it
            for rank, steps in enumerate(orders):
                problem = _counts_problem(steps, n_micro_batches)
                if problem:
                    raise CheckFailed(f"For {labels[rank]}: {problem}")
            for rank, steps in enumerate(orders):
                problem = _order_problem(steps)
                if problem:
                    raise CheckFailed(f"For {labels[rank]}: {problem}")
            problem = _deadlock_problem(orders, n_stages, n_micro_batches)
            if problem:
                raise CheckFailed(f"For n_stages={n_stages}, n_micro_batches={n_micro_batches}: {problem}")
            for rank, steps in enumerate(orders):
                problem = _warm_up_problem(steps, rank, n_stages)
                if problem:
                    raise CheckFailed(f"For {labels[rank]}: {problem}")
            for rank, steps in enumerate(orders):
                expected = [(op.kind, op.micro_batch) for op in one_f_one_b_rank(rank, n_stages, n_micro_batches)]
                if steps != expected:
                    i = next(i for i, (a, b) in enumerate(zip(steps, expected)) if a != b)
                    raise CheckFailed(
                        f"For rank={rank}, n_stages={n_stages}, n_micro_batches={n_micro_batches}: step {i} is "
                        f"{''.join(map(str, steps[i]))}, 1F1B runs {''.join(map(str, expected[i]))} there (your order "
                        f"from step {i}: {' '.join(k + str(m) for k, m in steps[i:i + 6])} ...; 1F1B's: "
                        f"{' '.join(k + str(m) for k, m in expected[i:i + 6])} ...).\nHint: after the warm-up, "
                        f"alternate one forward (the next micro-batch) and one backward (the oldest micro-batch "
                        f"still held); the cool-down runs the remaining backwards in order.")
        return f"the order of every rank on all {len(_CASES)} pipelines, and they run together without waiting forever"
    return body()
