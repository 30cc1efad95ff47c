"""Checker for notebook 09: the send splits of the dispatch all-to-all.

The design the checker holds the learner to (stated in the notebook and in ``expert_parallel``): rank r holds the
experts r * E/W ... (r + 1) * E/W - 1, and one row is sent per (token, expert) pair, so a token with two experts
on one rank travels twice (DeepSeek-V3's kernels deduplicate per node instead, [V3] 3.2.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from course_lib import expert_parallel
from course_lib.checks._core import Case, Mistake, check_function, describe_value


def _as_ints(value: Any) -> list[int] | None:
    """A learner's splits as a list of ints (list, tuple or 1-D tensor of whole numbers), else None."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or (value.is_floating_point() and not torch.equal(value, value.round())):
            return None
        return [int(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) or
                                                isinstance(v, float) and v.is_integer() for v in value):
        return [int(v) for v in value]
    return None


def _compare_splits(got: Any, expected: Any) -> str | None:
    got_ints, expected_ints = _as_ints(got), _as_ints(expected)
    if got_ints is None:
        return (f"your function returned {describe_value(got)}, but a list of whole numbers (one per rank) was "
                f"expected, like {expected_ints}")
    if got_ints == expected_ints:
        return None
    if len(got_ints) != len(expected_ints):
        return f"your splits have {len(got_ints)} entries {got_ints}, but {len(expected_ints)} were expected"
    return f"your splits are {got_ints}, but they should be {expected_ints}"


def _rank_of(n_experts: int, world_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda e: e // (n_experts // world_size)


def _count(ranks: torch.Tensor, world_size: int) -> list[int]:
    return torch.bincount(ranks.reshape(-1), minlength=world_size).tolist()


def _first_expert_only(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    return _count(_rank_of(n_experts, world_size)(indices[:, 0]), world_size)


def _per_expert(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    return torch.bincount(indices.reshape(-1), minlength=n_experts).tolist()


def _strided(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    load = torch.bincount(indices.reshape(-1), minlength=n_experts)
    return load.view(n_experts // world_size, world_size).sum(dim=0).tolist()


def _divided_by_world_size(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    ranks = (indices // world_size).clamp(max=world_size - 1)
    return _count(ranks, world_size)


def _no_minlength(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    return torch.bincount(_rank_of(n_experts, world_size)(indices).reshape(-1)).tolist()


def _once_per_rank(indices: torch.Tensor, n_experts: int, world_size: int) -> list[int]:
    ranks = _rank_of(n_experts, world_size)(indices)
    hit = torch.zeros(indices.shape[0], world_size, dtype=torch.long).scatter_(1, ranks, 1)
    return hit.sum(dim=0).tolist()


_MISTAKES = [
    Mistake("you counted one row per TOKEN (at its first expert's rank): the splits sum to the number of tokens. "
            "Every (token, expert) pair is a row of the dispatch: with top_k experts per token the splits sum to "
            "tokens x top_k. Count every entry of indices, not only column 0.", _first_expert_only),
    Mistake("you counted one row per token and RANK: a token whose two experts live on the same rank was counted "
            "once. In this course's design each (token, expert) pair travels as its own row, so that token travels "
            "twice (the receiving rank runs each expert on its own copy). DeepSeek-V3 saves that second copy "
            "across nodes by sending a token once per node and forwarding it inside the node over NVLink ([V3] "
            "3.2.2), a second hop this layer does not have.", _once_per_rank),
    Mistake("you returned one entry per EXPERT (expert order): all_to_all_single wants one split per RANK, in rank "
            "order. Sum the counts of each rank's experts: load.view(world_size, n_experts // world_size).sum(1).",
            _per_expert),
    Mistake("your splits group the experts e, e + world_size, e + 2 world_size, ... on one rank (a strided view "
            "of the per-expert counts). The experts are placed contiguously: rank r holds the experts "
            "r * E/W ... (r + 1) * E/W - 1, so the rank of expert e is e // (n_experts // world_size); with "
            "load.view(n_experts // world_size, world_size).sum(0) the ranks come out in expert order, mixed up.",
            _strided),
    Mistake("your list stops at the last rank that receives a row: torch.bincount without minlength=world_size "
            "leaves out the ranks at the end that get nothing, and all_to_all_single needs one split for EVERY rank "
            "(0 included). Use torch.bincount(ranks, minlength=world_size).", _no_minlength),
    Mistake("you computed the rank of expert e as e // world_size: that divides by the number of ranks, not by the "
            "experts per rank. Rank of expert e = e // (n_experts // world_size).", _divided_by_world_size),
]


def _random_indices(tokens: int, n_experts: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(tokens)])


EXAMPLE_INDICES = torch.tensor([[2, 3], [0, 5], [7, 1], [1, 0], [6, 4]])  # 5 tokens, top_k = 2, 8 experts


def check_send_splits(fn: Callable[[torch.Tensor, int, int], Any]) -> None:
    """Check ``send_splits(indices, n_experts, world_size) -> list[int]`` (one entry per rank, rank order, one row
    per (token, expert) pair) against ``expert_parallel.send_splits``."""
    cases = [Case((EXAMPLE_INDICES, 8, 4), label="the example above: indices [[2, 3], [0, 5], [7, 1], [1, 0], "
                                                  "[6, 4]], n_experts=8, world_size=4")]
    cases.append(Case((torch.tensor([[0, 1], [2, 3], [1, 2]]), 8, 4),
                      label="indices [[0, 1], [2, 3], [1, 2]], n_experts=8, world_size=4 (ranks 2 and 3 get nothing)"))
    for tokens, n_experts, k, world_size, seed in ((12, 16, 4, 4, 1), (20, 8, 3, 2, 2), (30, 32, 8, 8, 3)):
        indices = _random_indices(tokens, n_experts, k, seed)
        cases.append(Case((indices, n_experts, world_size),
                          label=f"{tokens} tokens x top_k={k} random experts (seeded), n_experts={n_experts}, "
                                f"world_size={world_size}"))
    return check_function(fn, name="send_splits", reference=expert_parallel.send_splits, cases=cases,
                          mistakes=_MISTAKES, compare_fn=_compare_splits,
                          generic_hint="for each rank r, count the entries of indices whose expert lives on r "
                                       "(expert // (n_experts // world_size) == r).")
