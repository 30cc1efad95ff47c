"""Speculative decoding with the model's own MTP modules as the drafter ([V3] 5.4.3).

Each step the main model reads the pending tokens with its KV cache: the last token it has not read yet and the
d drafts after it. Its logits at those d + 1 positions verify the drafts and give its own next token, so one
main-model forward emits between 1 and d + 1 tokens. Then the MTP chain drafts the next D tokens from the main
model's last hidden state h^0_p (p = the position of the second-last committed token):

    depth 1 reads h^0_p and Emb(x_{p+1}) (the token just committed)  -> draft of x_{p+2}
    depth k reads h^{k-1}_p and Emb(draft k - 1)                     -> draft of x_{p+k+1}

exactly the inputs depth k sees in training ([V3] eqs. 21-23), the drafts standing in for the unknown tokens.
Each MTP block keeps a KV cache of the positions whose inputs are committed tokens; rejected drafts are rolled
back with ``truncate``.

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

from course_lib.core.runtime import eval_mode
from course_lib.model import arguments as model_arguments
from course_lib.model.tiny import TinyDeepSeek, temperature_softmax
from course_lib.core.validation import boundary, check_int, check_number


# ------------------------------------------------------------------------------------------ the accept rules
def accept_greedy(drafts: torch.Tensor, main_tokens: torch.Tensor) -> torch.Tensor:
    """The greedy verify-and-accept step: the tokens one step emits.

    drafts: int64 [d] (d >= 0), the drafted tokens for positions n..n+d-1; main_tokens: int64 [d + 1], the main
    model's argmax at the positions that predict n..n+d (main_tokens[j] verifies drafts[j]; main_tokens[d] is the
    token after a full accept). -> int64 [m + 1]: drafts[:m] and main_tokens[m], m being the number of leading
    drafts equal to the main model's tokens. Raises ValueError on shapes that do not fit.
    """
    if drafts.dim() != 1 or main_tokens.dim() != 1 or main_tokens.shape[0] != drafts.shape[0] + 1:
        raise ValueError(f"expected drafts [d] and main_tokens [d + 1], got {list(drafts.shape)} and "
                         f"{list(main_tokens.shape)}")
    matches = (drafts == main_tokens[:-1]).long()  # [d]
    m = int(matches.cumprod(0).sum())  # leading matches
    return torch.cat([drafts[:m], main_tokens[m:m + 1]])


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
    if list(q.shape[:2]) != [B, d] or list(p.shape[:2]) != [B, d + 1] or q.shape[2] != p.shape[2]:
        raise ValueError(f"expected drafts [B, d], q [B, d, V], p [B, d + 1, V], got {list(drafts.shape)}, "
                         f"{list(q.shape)}, {list(p.shape)}")
    if not (q.is_floating_point() and p.is_floating_point()):
        raise TypeError(f"q and p must be floating-point probabilities, got {q.dtype} and {p.dtype}")
    if u is None:
        u = torch.rand(B, d, generator=generator, dtype=torch.float64)
    elif not (isinstance(u, torch.Tensor) and u.is_floating_point() and list(u.shape) == [B, d]):
        raise TypeError(f"u must be a float tensor [B, d] = {[B, d]} of uniforms in [0, 1), got {u!r:.80}")
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


# ------------------------------------------------------------------------------------------ statistics
@dataclass
class DecodeStats:
    """What one decoding run did. depth: D (0 for plain decoding); forwards: main-model forwards (the prompt's
    counts as one); new_tokens: tokens generated; seconds: wall-clock time; drafted[k-1] / accepted[k-1]: drafts
    of depth k that the main model verified / accepted; records: (position in the text, depth, accepted) of every
    verified draft."""

    depth: int
    forwards: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    records: list[tuple[int, int, int, bool]] = field(default_factory=list)

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


# ------------------------------------------------------------------------------------------ decoding
def _check_inputs(model: TinyDeepSeek, prompt: torch.Tensor, max_new_tokens: int, temperature: float,
                  **_: object) -> None:
    if not isinstance(model, TinyDeepSeek):
        raise TypeError(f"model must be a TinyDeepSeek, got {type(model).__name__}")
    if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.int64 or prompt.dim() != 1:
        raise TypeError(f"prompt must be an int64 tensor [T0] of token ids, got {prompt!r:.80}")
    if prompt.numel() == 0:
        raise ValueError("the prompt is empty: give at least one token (the model predicts from a context)")
    check_int("max_new_tokens", max_new_tokens, 1)
    if prompt.numel() + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt ({prompt.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"context max_seq_len={model.config.max_seq_len}")
    model_arguments.check_tokens(model, prompt[None])  # the ids, once: the loops feed the model its own tokens
    check_number("temperature", temperature, 0)  # 0 = greedy


def _choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """logits [n, V] -> int64 [n]: the argmax (temperature 0) or a sample of softmax(logits / temperature)
    (``temperature_softmax``: a tiny temperature samples the argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = temperature_softmax(logits, temperature)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


@torch.no_grad()
@boundary(_check_inputs)
def plain_generate(model: TinyDeepSeek, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, DecodeStats]:
    """Decode with the main model only, one token per forward, with the KV cache (the baseline).

    prompt: int64 [T0 >= 1]; T0 + max_new_tokens <= max_seq_len; temperature 0 = greedy (argmax), else sample
    softmax(logits / temperature) with ``generator``. -> (int64 [T0 + max_new_tokens] on the CPU, stats).
    """
    stats = DecodeStats(depth=0)
    start = time.perf_counter()
    cache = model.new_cache(1)
    device = next(model.parameters()).device
    tokens, new = prompt.to(device), prompt.to(device)
    with eval_mode(model):
        for _ in range(max_new_tokens):
            choice = _choose(model(new[None], cache)[0, -1:], temperature, generator)  # [1]
            tokens, new = torch.cat([tokens, choice]), choice
    stats.forwards = stats.new_tokens = max_new_tokens
    stats.seconds = time.perf_counter() - start
    return tokens.cpu(), stats


@torch.no_grad()
@boundary(_check_inputs)
def speculative_generate(model: TinyDeepSeek, prompt: torch.Tensor, max_new_tokens: int, depth: int | None = None,
                         temperature: float = 0.0,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, DecodeStats]:
    """Decode with the main model, its MTP modules drafting ``depth`` tokens per step ([V3] 5.4.3).

    prompt: int64 [T0 >= 1]; T0 + max_new_tokens <= max_seq_len (the window does not slide); depth: D, 1 <= D <=
    model.config.mtp_depth (default: all trained depths); temperature 0 = greedy, > 0 = sampling with
    ``generator`` (a CPU torch.Generator). -> (int64 [T0 + max_new_tokens] on the CPU, stats).

    Greedy output equals ``plain_generate``'s; sampled output has its distribution. Raises ValueError for a
    model without MTP modules, D out of range, temperature < 0, an empty prompt or a text longer than the context.
    """
    trained = model.config.mtp_depth
    if trained == 0:
        raise ValueError("the model has no MTP modules (mtp_depth=0): nothing can draft. Train with mtp_depth >= 1")
    depth = trained if depth is None else depth
    if not 1 <= check_int("depth (D, drafts per step)", depth) <= trained:
        raise ValueError(f"depth (D, drafts per step) must be an int in [1, {trained}] (the model's trained MTP "
                         f"depths), got {depth!r}")
    stats = DecodeStats(depth=depth, drafted=[0] * depth, accepted=[0] * depth)
    start = time.perf_counter()
    device = next(model.parameters()).device
    cache = model.new_cache(1)
    tokens: list[int] = prompt.tolist()
    target = len(tokens) + max_new_tokens
    feed = prompt.to(device)  # what the main model reads next: the prompt, then the last token and the drafts
    drafts: list[int] = []
    q = torch.empty(0, model.config.vocab_size, dtype=torch.float64, device=device)  # [d, V]: the drafter's distributions of the drafts (sampling only)
    carry: list[torch.Tensor | None] = [None] * (depth + 1)  # carry[k]: h^k at the position depth k + 1 needs next
    with eval_mode(model):
        while len(tokens) < target:
            n, d, read_from = len(tokens), len(drafts), cache.length
            h = model.hidden_states(feed[None], cache)  # [1, len(feed), dim], positions read_from..
            logits = model.head(model.norm(h[:, -(d + 1):]))[0]  # [d + 1, V]: predict positions n..n+d
            stats.forwards += 1
            draft_tensor = torch.tensor(drafts, dtype=torch.int64, device=device)
            if temperature == 0:
                emitted = accept_greedy(draft_tensor, logits.argmax(-1)).tolist()
            else:
                p = temperature_softmax(logits, temperature)
                m, token = accept_sampled(draft_tensor[None], q[None], p[None], generator)
                emitted = drafts[:int(m)] + [int(token)]
            m = len(emitted) - 1
            for j in range(d):
                stats.drafted[j] += 1
                stats.accepted[j] += j < m
                stats.records.append((n + j, j + 1, drafts[j], j < m))
            tokens += emitted
            cache.truncate(len(tokens) - 1)  # the main model keeps x_0..x_{n+m-1}; the MTP caches are shorter
            remaining = target - len(tokens)
            d_next = min(depth, remaining - 1)  # drafts beyond the last token to generate are never verified
            drafts, q_rows = [], []
            if d_next > 0:
                last = len(tokens) - 2  # p: the main model's last hidden state, read for the token just committed
                s = cache.mtp[0].length
                prev_h, prev_start = h[:, s - read_from:last - read_from + 1], s  # h^0 at positions s..last
                for k in range(1, d_next + 1):
                    module, block_cache = model.mtp_modules[k - 1], cache.mtp[k - 1]
                    s = block_cache.length
                    if prev_start > s:  # the one position of h^{k-1} that the previous step committed
                        prev_h = torch.cat([carry[k - 1], prev_h], dim=1)
                    if prev_h.shape[1] != last - s + 1:
                        raise RuntimeError(f"internal: depth {k} needs h^{k - 1} at positions {s}..{last}")
                    read = [tokens[i] if i < len(tokens) else drafts[i - len(tokens)]  # t_{s+1} .. t_{last+k+1}
                            for i in range(s, last + k + 1)]
                    hk, draft_logits = module(prev_h, torch.tensor([read], device=device), block_cache)
                    draft_logits = draft_logits[0, -1:]  # [1, V]
                    drafts.append(int(_choose(draft_logits, temperature, generator)))
                    if temperature > 0:
                        q_rows.append(temperature_softmax(draft_logits[0], temperature))
                    committed = max(0, len(tokens) - k)  # positions whose input t_{i+k} is a committed token
                    block_cache.truncate(committed)
                    carry[k] = hk[:, max(0, committed - 1) - s:committed - s]  # for depth k + 1's next step
                    prev_h, prev_start = hk, s
            q = torch.stack(q_rows) if q_rows else torch.empty(0, logits.shape[-1], dtype=torch.float64, device=device)
            feed = torch.tensor(tokens[-1:] + drafts, dtype=torch.int64, device=device)
    stats.new_tokens = max_new_tokens
    stats.seconds = time.perf_counter() - start
    return torch.tensor(tokens, dtype=torch.int64), stats
