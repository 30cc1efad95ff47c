"""Checkers for notebook 15: the lightning indexer's score and the top-k causal selection of DeepSeek Sparse
Attention ([V32] 2.1 eq. 1; the released inference/model.py ``Indexer``; ``attention.indexer``).

The catalogue of mistakes: for the score, softmax instead of ReLU, the weights not applied per indexer head (all
heads summed, then scaled by the summed weights; or the weights inside the ReLU), the future keys left in; for the
selection, future tokens selectable (a query with fewer than k tokens behind it picks future ones), the top-k
taken over the wrong axis (over the queries of each key), or both.
"""

from __future__ import annotations

import torch

from course_lib.attention.indexer import causal_allowed, index_scores, top_k_selection
from course_lib.checks.cases import Case, Mistake
from course_lib.checks.function import check_function


def _inputs(seed: int, B: int, T: int, H: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, H, d, generator=generator), torch.randn(B, T, d, generator=generator),
            torch.randn(B, T, H, generator=generator))


def _future(T: int) -> torch.Tensor:
    return ~causal_allowed(T, T, 0)


_SCORE_CASES = [
    Case(_inputs(0, 1, 5, 2, 4), label="q_index [1, 5, 2, 4], k_index [1, 5, 4], weights [1, 5, 2] (random)"),
    Case(_inputs(1, 2, 7, 4, 8), label="q_index [2, 7, 4, 8], k_index [2, 7, 8], weights [2, 7, 4] (random)"),
]


def _reference_scores(q_index: torch.Tensor, k_index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return index_scores(q_index, k_index, weights)


def _dots(q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bthd,bsd->bths", q_index, k_index)  # [B, T, H, T]


def _masked(scores: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(_future(scores.shape[-1]), float("-inf"))


_SCORE_MISTAKES = [
    Mistake("softmax instead of ReLU: the indexer scores each head with ReLU(q^I . k^I), not a probability over the "
            "keys ([V32] eq. 1; ReLU is chosen for throughput, and the scores need not sum to 1: only their order "
            "matters for the top-k).",
            lambda q, k, w: _masked(torch.einsum("bth,bths->bts", w,
                                                 _masked(_dots(q, k).transpose(1, 2)).softmax(-1).transpose(1, 2)))),
    Mistake("the weights are not applied per indexer head: you summed ReLU(q^I_j . k^I) over the heads and scaled "
            "by the summed weights. Each head j has its own weight w^I_{t,j}: I = sum_j w_j ReLU(q_j . k).",
            lambda q, k, w: _masked(w.sum(-1, keepdim=True) * _dots(q, k).relu().sum(2))),
    Mistake("the weights are applied inside the ReLU (ReLU of the weighted sum): [V32] eq. 1 weights each head's "
            "ReLU(q^I_j . k^I) by w^I_j, then sums; a negative weight then lowers the score instead of being cut.",
            lambda q, k, w: _masked(torch.einsum("bth,bths->bts", w, _dots(q, k)).relu())),
    Mistake("future tokens are left in: key s > t must score -inf for query t (a query may only select the tokens "
            "before it and itself), else the top-k can pick a token that is not written yet.",
            lambda q, k, w: torch.einsum("bth,bths->bts", w, _dots(q, k).relu())),
]


def check_index_scores(fn) -> None:
    """Check ``fn(q_index [B, T, H^I, d^I], k_index [B, T, d^I], weights [B, T, H^I]) -> I [B, T, T]``, -inf at
    the future keys."""
    return check_function(
        fn, name="index_scores", reference=_reference_scores, cases=_SCORE_CASES, mistakes=_SCORE_MISTAKES,
        generic_hint="I[b, t, s] = sum_j weights[b, t, j] * ReLU(q_index[b, t, j] . k_index[b, s]) for s <= t, "
                     "and -inf for s > t.")


def _scores(seed: int, B: int, T: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return _masked(torch.randn(B, T, T, generator=generator))


_SELECTION_CASES = [
    Case((_scores(0, 1, 6), 3), label="scores [1, 6, 6] (random, -inf above the diagonal), index_topk=3"),
    Case((_scores(1, 2, 9), 4), label="scores [2, 9, 9] (random, -inf above the diagonal), index_topk=4"),
    Case((_scores(2, 1, 4), 8), label="scores [1, 4, 4] (random, -inf above the diagonal), index_topk=8"),
]


def _chosen(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    k = min(k, scores.shape[dim])
    return torch.zeros_like(scores, dtype=torch.bool).scatter(dim, scores.topk(k, dim=dim).indices, True)


_SELECTION_MISTAKES = [
    Mistake("future tokens are selectable: a query t with fewer than index_topk tokens behind it (t + 1 < k) "
            "still gets k of them, so some are future tokens (score -inf). Keep only the selected tokens whose "
            "score is finite (s <= t).", lambda scores, k: _chosen(scores, k, -1)),
    Mistake("the top-k runs over the wrong axis: you kept, for each KEY, the k queries that score it highest "
            "(topk over dim -2). Each QUERY (a row of scores [B, T, L]) keeps its own k keys: topk over dim -1.",
            lambda scores, k: _chosen(scores, k, -2) & torch.isfinite(scores)),
    Mistake("the top-k runs over the wrong axis (over the queries of each key, dim -2, instead of the keys of "
            "each query, dim -1), and future tokens are selectable too.", lambda scores, k: _chosen(scores, k, -2)),
]


def check_top_k_mask(fn) -> None:
    """Check ``fn(scores [B, T, T], index_topk) -> bool [B, T, T]``: True at the min(k, t + 1) tokens s <= t of
    highest score of each query t."""
    return check_function(
        fn, name="top_k_mask", reference=top_k_selection, cases=_SELECTION_CASES, mistakes=_SELECTION_MISTAKES,
        crash_hints={"selected index k out of range": "index_topk is larger than the number of keys T (a short "
                                                      "sequence, or the first queries): torch.topk needs "
                                                      "k = min(index_topk, T)."},
        generic_hint="for each query (each row, the last axis), mark the index_topk highest scores (torch.topk "
                     "with k = min(index_topk, T)) and keep only those that are finite (not future tokens).")
