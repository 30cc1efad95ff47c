"""Checkers for notebook 13: EPLB's two steps on one layer ([V3] 3.4; [INFRA] deepseek-ai/EPLB eplb.py
``replicate_experts`` and ``balanced_packing``).

``replicate(load, num_replicas) -> copies``: each redundant slot to the expert with the highest load per replica.
``pack(load, copies, num_gpus) -> experts on each GPU``: every copy carries load / copies; by decreasing load, each
copy to the lightest GPU that still has room, every GPU holding num_replicas / num_gpus copies. A placement is
compared as a set of GPUs (which GPU is called 0 does not matter, nor the order on a GPU).

The catalogue of mistakes: replicating by total load instead of load per replica; unequal experts per GPU (the
lightest GPU whatever it holds); packing lightest-first; forgetting that two replicas of an expert may share a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from course_lib.checks.cases import Case, Mistake
from course_lib.checks.function import check_function
from course_lib.inference.eplb import balanced_packing, replicate_experts

README_LAYER = [90.0, 132.0, 40.0, 61.0, 104.0, 165.0, 39.0, 4.0, 73.0, 56.0, 183.0, 86.0]  # EPLB's README, layer 0
SHARED_GPU = [36.0, 194.0, 25.0, 159.0, 65.0, 137.0, 181.0, 155.0]  # two copies of expert 6 end on one GPU


# ------------------------------------------------------------------------------------------------ replicate
def replicate(load: Sequence[float], num_replicas: int) -> list[int]:
    """The reference: copies of each expert (ints >= 1 summing to num_replicas), by ``eplb.replicate_experts``."""
    return replicate_experts(torch.tensor([list(load)], dtype=torch.float32), num_replicas)[2][0].tolist()


def _by_total_load(load, num_replicas):
    copies = [1] * len(load)
    for _ in range(num_replicas - len(load)):
        copies[max(range(len(load)), key=lambda e: load[e])] += 1
    return copies


def _one_each_by_total_load(load, num_replicas):
    copies = [1] * len(load)
    for e in sorted(range(len(load)), key=lambda e: -load[e])[:num_replicas - len(load)]:
        copies[e] += 1
    return copies


_REPLICATE_MISTAKE = ("the redundant slots follow each expert's TOTAL load. After a copy is made, the hot expert's "
                      "tokens are split between its copies: give each slot to the expert with the highest load PER "
                      "REPLICA, load[e] / copies[e], recomputed after every slot.")
_REPLICATE_MISTAKES = [Mistake(_REPLICATE_MISTAKE, _by_total_load), Mistake(_REPLICATE_MISTAKE, _one_each_by_total_load)]
_REPLICATE_CASES = [
    Case(([10.0, 6.0, 1.0], 5), label="load=[10, 6, 1], num_replicas=5"),
    Case((SHARED_GPU, 12), label=f"load={[int(x) for x in SHARED_GPU]}, num_replicas=12"),
    Case((README_LAYER, 16), label="load=EPLB README's layer 0 (12 experts), num_replicas=16"),
    Case(([5.0, 1.0, 2.0, 3.0], 4), label="load=[5, 1, 2, 3], num_replicas=4 (no redundant slot)"),
]


def _as_ints(value: Any) -> list[int] | None:
    """``value`` as a list of Python ints (from a list, tuple, integer tensor or NumPy array); None otherwise."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.tolist()
    integer = (int, np.integer)
    if isinstance(value, (list, tuple)) and all(isinstance(v, integer) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return None


def _compare_copies(got: Any, expected: list[int]) -> str | None:
    copies = _as_ints(got)
    if copies is None:
        return f"your replicate returned {got!r:.80}, but a list of ints (copies of each expert) was expected"
    if len(copies) != len(expected):
        return f"your replicate gave {len(copies)} counts for {len(expected)} experts"
    if copies == expected:
        return None
    if min(copies) < 1:
        return f"your copies {copies} leave an expert without a replica; expected {expected}"
    return f"your copies were {copies}, expected {expected} (sum {sum(copies)}, expected {sum(expected)})"


def check_replicate(fn) -> None:
    """Check ``fn(load, num_replicas) -> copies of each expert``."""
    return check_function(
        fn, name="replicate", reference=replicate, cases=_REPLICATE_CASES, mistakes=_REPLICATE_MISTAKES,
        compare_fn=_compare_copies,
        generic_hint="start from one copy each, then num_replicas - n times: the expert with the highest "
                     "load[e] / copies[e] gets one more copy (the first one on a tie).")


# ----------------------------------------------------------------------------------------------------- pack
def _items(load: Sequence[float], copies: Sequence[int]) -> tuple[list[int], list[float]]:
    """Every copy, expert by expert: its expert and its load (load / copies)."""
    experts = [e for e in range(len(load)) for _ in range(copies[e])]
    return experts, [load[e] / copies[e] for e in experts]


def pack(load: Sequence[float], copies: Sequence[int], num_gpus: int) -> list[list[int]]:
    """The reference: the experts each GPU holds, by ``eplb.balanced_packing`` of the copies."""
    experts, shares = _items(load, copies)
    gpu = balanced_packing(torch.tensor([shares], dtype=torch.float32), num_gpus)[0][0].tolist()
    return [[e for e, g in zip(experts, gpu) if g == k] for k in range(num_gpus)]


def _greedy(load, copies, num_gpus, *, ascending=False, equal=True, share=True):
    """The greedy packing with one rule changed (the catalogue's mistakes)."""
    experts, shares = _items(load, copies)
    per_gpu = len(experts) // num_gpus
    gpus, totals = [[] for _ in range(num_gpus)], [0.0] * num_gpus
    for i in sorted(range(len(experts)), key=lambda i: shares[i] if ascending else -shares[i]):
        room = [g for g in range(num_gpus) if not equal or len(gpus[g]) < per_gpu]
        if not share:
            room = [g for g in room if experts[i] not in gpus[g]] or room
        g = min(room, key=lambda g: totals[g])
        gpus[g].append(experts[i])
        totals[g] += shares[i]
    return gpus


_PACK_MISTAKES = [
    Mistake("unequal experts per GPU: a GPU holds more copies than num_replicas / num_gpus. Every GPU has the same "
            "number of slots; the lightest GPU takes the next copy only while it still has room.",
            lambda load, copies, g: _greedy(load, copies, g, equal=False)),
    Mistake("packing lightest-first: the copies go in by INCREASING load. Take them heaviest first, so the big "
            "ones are spread before the small ones fill the gaps (the greedy rule of balanced packing).",
            lambda load, copies, g: _greedy(load, copies, g, ascending=True)),
    Mistake("two replicas of one expert are kept off the same GPU. Nothing forbids it: a copy is an item like any "
            "other, and EPLB puts it on the lightest GPU with room, even one that holds its twin.",
            lambda load, copies, g: _greedy(load, copies, g, share=False)),
]
_SHARED_COPIES = replicate(SHARED_GPU, 12)
_README_COPIES = replicate(README_LAYER, 16)
_PACK_CASES = [
    Case((SHARED_GPU, _SHARED_COPIES, 4), label=f"load={[int(x) for x in SHARED_GPU]}, copies={_SHARED_COPIES}, "
                                                "num_gpus=4"),
    Case((README_LAYER, _README_COPIES, 8), label=f"load=EPLB README's layer 0, copies={_README_COPIES}, num_gpus=8"),
    Case(([10.0, 3.0, 2.0, 1.0], [1, 1, 1, 1], 2), label="load=[10, 3, 2, 1], copies=[1, 1, 1, 1], num_gpus=2"),
    Case(([9.0, 7.0, 6.0, 5.0, 4.0, 1.0], [1, 1, 1, 1, 1, 1], 2), label="load=[9, 7, 6, 5, 4, 1], copies=[1] * 6, "
                                                                        "num_gpus=2"),
]


def canonical(gpus: Any) -> list[list[int]] | None:
    """A placement as a sorted list of each GPU's sorted experts (None when it is not a list of lists of ints)."""
    if isinstance(gpus, (torch.Tensor, np.ndarray)):
        gpus = gpus.tolist()
    if not isinstance(gpus, (list, tuple)) or not all(_as_ints(g) is not None for g in gpus):
        return None
    return sorted(sorted(_as_ints(g)) for g in gpus)


def _compare_placement(got: Any, expected: list[list[int]]) -> str | None:
    placed, wanted = canonical(got), canonical(expected)
    if placed is None:
        if isinstance(got, (list, tuple)) and any(isinstance(g, (set, frozenset)) for g in got):
            return ("your pack returned sets, but a set keeps one copy of an expert that has two replicas on one GPU: "
                    "return a list of each GPU's experts (lists of ints, an expert once per copy)")
        return f"your pack returned {got!r:.80}, but a list of each GPU's experts (lists of ints) was expected"
    if placed == wanted:
        return None
    if len(placed) != len(wanted):
        return f"your placement has {len(placed)} GPUs, expected {len(wanted)}"
    if sorted(e for g in placed for e in g) != sorted(e for g in wanted for e in g):
        return "your GPUs do not hold every copy exactly once (count each expert's copies)"
    return f"your GPUs held {placed}, expected {wanted} (as sets: which GPU is which does not matter)"


def check_pack(fn) -> None:
    """Check ``fn(load, copies, num_gpus) -> the experts on each GPU``."""
    return check_function(
        fn, name="pack", reference=pack, cases=_PACK_CASES, mistakes=_PACK_MISTAKES, compare_fn=_compare_placement,
        generic_hint="each copy of expert e carries load[e] / copies[e]; take the copies heaviest first, each to "
                     "the GPU with the least load so far among those with fewer than num_replicas / num_gpus.")
