"""Multi-Token Prediction (MTP) exactly as DeepSeek-V3 defines it ([V3] 2.2).

A training sequence holds T input tokens t_1..t_T and the next token t_{T+1}; T is the sequence length. Next to
the main model, D sequential MTP modules (V3: D = 1) predict further ahead. Depth k (k = 1..D) at position
i = 1..T-k combines the previous depth's hidden state (h^0 is the main model's last hidden state) with the
embedding of token t_{i+k}, and predicts t_{i+k+1}:

    h'^k_i = M_k [RMSNorm(h^{k-1}_i) ; RMSNorm(Emb(t_{i+k}))]          M_k: 2 dim -> dim
    h^k_{1..T-k} = TRM_k(h'^k_{1..T-k})                               one causal Transformer block
    P^k_{i+k+1} = OutHead(h^k_i)                                      the main model's output head, shared

    L_k = -(1/T) sum_{i=2+k}^{T+1} log P^k_i[t_i]                     T - k terms, divided by T
    L_MTP = (lambda / D) sum_{k=1}^{D} L_k                           V3: lambda = 0.3, later 0.1

Zero-indexed, as the code reads: tokens[:, 0..T] holds t_1..t_{T+1}; depth-k logits have T - k positions
j = 0..T-k-1, and position j predicts tokens[:, j+k+1]. k = 0 is the main model (T positions, next token).

Order of the concatenation: the paper writes the hidden state first, [RMSNorm(h) ; RMSNorm(Emb)], and so does
this module (the first ``dim`` input columns of M_k act on the hidden state). The released V3 weights put the
embedding first (``eh_proj``); for a model trained from scratch either order gives the same family of models.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.attention.cache import KVCache
from course_lib.core.layers import RMSNorm
from course_lib.core.validation import check_int, check_number


def _check_tokens(tokens: torch.Tensor) -> int:
    """Validate tokens [batch >= 1, T + 1 >= 2] int64 and return T."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64:
        got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"tokens must be an int64 tensor [batch, T + 1] (t_1 .. t_{{T+1}}), got {got}")
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch >= 1, T + 1 >= 2] (t_1 .. t_{{T+1}}), got shape {list(tokens.shape)}")
    return tokens.shape[1] - 1


