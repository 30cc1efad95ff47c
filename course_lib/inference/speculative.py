"""Speculative decoding with the model's own MTP modules as the drafter ([V3] 2.2 and 5.4.3).

Each step the main model VERIFIES: it reads the pending tokens with its KV cache, the last committed token and the
d drafts after it, and its logits at those d + 1 positions check the drafts and give its own next token, so one
main-model forward emits between 1 and d + 1 tokens. Then the DRAFTER, the MTP chain, proposes the next D tokens
from the main model's last hidden state h^0_p (p = the position of the second-last committed token):

    depth 1 reads h^0_p and Emb(x_{p+1}) (the token just committed)  -> draft of x_{p+2}
    depth k reads h^{k-1}_p and Emb(draft k - 1)                     -> draft of x_{p+k+1}

exactly the inputs depth k sees in training ([V3] eqs. 21-23), the drafts standing in for the unknown tokens.
The drafter owns one KV cache per depth, holding the positions whose inputs are committed tokens; what it read of
the drafts is dropped after each step (``MTPDrafter``).

- Greedy (temperature 0): accept drafts while each equals the main model's argmax at its position, then emit
  the main model's own token (``accept_greedy``): the output is the main model's greedy decoding, token for
  token (up to float rounding of near-ties, as any change of batch shape would give).
- Sampling (temperature > 0): accept draft x with probability min(1, p(x) / q(x)), else sample from
  norm(max(0, p - q)) and stop; after a full accept, sample the next token from p (``accept_sampled``; Leviathan
  et al. 2023, Chen et al. 2023). The output has the main model's distribution exactly.

[V3] reports 85-90% acceptance of the second token and about 1.8x tokens per second (facts, section 11).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from course_lib.core.runtime import eval_mode
from course_lib.core.validation import boundary
from course_lib.inference import arguments
from course_lib.model.tiny import TinyDeepSeek, temperature_softmax


# ------------------------------------------------------------------------------------------ the accept rules
@boundary(arguments.accept_greedy)
def accept_greedy(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    """The greedy verify-and-accept step: the tokens one step emits.

    drafts: int64 [d] (d >= 0), the drafted tokens for positions n..n+d-1; main_tokens: int64 [d + 1], the main
    model's argmax at the positions that predict n..n+d (main_tokens[j] verifies drafts[j]; main_tokens[d] is the
    token after a full accept). -> int64 [m + 1]: drafts[:m] and main_tokens[m], m being the number of leading
    drafts equal to the main model's tokens. Raises ValueError on shapes that do not fit.
    """
    m = int((drafts == main_tokens[:-1]).long().cumprod(0).sum())  # leading matches
    return torch.cat([drafts[:m], main_tokens[m:m + 1]])


@boundary(arguments.accept_sampled)
def accept_sampled(drafts: torch.Tensor, q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None = None,
                   u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampling verify step of Leviathan et al. / Chen et al., for a batch of independent rows.

    drafts: int64 [B, d], drafted from q; q: float [B, d, V], the drafter's distribution of each draft; p: float
    [B, d + 1, V], the main model's distribution at the positions of the drafts and the one after (any float
    dtypes: the rule runs in float64, where float16, bfloat16 and float32 values are exact).
    Draft j is accepted with probability min(1, p_j(x) / q_j(x)) if all before it were: with u ~ U[0, 1), iff
    u < p_j(x) / q_j(x), tested as u q_j(x) < p_j(x). Strict, and without the division: a draft the main model
    cannot emit (p_j(x) = 0) is never accepted, even for u = 0 or q_j(x) = 0 (where p / q is NaN). At the first
    rejection the token is sampled from norm(max(0, p_j - q_j)); after a full accept from p_d.
    u: float [B, d] in [0, 1), the uniforms of the accept tests (default: drawn from ``generator``; given, they
    make the accepted counts deterministic, as notebook 08's checker needs).
    -> (m: int64 [B], the drafts accepted; token: int64 [B], the token emitted after them).
    The emitted tokens are distributed exactly as sampling from p one token at a time. Raises ValueError for
    shapes that do not fit, TypeError for p, q or u not floating point.
    """
    B, d = drafts.shape
    if u is None:
        u = torch.rand(B, d, generator=generator, dtype=torch.float64)
    p, q, u = p.double(), q.double(), u.double().to(p.device)
    rows = torch.arange(B)
    p_x = p[:, :d].gather(-1, drafts[..., None])[..., 0]  # [B, d]
    q_x = q.gather(-1, drafts[..., None])[..., 0]
    accepted = (u * q_x < p_x).long()  # u < p / q; never when p = 0
    m = accepted.cumprod(1).sum(1)  # [B]
    q_padded = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)  # a zero draft after the last: residual = p_d
    residual = (p[rows, m] - q_padded[rows, m]).clamp(min=0)  # [B, V]
    empty = residual.sum(-1, keepdim=True) <= 0  # p = q: rejected only a draft q could not draw; sample p
    residual = torch.where(empty, p[rows, m], residual)
    token = torch.multinomial(residual.cpu(), 1, generator=generator)[:, 0].to(drafts.device)
    return m, token


def choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits [n, V] -> int64 [n]: the argmax (temperature 0) or a sample of softmax(logits / temperature)
    (``temperature_softmax``: a tiny temperature samples the argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = temperature_softmax(logits, temperature)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


# ------------------------------------------------------------------------------------------ statistics
@dataclass
class DecodeStats:
    """What one decoding run did. depth: D (0 for plain decoding); forwards: main-model forwards (the prompt's
    counts as one); new_tokens: tokens generated; seconds: wall-clock time; drafted[k-1] / accepted[k-1]: drafts
    of depth k that the main model verified / accepted; records: (position in the text, depth, draft, accepted) of
    every verified draft."""

    depth: int
    forwards: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    records: list[tuple[int, int, int, bool]] = field(default_factory=list)

    def count_verified(self, position: int, drafts: list[int], m: int) -> None:
        """One main-model forward verified ``drafts`` (for positions ``position``...) and accepted the first m."""
        self.forwards += 1
        for j, draft in enumerate(drafts):
            self.drafted[j] += 1
            self.accepted[j] += j < m
            self.records.append((position + j, j + 1, draft, j < m))

    @property
    def acceptance_rate(self) -> list[float]:
        """Per depth k: accepted / verified drafts of depth k (a depth-2 draft counts as rejected when the
        depth-1 draft before it was)."""
        return [a / n if n else float("nan") for a, n in zip(self.accepted, self.drafted)]

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.forwards if self.forwards else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------ the drafter
@dataclass
class Drafts:
    """The tokens proposed for the positions after the committed text: tokens [d]; q: float64 [d, V], the
    drafter's distribution of each (sampling), or None (greedy)."""

    tokens: list[int]
    q: torch.Tensor | None


class MTPDrafter:
    """The MTP modules of depths 1..D as the draft model, each with its own KV cache ([V3] 2.2, eqs. 21-23).

    Depth k at position i reads h^{k-1}_i and Emb(t_{i+k}) and predicts t_{i+k+1}. Its cache keeps the positions
    whose input t_{i+k} is a committed token (i <= n - k - 1 for n committed tokens); the positions that read a
    draft are computed afresh at each step. ``unread[k-1]`` holds h^{k-1} at the committed positions depth k has
    not cached yet: after a step, depth k - 1's last committed position, which depth k reads again next step.
    modules: the MTP modules of depths 1..D; caches: their blocks' KV caches (``ModelCache.mtp[:D]``), which the
    drafter alone fills and truncates.
    """

    def __init__(self, modules: nn.ModuleList, caches: list, temperature: float,
                 generator: torch.Generator | None) -> None:
        self.modules, self.caches = modules, caches
        self.temperature, self.generator = temperature, generator
        self.unread: list[torch.Tensor | None] = [None] * len(modules)

    def draft(self, h0: torch.Tensor, text: list[int], count: int) -> Drafts:
        """Propose ``count`` tokens (1 <= count <= D, never more than at the call before) after the committed
        ``text`` x_0..x_{n-1}. h0: [1, L, dim], the main model's h^0 at the committed positions depth 1 has not
        read (up to n - 2)."""
        n, h = len(text), h0
        unread, self.unread = self.unread, [None] * len(self.modules)
        tokens: list[int] = []
        q: list[torch.Tensor] = []
        for k, (module, cache) in enumerate(zip(self.modules[:count], self.caches), start=1):
            start = cache.length  # depth k reads positions start..n-2
            if unread[k - 1] is not None:
                h = torch.cat([unread[k - 1], h], dim=1)  # h^{k-1} at start..n-2
            read = torch.tensor([text[start:] + tokens], device=h.device)  # from x_start, drafts past x_{n-1}
            h, logits = module(h, read, cache)  # h^k at start..n-2 (position i reads x_{i+k})
            logits = logits[:, -1:]  # of position n-2, predicting x_{n+k-1}
            tokens.append(int(choose(logits[0], self.temperature, self.generator)))
            if self.temperature > 0:
                q.append(temperature_softmax(logits[0, 0], self.temperature))
            committed = max(0, n - k)  # positions 0..n-k-1 read committed tokens
            cache.truncate(committed)
            if k < len(self.modules):  # for depth k + 1 at the next step
                self.unread[k] = h[:, max(0, committed - 1) - start:committed - start]
        return Drafts(tokens, torch.stack(q) if q else None)


def verify(drafts: Drafts, logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> list[int]:
    """The main model's verdict on the drafts: logits [d + 1, V] at the positions that predict the d drafts and
    the token after them -> the accepted drafts and the main model's own next token (``accept_greedy``,
    ``accept_sampled``)."""
    device = logits.device
    tokens = torch.tensor(drafts.tokens, dtype=torch.int64, device=device)
    if temperature == 0:
        return accept_greedy(tokens, logits.argmax(-1)).tolist()
    q = drafts.q if drafts.q is not None else torch.empty(0, logits.shape[-1], dtype=torch.float64, device=device)
    m, token = accept_sampled(tokens[None], q[None], temperature_softmax(logits, temperature)[None], generator)
    return drafts.tokens[:int(m)] + [int(token)]


# ------------------------------------------------------------------------------------------ decoding
@torch.no_grad()
@boundary(arguments.plain_generate)
def plain_generate(model: TinyDeepSeek, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, DecodeStats]:
    """Decode with the main model only, one token per forward, with the KV cache (the baseline).

    prompt: int64 [T0 >= 1]; T0 + max_new_tokens <= max_seq_len; temperature 0 = greedy (argmax), else sample
    softmax(logits / temperature) with ``generator``. -> (int64 [T0 + max_new_tokens] on the CPU, stats).
    Raises TypeError / ValueError for a model that is not a TinyDeepSeek, a prompt that is not int64 [T0 >= 1] in
    the vocabulary, max_new_tokens < 1, a text longer than the context, temperature < 0.
    """
    stats = DecodeStats(depth=0)
    start = time.perf_counter()
    with eval_mode(model):
        cache = model.new_cache(1)
        tokens = new = prompt.to(next(model.parameters()).device)
        for _ in range(max_new_tokens):
            new = choose(model(new[None], cache)[0, -1:], temperature, generator)  # [1]
            tokens = torch.cat([tokens, new])
    stats.forwards = stats.new_tokens = max_new_tokens
    stats.seconds = time.perf_counter() - start
    return tokens.cpu(), stats


@torch.no_grad()
@boundary(arguments.speculative_generate)
def speculative_generate(model: TinyDeepSeek, prompt: torch.Tensor, max_new_tokens: int, depth: int | None = None,
                         temperature: float = 0.0,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, DecodeStats]:
    """Decode with the main model, its MTP modules drafting ``depth`` tokens per step ([V3] 5.4.3).

    prompt: int64 [T0 >= 1]; T0 + max_new_tokens <= max_seq_len (the window does not slide); depth: D, 1 <= D <=
    model.config.mtp_depth (default: all trained depths); temperature 0 = greedy, > 0 = sampling with
    ``generator`` (a CPU torch.Generator). -> (int64 [T0 + max_new_tokens] on the CPU, stats).

    Greedy output equals ``plain_generate``'s; sampled output has its distribution. Raises ValueError for a
    model without MTP modules, D out of range, temperature < 0, an empty prompt or a text longer than the context
    (and as ``plain_generate`` for the other arguments).
    """
    depth = model.config.mtp_depth if depth is None else depth
    stats = DecodeStats(depth=depth, drafted=[0] * depth, accepted=[0] * depth)
    start = time.perf_counter()
    with eval_mode(model):
        cache = model.new_cache(1)
        drafter = MTPDrafter(model.mtp_modules[:depth], cache.mtp[:depth], temperature, generator)
        text = prompt.tolist()
        target = len(text) + max_new_tokens
        pending = prompt.to(next(model.parameters()).device)  # the prompt, then the last token and the drafts
        drafts = Drafts([], None)
        while len(text) < target:
            read_from = cache.length
            h = model.hidden_states(pending[None], cache)  # h^0 at positions read_from..
            logits = model.head(model.norm(h[:, -(len(drafts.tokens) + 1):]))[0]  # [d + 1, V]: predict n..n+d
            emitted = verify(drafts, logits, temperature, generator)
            stats.count_verified(len(text), drafts.tokens, len(emitted) - 1)
            text += emitted
            cache.truncate(len(text) - 1)  # the main model keeps the positions that read committed tokens
            count = min(depth, target - len(text) - 1)  # drafts past the last token to generate are never verified
            drafts = drafter.draft(h[:, :len(text) - 1 - read_from], text, count) if count > 0 else Drafts([], None)
            pending = torch.tensor(text[-1:] + drafts.tokens, dtype=torch.int64, device=pending.device)
    stats.new_tokens = max_new_tokens
    stats.seconds = time.perf_counter() - start
    return torch.tensor(text, dtype=torch.int64), stats
