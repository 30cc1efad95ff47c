"""DeepSeek Sparse Attention's lightning indexer ([V32] 2.1): a cheap score I_{t,s} of every preceding token s for
each query t, the top-k tokens it selects, and the KL loss that trains it against the main attention ([V32] 2.1.1).

    I_{t,s} = sum_{j=1..H^I} w^I_{t,j} ReLU(q^I_{t,j} . k^I_s)          ([V32] eq. 1)

q^I_{t,j} (H^I heads of d^I) and w^I_{t,j} come from the query token, k^I_s is ONE key per token shared by the
indexer's heads (cached, d^I elements per token); ReLU rather than softmax, for throughput. Query t then attends
only to the index_topk tokens s <= t of highest I_{t,s} (V3.2: k = 2048, H^I = 64, d^I = 128).

Layout, as the released inference/model.py (class Indexer) and Hugging Face's DeepseekV32Indexer: q^I = W^IQ c^Q
from MLA's query latent c^Q (``wq_b``), k^I = LayerNorm(W^IK h) (``wk``, ``k_norm``, a LayerNorm with a bias, eps
1e-6), w^I = W^w h (``weights_proj``) scaled by (H^I)^-1/2 (d^I)^-1/2; RoPE turns the FIRST d_h^R features of
q^I and k^I (the rest carries no position), with MLA's angles. What the course leaves out, and why: the released
kernel rotates q^I and k^I by a Hadamard matrix and scores them in FP8; the rotation is orthogonal (it keeps every
dot product) and FP8 is a precision choice (notebook 10), so the course scores in the model's float dtype, as
Hugging Face does. RoPE turns consecutive feature pairs here (as the course's MLA and the released code's
``apply_rotary_emb``); Hugging Face's indexer turns the two halves: the same scores once the rotated features are
permuted (tests/hf_reference_v32.py does it).
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.attention import arguments
from course_lib.attention.rope import apply_rope
from course_lib.core.validation import boundary


def causal_allowed(T: int, L: int, start: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool [T, L]: True where query i (at position start + i) may see key j (j <= start + i)."""
    return torch.arange(T, device=device)[:, None] + start >= torch.arange(L, device=device)[None, :]


@boundary(arguments.index_scores)
def index_scores(q_index: torch.Tensor, k_index: torch.Tensor, weights: torch.Tensor, start: int = 0) -> torch.Tensor:
    """[V32] eq. 1 for T queries at positions start..start+T-1 against L = start + T keys.

    q_index [B, T, H^I, d^I], k_index [B, L, d^I], weights [B, T, H^I] (w^I, its scales included) ->
    I [B, T, L] in float32, -inf at the future keys (j > start + i), which no query may select.
    Raises ValueError for shapes that do not fit.
    """
    T, L = q_index.shape[1], k_index.shape[1]
    dots = torch.einsum("bthd,bld->bthl", q_index.float(), k_index.float())  # q^I_{t,j} . k^I_s
    scores = torch.einsum("bth,bthl->btl", weights.float(), dots.relu())  # sum_j w_{t,j} ReLU(...)
    return scores.masked_fill(~causal_allowed(T, L, start, scores.device), float("-inf"))


@boundary(arguments.top_k_selection)
def top_k_selection(scores: torch.Tensor, index_topk: int) -> torch.Tensor:
    """bool [B, T, L]: True at the index_topk tokens of highest score of each query (each row of scores
    [B, T, L]), among the tokens it may see (finite scores): all of them when fewer. Ties go as torch.topk puts
    them. Raises ValueError for an index_topk < 1 (TypeError if not an int)."""
    k = min(index_topk, scores.shape[-1])
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, scores.topk(k, dim=-1).indices, True)
    return chosen & torch.isfinite(scores)