def mtp_depth_loss(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """The loss of MTP depth k ([V3] eq. 24): -(1/T) * sum of the log-probabilities of the targets, averaged over
    the batch. k = 0 gives the main model's next-token loss.

    logits: float [batch, T - k, vocab], position j predicting tokens[:, j + k + 1];
    tokens: int64 [batch, T + 1] (t_1 .. t_{T+1}); k: int, 0 <= k < T -> scalar tensor (float32 or wider).

    The sum has T - k terms but is divided by T, as in the report (not a mean over the T - k positions).
    Computed with log_softmax, so huge logits give finite losses.
    """
    _check_depth_inputs(logits, tokens, k)
    return _depth_loss_unchecked(logits, tokens, k)


def _check_depth_inputs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> None:
    """The checks of ``mtp_depth_loss``; the target ids' range costs a host sync on a GPU."""
    T = _check_tokens(tokens)
    if not 0 <= check_int("k (the MTP depth)", k) < T:
        raise ValueError(f"k (the MTP depth) must satisfy 0 <= k < T = {T} (tokens has T + 1 = {T + 1} columns), "
                         f"got k = {k}")
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor [batch, T - k, vocab], got {got}")
    expected = [tokens.shape[0], T - k]
    if logits.dim() != 3 or list(logits.shape[:2]) != expected or logits.shape[2] == 0:
        raise ValueError(f"depth k = {k} expects logits [batch, T - k, vocab] = [{expected[0]}, {expected[1]}, vocab] "
                         f"for tokens {list(tokens.shape)} (T = {T}), got {list(logits.shape)}")
    targets = tokens[:, k + 1:]  # [batch, T - k]: t_{k+2} .. t_{T+1}
    vocab = logits.shape[2]
    if targets.min() < 0 or targets.max() >= vocab:
        raise ValueError(f"target token ids must lie in [0, vocab) = [0, {vocab}) for logits [..., {vocab}], "
                         f"got ids from {int(targets.min())} to {int(targets.max())}: is the vocabulary the same?")


def _depth_loss_unchecked(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """``mtp_depth_loss`` of inputs already checked (``TinyDeepSeek._losses``: the model checks its tokens once
    per call and makes the logits itself)."""
    T = tokens.shape[1] - 1
    targets = tokens[:, k + 1:]  # [batch, T - k]: t_{k+2} .. t_{T+1}
    log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # [b, T-k, vocab]
    target_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [batch, T - k]
    return -(target_log_probs.sum(dim=1) / T).mean()


def mtp_loss(depth_logits: Sequence[torch.Tensor], tokens: torch.Tensor, lam: float) -> torch.Tensor:
    """The total MTP loss ([V3] eq. 25): (lam / D) * sum over k = 1..D of mtp_depth_loss(depth_logits[k-1], tokens, k).

    depth_logits: D >= 1 tensors, depth_logits[k-1] of shape [batch, T - k, vocab]; tokens: int64 [batch, T + 1];
    lam: the weight lambda (V3: 0.3, later 0.1) -> scalar tensor. The training loss is main loss + this.
    """
    if isinstance(depth_logits, torch.Tensor) or not isinstance(depth_logits, Sequence):
        raise TypeError(f"depth_logits must be a list of D tensors (depth k's logits [batch, T - k, vocab] at "
                        f"index k - 1), got {type(depth_logits).__name__}")
    if len(depth_logits) == 0:
        raise ValueError("depth_logits is empty: with D = 0 MTP depths there is no MTP loss (and no 1 / D)")
    check_number("lam (lambda, the weight of the MTP loss)", lam, 0)
    for k, logits in enumerate(depth_logits, start=1):
        _check_depth_inputs(logits, tokens, k)
    if len({logits.shape[-1] for logits in depth_logits}) > 1:
        raise ValueError(f"every depth shares the output head, so every depth's logits need the same vocab size; "
                         f"got {[list(logits.shape) for logits in depth_logits]}")
    return _mtp_loss_unchecked(depth_logits, tokens, lam)


def _mtp_loss_unchecked(depth_logits: Sequence[torch.Tensor], tokens: torch.Tensor, lam: float) -> torch.Tensor:
    """``mtp_loss`` of inputs already checked (``TinyDeepSeek._losses``)."""
    return lam / len(depth_logits) * sum(_depth_loss_unchecked(logits, tokens, k)
                                         for k, logits in enumerate(depth_logits, start=1))


def mtp_forward(h_prev: torch.Tensor, emb: torch.Tensor, k: int, norm_h: nn.Module, norm_e: nn.Module,
                proj: nn.Module, block: nn.Module) -> torch.Tensor:
    """The hidden states of MTP depth k ([V3] eq. 21-22), before the output head.

    h_prev: [batch, L, dim], the previous depth's hidden states h^{k-1} at positions 1..L, L >= T - k (depth 1
        reads the main model's h^0, L = T; depth k reads depth k-1's output, L = T - k + 1);
    emb: [batch, T, dim], the shared embedding of the inputs t_1..t_T; k: the depth, 1 <= k < T;
    norm_h, norm_e: RMSNorm(dim); proj: M_k, 2 * dim -> dim, its first ``dim`` input columns acting on the
    hidden state; block: TRM_k, [batch, T - k, dim] -> same.
    -> h^k: [batch, T - k, dim]; position i (0-indexed) combines h^{k-1}_i with Emb(t_{i+k}), i.e. emb[:, i + k].
    """
    check_int("k (the MTP depth)", k)
    if emb.dim() != 3 or h_prev.dim() != 3 or emb.shape[2] != h_prev.shape[2] or emb.shape[0] != h_prev.shape[0]:
        raise ValueError(f"expected h_prev [batch, L, dim] and emb [batch, T, dim] with the same batch and dim, got "
                         f"h_prev {list(h_prev.shape)} and emb {list(emb.shape)}")
    T = emb.shape[1]
    if emb.shape[0] == 0:
        raise ValueError(f"the batch is empty: h_prev {list(h_prev.shape)}, emb {list(emb.shape)}")
    if not 1 <= k < T or h_prev.shape[1] < T - k:
        raise ValueError(f"depth k must satisfy 1 <= k < T = {T} and h_prev needs at least T - k positions; got k = "
                         f"{k}, h_prev {list(h_prev.shape)}, emb {list(emb.shape)}")
    h = norm_h(h_prev[:, :T - k])  # [batch, T - k, dim]: h^{k-1}_i, i = 1..T-k
    e = norm_e(emb[:, k:])  # [batch, T - k, dim]: Emb(t_{i+k})
    return block(proj(torch.cat([h, e], dim=-1)))  # [batch, T - k, 2 dim] -> [batch, T - k, dim]


class MTPModule(nn.Module):
    """One MTP depth ([V3] 2.2): RMSNorms of the previous depth's hidden state and of Emb(t_{i+k}), their
    concatenation projected by M_k (2 dim -> dim), one Transformer block TRM_k, and the output head.

    ``embed`` (nn.Embedding [vocab, dim]) and ``head`` (dim -> vocab) are the main model's and are shared, not
    owned: they are kept out of this module's parameters() and state_dict(), so that the main model counts and
    saves them once. The module owns norm_h, norm_e, proj (M_k), block (TRM_k) and norm_out, a final RMSNorm
    before the shared head (the released V3 weights have one per MTP module, ``shared_head.norm``).

    forward(h_prev [batch, L >= T - depth, dim], tokens [batch, T] int64, the inputs t_1..t_T)
        -> (h [batch, T - depth, dim], the input of the next depth; logits [batch, T - depth, vocab]),
        logits position j predicting t_{j + depth + 2}, i.e. tokens_with_next[:, j + depth + 1].
    ``step`` computes the same positions a few at a time with a KV cache (speculative decoding drafts with it).
    """

    def __init__(self, depth: int, embed: nn.Embedding, head: nn.Module, block: nn.Module) -> None:
        super().__init__()
        check_int("depth (k; 0 is the main model)", depth, 1)
        if not isinstance(embed, nn.Embedding):
            raise TypeError(f"embed must be the main model's nn.Embedding, got {type(embed).__name__}")
        dim = embed.embedding_dim
        self.depth, self.dim = depth, dim
        self.norm_h = RMSNorm(dim)
        self.norm_e = RMSNorm(dim)
        self.proj = nn.Linear(2 * dim, dim, bias=False)  # M_k: [h ; e] -> h'
        self.block = block  # TRM_k
        self.norm_out = RMSNorm(dim)
        self.shared = (embed, head)  # a tuple, so nn.Module does not register them as this module's submodules

    @property
    def embed(self) -> nn.Embedding:
        return self.shared[0]

    @property
    def head(self) -> nn.Module:
        return self.shared[1]

    def extra_repr(self) -> str:
        return f"depth={self.depth}, dim={self.dim}, shared: embed {tuple(self.embed.weight.shape)}, head"

    def forward(self, h_prev: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2:
            raise TypeError(f"tokens must be the int64 inputs [batch, T] (t_1 .. t_T), got {tokens!r:.80}")
        if not isinstance(h_prev, torch.Tensor) or not h_prev.is_floating_point():
            raise TypeError(f"h_prev must be a floating-point tensor [batch, L, {self.dim}], got {h_prev!r:.80}")
        h = mtp_forward(h_prev, self.embed(tokens), self.depth, self.norm_h, self.norm_e, self.proj, self.block)
        return h, self.head(self.norm_out(h))

    def step(self, h_prev: torch.Tensor, shifted_tokens: torch.Tensor, cache: KVCache,
             last_logits_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """This depth at L new positions i = s..s+L-1, s = cache.length (the positions already cached), as in
        ``forward`` but incremental (inference, under torch.no_grad()).

        h_prev: [batch, L, dim], the previous depth's h^{k-1}_i at those positions; shifted_tokens: int64
        [batch, L], the token t_{i+k} that position i reads (already shifted by the depth, unlike ``forward``);
        cache: the KV cache of this module's block (``ModelCache.mtp[depth - 1]``), which gets the L positions.
        -> (h^k [batch, L, dim]; logits [batch, 1, vocab] of the last position, or [batch, L, vocab] when
        last_logits_only is False), position i predicting t_{i+k+1}. Raises ValueError on mismatched shapes.
        """
        if shifted_tokens.dtype != torch.int64 or shifted_tokens.dim() != 2 or h_prev.dim() != 3 \
                or list(h_prev.shape) != [*shifted_tokens.shape, self.dim] or shifted_tokens.shape[1] == 0:
            raise ValueError(f"step expects h_prev [batch, L >= 1, {self.dim}] and int64 shifted_tokens [batch, L], "
                             f"got h_prev {list(h_prev.shape)} and shifted_tokens {list(shifted_tokens.shape)} "
                             f"{shifted_tokens.dtype}")
        joined = torch.cat([self.norm_h(h_prev), self.norm_e(self.embed(shifted_tokens))], dim=-1)  # [b, L, 2 dim]
        h = self.block(self.proj(joined), cache)  # [batch, L, dim]
        return h, self.head(self.norm_out(h[:, -1:] if last_logits_only else h))
