"""Checkers for notebook 04: the loss of one MTP depth, the total MTP loss and the forward of one MTP depth.

The catalogue of mistakes: the target shift off by one either way, the main model's targets reused at every
depth, a mean over the T - k positions instead of the report's division by T, a sum over the batch, lambda or
1 / D dropped, log of softmax probabilities (which overflows or underflows for large logits), and in the module
the RMSNorms forgotten, Emb(t_i) read instead of Emb(t_{i+k}), h_prev shifted or not trimmed, the block skipped.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from course_lib.model import mtp
from course_lib.checks.cases import Case, Mistake, diagnose
from course_lib.checks.comparison import compare
from course_lib.checks.function import check_function
from course_lib.checks.gradients import gradient_problem
from course_lib.checks.learner import call_learner, clone_args
from course_lib.checks.verdict import CheckFailed, checker
from course_lib.core.layers import RMSNorm
from course_lib.model.block import TransformerBlock


def _compare_loss(got: Any, expected: torch.Tensor) -> str | None:
    """A loss must be a 0-dim tensor (training calls .backward() on it) close to the reference."""
    if isinstance(got, numbers.Number) and not isinstance(got, bool):
        return (f"your function returned the Python number {got!r}: return the loss as a 0-dim tensor (no "
                f".item()), since training calls .backward() on it")
    if isinstance(got, torch.Tensor) and got.dim() > 0:
        return (f"your loss has shape {list(got.shape)}, but a single number (a 0-dim tensor) was expected: sum over "
                f"the positions, divide by T, and average over the batch")
    return compare(got, expected, rtol=1e-4, atol=1e-5, what="your loss")


def _random_logits(batch: int, positions: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(batch, positions, vocab, generator=torch.Generator().manual_seed(seed))


def _random_tokens(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- mtp_depth_loss
def _depth_loss(targets: Callable[[torch.Tensor, int, int], torch.Tensor], *, divide: str = "T",
                keep: Callable[[torch.Tensor, int], torch.Tensor] = lambda logits, k: logits,
                log_probs: Callable[[torch.Tensor], torch.Tensor] = lambda x: F.log_softmax(x, -1)):
    """A wrong depth loss: other targets(tokens, k, T), another divisor, trimmed logits, unstable log-probs."""
    def wrong(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
        B, T = tokens.shape[0], tokens.shape[1] - 1
        logits = keep(logits, k)
        picked = log_probs(logits).gather(-1, targets(tokens, k, T)[..., None]).squeeze(-1)  # [B, positions]
        divisor = {"T": B * T, "T-k": B * picked.shape[1], "T+1": B * (T + 1), "batch-sum": T}[divide]
        return -picked.sum() / divisor
    return wrong


def _right_targets(tokens: torch.Tensor, k: int, T: int) -> torch.Tensor:
    return tokens[:, k + 1:]


_DEPTH_LOSS_MISTAKES = [
    Mistake("the targets are shifted one too few: you compared position j with tokens[:, j + k], the token that "
            "depth k has just read (for k = 0, the input itself). Position j predicts tokens[:, j + k + 1]: the "
            "targets are tokens[:, k + 1:].", _depth_loss(lambda t, k, T: t[:, k:T])),
    Mistake("the targets are shifted one too many: you compared position j with tokens[:, j + k + 2] and dropped "
            "the last position. Position j predicts tokens[:, j + k + 1]: the targets are tokens[:, k + 1:], T - k "
            "of them, as many as the positions of the logits.",
            _depth_loss(lambda t, k, T: t[:, k + 2:], keep=lambda logits, k: logits[:, :-1])),
    Mistake("the loss is averaged over the T - k positions (cross_entropy's default mean, or .mean()). The report "
            "divides the sum of the T - k terms by T, the sequence length ([V3] eq. 24): use reduction='sum', then "
            "divide by T and by the batch size.", _depth_loss(_right_targets, divide="T-k")),
    Mistake("the loss is summed over the batch: the report's L_k is the loss of one sequence, and the batch's loss "
            "is its mean over the sequences. Divide by the batch size too.",
            _depth_loss(_right_targets, divide="batch-sum")),
    Mistake("the sum is divided by T + 1 = tokens.shape[1]. tokens holds the T inputs AND the next token t_{T+1}: "
            "T = tokens.shape[1] - 1.", _depth_loss(_right_targets, divide="T+1")),
    Mistake("the targets are the main model's (the next token t_{i+1}) at every depth. Depth k predicts k + 1 "
            "tokens ahead: position j's target is tokens[:, j + k + 1], so the targets are tokens[:, k + 1:].",
            _depth_loss(lambda t, k, T: t[:, 1:T - k + 1])),
    Mistake("the log-probabilities are the log of softmax probabilities: with large logits the probabilities "
            "underflow to 0 and log(0) = -inf (or exp overflows and gives inf / inf = nan). Use "
            "F.log_softmax(logits, dim=-1) (or F.cross_entropy), which subtracts the largest logit first.",
            _depth_loss(_right_targets, log_probs=lambda x: torch.log(torch.softmax(x, -1)))),
    Mistake("the probabilities come from exp(logits) / sum(exp(logits)): exp overflows for large logits (inf / inf "
            "= nan). Use F.log_softmax(logits, dim=-1) (or F.cross_entropy), which subtracts the largest logit "
            "first.", _depth_loss(_right_targets, log_probs=lambda x: torch.log(x.exp() / x.exp().sum(-1, True)))),
    Mistake("the minus sign is missing: log-probabilities are <= 0, so the loss must be >= 0. L_k = -(1/T) sum "
            "log P.", lambda logits, tokens, k: -mtp.mtp_depth_loss(logits, tokens, k)),
    Mistake("the logits are used as if they were log-probabilities: normalise them first with "
            "F.log_softmax(logits, dim=-1).", _depth_loss(_right_targets, log_probs=lambda x: x)),
]


def _depth_case(batch: int, T: int, vocab: int, k: int, seed: int, scale: float = 2.0, note: str = "") -> Case:
    logits = _random_logits(batch, T - k, vocab, seed, scale)
    tokens = _random_tokens(batch, T + 1, vocab, seed + 1)
    label = (f"(logits [{batch}, {T - k}, {vocab}]{note}, tokens [{batch}, {T + 1}] = {tokens.tolist()}, k={k})"
             if batch * (T + 1) <= 24 else f"(logits [{batch}, {T - k}, {vocab}]{note}, tokens [{batch}, {T + 1}], "
                                            f"k={k})")
    return Case((logits, tokens, k), label=label)


_DEPTH_CASES = [
    _depth_case(2, 5, 4, 0, seed=1),  # the main model: T positions, next token
    _depth_case(2, 6, 5, 2, seed=2),
    _depth_case(3, 8, 7, 1, seed=3),
    _depth_case(4, 12, 16, 3, seed=4),
    _depth_case(2, 6, 5, 1, seed=5, scale=40.0, note=" with large values (about +-100)"),
    _depth_case(2, 6, 5, 1, seed=6, scale=1000.0, note=" with huge values (about +-3000)"),
]

_DEPTH_CRASH_HINTS = {
    "batch_size": "the targets and the logits have different numbers of positions. The logits of depth k hold "
                  "T - k positions and so do the targets tokens[:, k + 1:]; a shift off by one changes the count.",
    "must match": "the targets and the logits have different numbers of positions: the logits of depth k hold "
                  "T - k positions, the targets tokens[:, k + 1:] as many.",
}


def check_mtp_depth_loss(fn: Callable[..., Any]) -> None:
    """Check ``fn(logits, tokens, k) -> scalar``: -(1/T) sum_j log softmax(logits[:, j])[tokens[:, j + k + 1]],
    averaged over the batch ([V3] eq. 24)."""
    return check_function(
        fn, name="mtp_depth_loss", reference=mtp.mtp_depth_loss, cases=_DEPTH_CASES, mistakes=_DEPTH_LOSS_MISTAKES,
        compare_fn=_compare_loss, differentiable=(0,), crash_hints=_DEPTH_CRASH_HINTS,
        gradient_hint="every log-probability must keep its gradient with respect to the logits: no .detach(), "
                      ".item() or torch.tensor(...) on the way, and the divisor T a plain number.",
        generic_hint="targets = tokens[:, k + 1:]; log_probs = F.log_softmax(logits, -1); pick each target's "
                     "log-probability with .gather, sum over the positions, divide by T = tokens.shape[1] - 1, "
                     "average over the batch, and negate.")


# --------------------------------------------------------------------------------------------- mtp_loss
def _total(depth_loss: Callable[..., torch.Tensor], combine: str = "lam/D"):
    """A wrong total: another way to combine the depth losses, or a wrong loss per depth."""
    def wrong(depth_logits: Sequence[torch.Tensor], tokens: torch.Tensor, lam: float) -> torch.Tensor:
        losses = [depth_loss(logits, tokens, k) for k, logits in enumerate(depth_logits, start=1)]
        D = len(losses)
        return {"lam/D": lambda: lam / D * sum(losses), "1/D": lambda: sum(losses) / D,
                "lam": lambda: lam * sum(losses), "sum": lambda: sum(losses), "first": lambda: lam * losses[0],
                "last": lambda: lam * losses[-1]}[combine]()
    return wrong


_TOTAL_MISTAKES = [
    Mistake("lambda is missing: you averaged the depth losses but did not weight them. L_MTP = (lambda / D) * "
            "sum_k L_k: lambda (0.3, later 0.1 in V3) is what keeps the MTP loss a minor term next to the main "
            "loss.", _total(mtp.mtp_depth_loss, "1/D")),
    Mistake("the 1 / D is missing: you summed the D depth losses and weighted them by lambda. L_MTP = (lambda / D) "
            "* sum_k L_k: the mean over the depths, so adding depths does not scale the MTP loss up.",
            _total(mtp.mtp_depth_loss, "lam")),
    Mistake("neither lambda nor 1 / D: you returned the plain sum of the depth losses. L_MTP = (lambda / D) * "
            "sum_k L_k.", _total(mtp.mtp_depth_loss, "sum")),
    Mistake("only the first depth counts: sum over all D depths, k = 1..D, then multiply by lambda / D.",
            _total(mtp.mtp_depth_loss, "first")),
    Mistake("only the last depth counts: sum over all D depths, k = 1..D, then multiply by lambda / D.",
            _total(mtp.mtp_depth_loss, "last")),
    Mistake("every depth uses the main model's targets (the next token t_{i+1}). Depth k's logits predict "
            "tokens[:, j + k + 1]: call mtp_depth_loss(depth_logits[k - 1], tokens, k) with each depth's own k.",
            _total(_depth_loss(lambda t, k, T: t[:, 1:T - k + 1]))),
    Mistake("the depth losses are averaged over their T - k positions. The report divides each depth's sum by T "
            "([V3] eq. 24): mtp_depth_loss does that for you.", _total(_depth_loss(_right_targets, divide="T-k"))),
    Mistake("the depth losses are summed over the batch: average them over the sequences of the batch "
            "(mtp_depth_loss does that for you).", _total(_depth_loss(_right_targets, divide="batch-sum"))),
]


def _total_case(batch: int, T: int, vocab: int, D: int, lam: float, seed: int) -> Case:
    depth_logits = [_random_logits(batch, T - k, vocab, seed + k) for k in range(1, D + 1)]
    tokens = _random_tokens(batch, T + 1, vocab, seed)
    shapes = ", ".join(f"[{batch}, {T - k}, {vocab}]" for k in range(1, D + 1))
    return Case((depth_logits, tokens, lam),
                label=f"(depth_logits = D = {D} tensors {shapes}, tokens [{batch}, {T + 1}], lam={lam})")


_TOTAL_CASES = [  # D = 1 (V3's set-up) comes last: there 1 / D = 1 and dropping it shows nowhere
    _total_case(2, 6, 5, D=2, lam=0.3, seed=10),
    _total_case(2, 8, 6, D=3, lam=0.1, seed=20),
    _total_case(3, 7, 5, D=1, lam=0.3, seed=30),
]

_TOTAL_CRASH_HINTS = {
    "depth k = 0": "depth_logits[0] is depth k = 1, not 0: number the depths from 1, e.g. "
                   "enumerate(depth_logits, start=1).",
    "index out of range": "depth_logits has D items, depth_logits[0] .. depth_logits[D - 1] for k = 1 .. D: "
                          "depth k's logits are depth_logits[k - 1].",
    "expects logits": "depth k's logits are depth_logits[k - 1] and have T - k positions: pass each depth's own "
                      "k to mtp_depth_loss (k = 1 for depth_logits[0]).",
}


def check_mtp_loss(fn: Callable[..., Any]) -> None:
    """Check ``fn(depth_logits, tokens, lam) -> scalar``: (lam / D) * sum_k mtp_depth_loss(depth_logits[k - 1],
    tokens, k) ([V3] eq. 25)."""
    return check_function(
        fn, name="mtp_loss", reference=mtp.mtp_loss, cases=_TOTAL_CASES, mistakes=_TOTAL_MISTAKES,
        compare_fn=_compare_loss, differentiable=(0,), crash_hints=_TOTAL_CRASH_HINTS,
        gradient_hint="each depth's loss must keep its gradient with respect to that depth's logits: add the depth "
                      "losses as tensors (sum(...) or torch.stack(...).sum()), never as floats.",
        generic_hint="D = len(depth_logits); return lam / D * the sum over k = 1..D of "
                     "mtp_depth_loss(depth_logits[k - 1], tokens, k).")


# --------------------------------------------------------------------------------------------- mtp_forward
def _forward(h_part: Callable[[torch.Tensor, int, int], torch.Tensor] = lambda h, k, T: h[:, :T - k],
             e_part: Callable[[torch.Tensor, int, int], torch.Tensor] = lambda e, k, T: e[:, k:],
             combine: str = "norm, cat, project, block"):
    """A wrong depth forward: other slices of h_prev and emb, or the steps combined differently."""
    def wrong(h_prev, emb, k, norm_h, norm_e, proj, block):
        T = emb.shape[1]
        h, e = h_part(h_prev, k, T), e_part(emb, k, T)
        return {
            "norm, cat, project, block": lambda: block(proj(torch.cat([norm_h(h), norm_e(e)], -1))),
            "no norms": lambda: block(proj(torch.cat([h, e], -1))),
            "no norm on e": lambda: block(proj(torch.cat([norm_h(h), e], -1))),
            "no norm on h": lambda: block(proj(torch.cat([h, norm_e(e)], -1))),
            "norms swapped": lambda: block(proj(torch.cat([norm_e(h), norm_h(e)], -1))),
            "embedding first": lambda: block(proj(torch.cat([norm_e(e), norm_h(h)], -1))),
            "norm after project": lambda: block(norm_h(proj(torch.cat([h, e], -1)))),
            "no block": lambda: proj(torch.cat([norm_h(h), norm_e(e)], -1)),
            "block before project": lambda: proj(torch.cat([block(norm_h(h)), norm_e(e)], -1)),
            "add": lambda: block(norm_h(h) + norm_e(e)),
        }[combine]()
    return wrong


_FORWARD_MISTAKES = [
    Mistake("the RMSNorms are missing: each input is normalised before the concatenation, "
            "[RMSNorm(h_i) ; RMSNorm(Emb(t_{i+k}))]: use norm_h on the hidden states and norm_e on the embeddings.",
            _forward(combine="no norms")),
    Mistake("the embeddings are not normalised: [RMSNorm(h_i) ; RMSNorm(Emb(t_{i+k}))], apply norm_e to them.",
            _forward(combine="no norm on e")),
    Mistake("the hidden states are not normalised: [RMSNorm(h_i) ; RMSNorm(Emb(t_{i+k}))], apply norm_h to them.",
            _forward(combine="no norm on h")),
    Mistake("norm_h and norm_e are swapped: norm_h normalises the hidden states, norm_e the embeddings (each has "
            "its own learned weights).", _forward(combine="norms swapped")),
    Mistake("you read Emb(t_i), the embedding of the position's own token: depth k at position i combines h_i with "
            "the embedding of the token k places ahead, Emb(t_{i+k}), i.e. emb[:, k:].",
            _forward(e_part=lambda e, k, T: e[:, :T - k])),
    Mistake("you read Emb(t_{i+k-1}), one token short: depth k at position i combines h_i with Emb(t_{i+k}), "
            "i.e. emb[:, k:].", _forward(e_part=lambda e, k, T: e[:, k - 1:T - 1])),
    Mistake("you took the LAST T - k positions of h_prev: position i combines the previous depth's hidden state "
            "at the same position i with Emb(t_{i+k}). Keep the first T - k positions: h_prev[:, :T - k].",
            _forward(h_part=lambda h, k, T: h[:, h.shape[1] - (T - k):])),
    Mistake("you concatenated the embedding first, [RMSNorm(Emb) ; RMSNorm(h)]. The released V3 weights do that "
            "and, for a model trained from scratch, either order is fine; but this proj (M_k) was built for the "
            "paper's order, hidden state first: its first dim input columns act on h.",
            _forward(combine="embedding first")),
    Mistake("the normalisation comes after the projection: normalise each input first, then concatenate and "
            "project: block(proj(cat([norm_h(h), norm_e(e)])))", _forward(combine="norm after project")),
    Mistake("the Transformer block is missing: h^k = TRM_k(M_k [...]); apply block to the projection.",
            _forward(combine="no block")),
    Mistake("the Transformer block runs before the projection: first project the concatenation with proj (M_k), "
            "then apply block (TRM_k) to the result.", _forward(combine="block before project")),
    Mistake("the two normalised inputs are added, not concatenated and projected: h' = M_k [RMSNorm(h) ; "
            "RMSNorm(Emb)], torch.cat along the last dimension, then proj.", _forward(combine="add")),
]

_FORWARD_CRASH_HINTS = {
    "Sizes of tensors must match": "the two halves of the concatenation have different lengths. Depth k has "
                                   "T - k positions: trim h_prev to h_prev[:, :T - k] and shift the embeddings "
                                   "to emb[:, k:].",
    "cannot be multiplied": "proj (M_k) maps the concatenation [h ; e] of 2 dim features to dim: concatenate the "
                            "two normalised inputs first, then project.",
    "TransformerBlock expects": "the block works on dim features: project the 2 dim concatenation with proj "
                                "first (and keep T - k positions).",
    "RMSNorm expected": "norm_h and norm_e each normalise dim features: apply them to h_prev and to the "
                        "embeddings before concatenating.",
}


def _forward_case(batch: int, T: int, dim: int, k: int, seed: int) -> Case:
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, leaving the caller's random state alone
        torch.manual_seed(seed)
        norm_h, norm_e = RMSNorm(dim), RMSNorm(dim)
        proj = torch.nn.Linear(2 * dim, dim, bias=False)
        block = TransformerBlock(dim, n_heads=2)
    with torch.no_grad():  # distinct norm weights, so that swapping norm_h and norm_e shows
        norm_h.weight.copy_(1 + 0.5 * torch.rand(dim, generator=generator))
        norm_e.weight.copy_(0.5 + 0.5 * torch.rand(dim, generator=generator))
    L = T - k + 1  # depth k reads depth k-1's output: T positions for k = 1
    h_prev = 3.0 * torch.randn(batch, L, dim, generator=generator)  # RMS far from 1, so a missing norm shows
    emb = 0.3 * torch.randn(batch, T, dim, generator=generator)
    return Case((h_prev, emb, k, norm_h, norm_e, proj, block),
                label=f"(h_prev [{batch}, {L}, {dim}], emb [{batch}, {T}, {dim}], k={k}, norm_h, norm_e, "
                      f"proj: Linear({2 * dim}, {dim}), block: TransformerBlock({dim}, 2))")


_FORWARD_CASES = [_forward_case(2, 6, 8, k=1, seed=40), _forward_case(2, 7, 8, k=2, seed=41),
                  _forward_case(1, 9, 16, k=3, seed=42)]


def check_mtp_forward(fn: Callable[..., Any]) -> None:
    """Check ``fn(h_prev, emb, k, norm_h, norm_e, proj, block) -> h^k [batch, T - k, dim]``:
    block(proj(cat([norm_h(h_prev[:, :T - k]), norm_e(emb[:, k:])], -1))) ([V3] eqs. 21-22)."""

    @checker("mtp_forward")
    def body() -> str:
        for case in _FORWARD_CASES:
            k = case.args[2]
            got = call_learner(fn, *clone_args(case.args), name="Your mtp_forward", label=case.describe(),
                               crash_hints=_FORWARD_CRASH_HINTS)
            with torch.no_grad():
                expected = mtp.mtp_forward(*clone_args(case.args))
                problem = compare(got, expected, rtol=1e-4, atol=1e-5, what="your h^k")
                cause = diagnose(got, case, _FORWARD_MISTAKES) if problem else None
            if problem is None:
                problem = gradient_problem(fn, mtp.mtp_forward, case, (0, 1), name="mtp_forward",
                                           mistakes=_FORWARD_MISTAKES, crash_hints=_FORWARD_CRASH_HINTS)
                if problem:
                    raise CheckFailed(problem)
                continue
            # What is wrong first, on one line; the numbers after it.
            if isinstance(got, torch.Tensor) and got.dim() == 3 and got.shape[1] != expected.shape[1]:
                first = (f"Your h^k has {got.shape[1]} positions, but depth k = {k} has T - k = {expected.shape[1]} "
                         f"positions: trim h_prev to its first T - k positions and read the embeddings emb[:, k:].")
            elif cause:
                first = f"Your h^k is wrong; likely cause: {cause}"
            else:
                first = ("Your h^k differs from the reference. Hint: h = norm_h(h_prev[:, :T - k]); "
                         "e = norm_e(emb[:, k:]); return block(proj(torch.cat([h, e], dim=-1))).")
            raise CheckFailed(f"{first}\nSeen for the input {case.describe()} (depth k = {k}): {problem}.")
        return f"it agrees with the reference, values and gradients, on all {len(_FORWARD_CASES)} cases"

    return body()