@boundary(arguments.window_selection)
def window_selection(T: int, L: int, window: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool [T, L]: the sliding window of the same budget, the fixed pattern DSA is compared with: query i (at
    position L - T + i) sees the ``window`` most recent positions up to itself. Raises ValueError for sizes < 1."""
    positions = torch.arange(T, device=device)[:, None] + L - T
    keys = torch.arange(L, device=device)[None, :]
    return (keys <= positions) & (keys > positions - window)


@boundary(arguments.index_kl_loss)
def index_kl_loss(attention: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The indexer's loss ([V32] 2.1.1): KL(p_t || softmax(I_t)) over the keys ``allowed`` to each query, the mean
    over the B x T queries ([V32] sums over t; the mean only rescales the learning rate).

    attention [B, T, L]: p_t, the main attention summed over its heads and L1-normalised over the allowed keys
    (the target: give it detached); scores [B, T, L]: I_t; allowed bool [B, T, L] or [T, L]: every causal key in
    the dense warm-up, the selected ones in sparse training ([V32]: "only the selected token set"). -> a scalar.
    Raises ValueError for shapes that do not fit.
    """
    allowed = allowed.expand_as(scores)
    log_q = scores.masked_fill(~allowed, float("-inf")).log_softmax(-1).masked_fill(~allowed, 0.0)
    return (torch.xlogy(attention, attention) - attention * log_q).sum(-1).mean()


class LightningIndexer(nn.Module):
    """The lightning indexer of one attention layer ([V32] 2.1), parameters named as the released code's.

    project(x [B, T, dim], c_q [B, T, q_lora_rank], cos, sin) -> (q^I [B, T, H^I, d^I], k^I [B, T, d^I],
    w^I [B, T, H^I]), with cos, sin the RoPE angles of positions start.. (``rope.rope_angles`` rows, MLA's own);
    ``index_scores`` turns them into I. Sizes: index_n_heads H^I, index_head_dim d^I (even, >= qk_rope_head_dim,
    the features RoPE turns). V3.2: H^I = 64, d^I = 128, d_h^R = 64, over c^Q of 1536 and h of 7168.
    Raises TypeError for a size that is not an int, ValueError for a size < 1 or an indexer head that does not
    hold the RoPE features.
    """

    def __init__(self, dim: int, q_lora_rank: int, index_n_heads: int, index_head_dim: int,
                 qk_rope_head_dim: int) -> None:
        super().__init__()
        arguments.lightning_indexer(dim, q_lora_rank, index_n_heads, index_head_dim, qk_rope_head_dim)
        self.index_n_heads, self.index_head_dim, self.qk_rope_head_dim = index_n_heads, index_head_dim, qk_rope_head_dim
        self.wq_b = nn.Linear(q_lora_rank, index_n_heads * index_head_dim, bias=False)  # W^IQ, from c^Q
        self.wk = nn.Linear(dim, index_head_dim, bias=False)  # W^IK, from h
        self.k_norm = nn.LayerNorm(index_head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(dim, index_n_heads, bias=False)  # w^I, from h
        self.weight_scale = (index_n_heads * index_head_dim) ** -0.5  # the released (H^I)^-1/2 and softmax_scale

    def extra_repr(self) -> str:
        return (f"index_n_heads={self.index_n_heads}, index_head_dim={self.index_head_dim}, "
                f"qk_rope_head_dim={self.qk_rope_head_dim}")

    def project(self, x: torch.Tensor, c_q: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        dr = self.qk_rope_head_dim
        q = self.wq_b(c_q).view(B, T, self.index_n_heads, self.index_head_dim)
        q = torch.cat([apply_rope(q[..., :dr].transpose(1, 2), cos, sin).transpose(1, 2), q[..., dr:]], dim=-1)
        k = self.k_norm(self.wk(x))  # [B, T, d^I]
        k = torch.cat([apply_rope(k[..., :dr], cos, sin), k[..., dr:]], dim=-1)
        return q, k, self.weights_proj(x) * self.weight_scale
