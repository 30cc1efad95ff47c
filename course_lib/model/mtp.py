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
from course_lib.core.validation import boundary, check_int
from course_lib.model import arguments


@boundary(arguments.mtp_depth_loss)
def mtp_depth_loss(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """The loss of MTP depth k ([V3] eq. 24): -(1/T) * sum of the log-probabilities of the targets, averaged over
    the batch. k = 0 gives the main model's next-token loss.

    logits: float [batch, T - k, vocab], position j predicting tokens[:, j + k + 1];
    tokens: int64 [batch, T + 1] (t_1 .. t_{T+1}); k: int, 0 <= k < T -> scalar tensor (float32 or wider).

    The sum has T - k terms but is divided by T, as in the report (not a mean over the T - k positions).
    Computed with log_softmax, so huge logits give finite losses.
    """
    T = tokens.shape[1] - 1
    targets = tokens[:, k + 1:]  # [batch, T - k]: t_{k+2} .. t_{T+1}
    log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # [b, T-k, vocab]
    target_log_probs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [batch, T - k]
    return -(target_log_probs.sum(dim=1) / T).mean()


@boundary(arguments.mtp_loss)
def mtp_loss(depth_logits: Sequence[torch.Tensor], tokens: torch.Tensor, lam: float) -> torch.Tensor:
    """The total MTP loss ([V3] eq. 25): (lam / D) * sum over k = 1..D of mtp_depth_loss(depth_logits[k-1], tokens, k).

    depth_logits: D >= 1 tensors, depth_logits[k-1] of shape [batch, T - k, vocab]; tokens: int64 [batch, T + 1];
    lam: the weight lambda (V3: 0.3, later 0.1) -> scalar tensor. The training loss is main loss + this.
    """
    return lam / len(depth_logits) * sum(mtp_depth_loss(logits, tokens, k)
                                         for k, logits in enumerate(depth_logits, start=1))


@boundary(arguments.mtp_forward)
def mtp_forward(h_prev: torch.Tensor, emb: torch.Tensor, k: int, norm_h: nn.Module, norm_e: nn.Module,
                proj: nn.Module, block: nn.Module, cache: KVCache | None = None) -> torch.Tensor:
    """The hidden states of MTP depth k ([V3] eq. 21-22), before the output head.

    h_prev: [batch, L, dim], the previous depth's hidden states h^{k-1} at positions 1..L, L >= T - k (depth 1
        reads the main model's h^0, L = T; depth k reads depth k-1's output, L = T - k + 1);
    emb: [batch, T, dim], the shared embedding of the inputs t_1..t_T; k: the depth, 1 <= k < T;
    norm_h, norm_e: RMSNorm(dim); proj: M_k, 2 * dim -> dim, its first ``dim`` input columns acting on the
    hidden state; block: TRM_k, [batch, T - k, dim] -> same.
    cache: None, or (incremental decoding) TRM_k's KV cache holding s positions: then h_prev and emb start at
        position s (h^{k-1}_s.., Emb(t_{s+1})..) and the T - k new positions are appended to it.
    -> h^k: [batch, T - k, dim]; position i (0-indexed) combines h^{k-1}_i with Emb(t_{i+k}), i.e. emb[:, i + k].
    Raises TypeError / ValueError (``arguments.mtp_forward``) for k or shapes that do not fit.
    """
    T = emb.shape[1]
    h = norm_h(h_prev[:, :T - k])  # [batch, T - k, dim]: h^{k-1}_i, i = 1..T-k
    e = norm_e(emb[:, k:])  # [batch, T - k, dim]: Emb(t_{i+k})
    x = proj(torch.cat([h, e], dim=-1))  # [batch, T - k, 2 dim] -> [batch, T - k, dim]
    return block(x) if cache is None else block(x, cache)


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
    With ``cache`` (TRM_k's KV cache holding s positions; speculative decoding drafts so), h_prev and tokens
    start at position s: h^{k-1}_s.. and t_{s+1}..t_{s+T}, and the T - depth new positions are appended to it.
    Raises TypeError / ValueError (``arguments.mtp_module``) for inputs that do not fit.
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

    @boundary(arguments.mtp_module)
    def forward(self, h_prev: torch.Tensor, tokens: torch.Tensor,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = mtp_forward(h_prev, self.embed(tokens), self.depth, self.norm_h, self.norm_e, self.proj, self.block, cache)
        return h, self.head(self.norm_out(h))
