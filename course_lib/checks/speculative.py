"""Checker for notebook 08: the greedy verify-and-accept step of speculative decoding.

The catalogue of mistakes: accepting drafts past the first mismatch, dropping the main model's own token after a
full accept, comparing a draft with the logits one position off (those that predict the token after it), and
emitting unverified drafts (the ones after the first mismatch, or all of them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from course_lib import speculative
from course_lib.checks._core import Case, Mistake, check_function, compare


def _emit(drafts: torch.Tensor, main_tokens: torch.Tensor, m: int) -> torch.Tensor:
    return torch.cat([drafts[:m], main_tokens[m:m + 1]])


def _past_first_mismatch(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    m = int((drafts == main_tokens[:-1]).sum())  # every match counted, not only the leading ones
    return _emit(drafts, main_tokens, m)


def _matches_anywhere(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    keep = drafts == main_tokens[:-1]
    first_miss = int(keep.long().cumprod(0).sum())
    return torch.cat([drafts[keep], main_tokens[first_miss:first_miss + 1]])


def _no_bonus(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    m = int((drafts == main_tokens[:-1]).long().cumprod(0).sum())
    return drafts if m == len(drafts) else _emit(drafts, main_tokens, m)


def _off_by_one(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    m = int((drafts == main_tokens[1:]).long().cumprod(0).sum())  # draft j against the logits of position j + 1
    return _emit(drafts, main_tokens, m)


def _unverified_tail(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    m = int((drafts == main_tokens[:-1]).long().cumprod(0).sum())
    return torch.cat([drafts[:m], main_tokens[m:m + 1], drafts[m + 1:]])


def _all_drafts(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([drafts, main_tokens[-1:]])


_MISTAKES = [
    Mistake("drafts were accepted past the first mismatch. Once drafts[j] differs from main_tokens[j], every later "
            "draft was drafted after a wrong token: stop at the first mismatch (e.g. with .cumprod over the matches).",
            _past_first_mismatch),
    Mistake("drafts that match after a mismatch were kept. Only the leading run of matches is accepted.",
            _matches_anywhere),
    Mistake("after every draft is accepted, the main model's own token main_tokens[d] was dropped. The verify "
            "forward predicted it for free: emit drafts + [main_tokens[d]], d + 1 tokens.", _no_bonus),
    Mistake("an off-by-one between a draft and the logits that verify it: drafts[j] is checked by main_tokens[j] "
            "(the main model's prediction for the same position), not main_tokens[j + 1].", _off_by_one),
    Mistake("unverified tokens were emitted: the drafts after the first mismatch are no longer conditioned on the "
            "right text. Emit drafts[:m] and main_tokens[m] only.", _unverified_tail),
    Mistake("every draft was emitted without verification. Compare drafts[j] with main_tokens[j] and stop at the "
            "first mismatch.", _all_drafts),
]


def _case(drafts: list[int], main_tokens: list[int], note: str) -> Case:
    return Case(args=(torch.tensor(drafts, dtype=torch.int64), torch.tensor(main_tokens, dtype=torch.int64)),
                label=f"(drafts={drafts}, main_tokens={main_tokens}: {note})")


_CASES = [
    _case([5, 1], [4, 5, 9], "the first draft rejected; it equals the main model's token one position later"),
    _case([5], [5, 7], "the draft accepted"),
    _case([5], [4, 7], "the draft rejected"),
    _case([3, 8], [3, 8, 1], "both accepted"),
    _case([3, 8], [3, 2, 1], "the second rejected"),
    _case([3, 8], [6, 8, 1], "the first rejected, the second matches but was drafted after a wrong token"),
    _case([2, 2, 9], [2, 2, 2, 4], "a draft equal to the next position's token"),
    _case([1, 2, 3], [2, 3, 0, 5], "each draft equal to the token one position later"),
    _case([], [6], "no drafts"),
]


def _compare_tokens(got: Any, expected: torch.Tensor) -> str | None:
    if isinstance(got, list):
        got = torch.tensor(got, dtype=torch.int64)
    if isinstance(got, torch.Tensor) and got.dtype != torch.int64 and not got.is_floating_point():
        got = got.long()
    return compare(got, expected, what="your emitted tokens")


def check_accept_greedy(fn: Callable[..., Any]) -> None:
    """Check ``fn(drafts [d], main_tokens [d + 1]) -> int64 [m + 1]``: the leading m drafts equal to the main
    model's argmax tokens, then main_tokens[m] ([V3] 5.4.3; greedy speculative decoding)."""
    return check_function(
        fn, name="accept_greedy", reference=speculative.accept_greedy, cases=_CASES, mistakes=_MISTAKES,
        compare_fn=_compare_tokens,
        generic_hint="m = the number of leading j with drafts[j] == main_tokens[j]; return "
                     "torch.cat([drafts[:m], main_tokens[m:m + 1]]).")
