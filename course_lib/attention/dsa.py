"""DeepSeek Sparse Attention (DSA, DeepSeek-V3.2, [V32] 2.1): MLA whose queries attend only to the index_topk
tokens its lightning indexer (``attention.indexer``) scores highest, core attention O(L^2) -> O(L k).

``DeepSeekSparseAttention`` IS the course's ``MultiHeadLatentAttention`` (same weights, same projections, same
naive/absorbed forms: V3.2 runs DSA on MLA's absorbed, MQA form, one latent key-value shared by all heads) plus an
indexer; the selection reaches MLA's attention as a token mask (``mha.causal_attention``'s ``mask``). Decoding one
token gathers the k selected latents from the cache and attends over them only, which is where the O(k) cost is.
Its cache holds MLA's c^KV and k^R and the indexer's key k^I: d_c + d_h^R + d^I elements per token per layer.

``mode`` picks what the queries attend to: "sparse" (the indexer's top-k: DSA), "dense" (every causal token: the
dense warm-up, [V32] 2.1.1) or "window" (the index_topk most recent tokens, the fixed pattern DSA is compared
with). With ``track`` on, each forward also keeps, for the indexer's training (``training.sparse_attention``),
the main attention p_t (summed over heads, L1-normalised over the keys the queries attended to) as
``attention_mass``, the index scores as ``scores``, and their KL loss as ``index_loss``. The indexer always reads
its input detached: it learns from its KL loss only, and the model from the language-model loss only ([V32]
2.1.1); the top-k selection passes no gradient.
"""

from __future__ import annotations

import torch

from course_lib.attention import arguments
from course_lib.attention.cache import KVCache
from course_lib.attention.indexer import (LightningIndexer, causal_allowed, index_kl_loss, index_scores,
                                          top_k_selection, window_selection)
from course_lib.attention.mla import MultiHeadLatentAttention
from course_lib.attention.yarn import YarnScaling
from course_lib.core.validation import boundary

MODES = ("sparse", "dense", "window")


class DeepSeekSparseAttention(MultiHeadLatentAttention):
    """MLA ([V3] 2.1.1, ``attention.mla``) with DeepSeek-V3.2's lightning indexer and top-k selection ([V32] 2.1).

    Sizes as MultiHeadLatentAttention (q_lora_rank >= 1: the indexer reads the query latent c^Q), plus
    index_n_heads H^I, index_head_dim d^I and index_topk k (V3.2: 64, 128, 2048). forward(x [B, T, dim],
    cache=None) -> [B, T, dim], as MLA's; with index_topk >= the context, "sparse" equals dense attention.
    ``from_mla`` adds an indexer to a trained MLA layer, as V3.2 was continued from V3.1-Terminus.
    Raises TypeError / ValueError as MultiHeadLatentAttention, and ValueError for an index_topk < 1, a
    q_lora_rank of 0 or an indexer head that does not hold the d_h^R RoPE features; forward raises as MLA's and
    for a cache of another model (``arguments.sparse_attention_forward``).
    """

    kind = "dsa"

    def __init__(self, dim: int, n_heads: int, q_lora_rank: int, kv_lora_rank: int, qk_nope_head_dim: int,
                 qk_rope_head_dim: int, v_head_dim: int, index_n_heads: int, index_head_dim: int, index_topk: int,
                 max_seq_len: int = 256, rope_base: float = 10000.0, absorb: bool = True,
                 yarn: YarnScaling | None = None) -> None:
        arguments.deepseek_sparse_attention(dim, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim,
                                            qk_rope_head_dim, v_head_dim, index_n_heads, index_head_dim, index_topk,
                                            max_seq_len, rope_base, yarn)
        super().__init__(dim, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim,
                         max_seq_len, rope_base, absorb, yarn)
        self.index_topk, self.mode, self.track = index_topk, "sparse", False
        self.indexer = LightningIndexer(dim, q_lora_rank, index_n_heads, index_head_dim, qk_rope_head_dim)
        self.attention_mass: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.index_loss: torch.Tensor | None = None

    @classmethod
    def from_mla(cls, mla: MultiHeadLatentAttention, index_n_heads: int, index_head_dim: int,
                 index_topk: int) -> DeepSeekSparseAttention:
        """A DSA layer holding the weights of ``mla`` (shared, not copied) and a new, untrained indexer, on its
        device and dtype. Raises as the constructor, TypeError for an ``mla`` that is not MLA."""
        arguments.dsa_from_mla(mla)
        dsa = cls(mla.dim, mla.n_heads, mla.q_lora_rank, mla.kv_lora_rank, mla.qk_nope_head_dim,
                  mla.qk_rope_head_dim, mla.v_head_dim, index_n_heads, index_head_dim, index_topk, mla.max_seq_len,
                  absorb=mla.absorb, yarn=mla.yarn)
        weight = mla.w_dkv.weight
        dsa.to(device=weight.device, dtype=weight.dtype)
        for name, module in mla.named_children():
            setattr(dsa, name, module)
        dsa.cos, dsa.sin = mla.cos, mla.sin  # the same RoPE angles (and YaRN's, where set)
        return dsa

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, index_topk={self.index_topk}, mode={self.mode!r}"

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty cache for this layer: MLA's c^KV and k^R and the indexer's key k^I ("k_index" [B, L, d^I])."""
        weight = self.w_dkv.weight
        return KVCache(self.kind, {"c_kv": (self.kv_lora_rank,), "k_rope": (self.qk_rope_head_dim,),
                                   "k_index": (self.indexer.index_head_dim,)},
                       batch_size, self.max_seq_len, weight.dtype, weight.device)

    @boundary(arguments.sparse_attention_forward)
    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        start = 0 if cache is None else cache.length
        c_q = self.q_norm(self.w_dq(x))  # c^Q [B, T, d_c'], read by the queries and the indexer
        q_nope, q_rope, c_kv, k_rope = self.project(x, start, c_q)
        q_index, k_index, w_index = self.indexer.project(x.detach(), c_q.detach(), self.cos[start:], self.sin[start:])
        if cache is not None:
            c_kv, k_rope, k_index = cache.append(c_kv=c_kv, k_rope=k_rope, k_index=k_index)
        L = start + T
        scores = index_scores(q_index, k_index, w_index, start)  # I [B, T, L], -inf at the future
        attend = self.attend_absorbed if self.absorb else self.attend_naive
        if self.mode == "sparse" and T == 1 and not self.track and self.index_topk < L:  # decode: gather k latents
            chosen = scores.topk(self.index_topk, dim=-1).indices[:, 0]  # [B, k], every one at a position <= start
            c_sel = c_kv.gather(1, chosen[..., None].expand(B, self.index_topk, self.kv_lora_rank))
            k_sel = k_rope.gather(1, chosen[..., None].expand(B, self.index_topk, self.qk_rope_head_dim))
            o = attend(q_nope, q_rope, c_sel, k_sel, self.index_topk - 1)  # the one query sees all k
        else:
            selected = self.selection(scores, start)  # bool [B, T, L] (causal) or None for dense
            o = attend(q_nope, q_rope, c_kv, k_rope, start, selected)
            if self.track:
                allowed = causal_allowed(T, L, start, x.device)[None] if selected is None else selected
                with torch.no_grad():
                    self.attention_mass = self.attention_distribution(q_nope, q_rope, c_kv, k_rope, allowed)
                self.scores = scores.detach()
                self.index_loss = index_kl_loss(self.attention_mass, scores, allowed)
        return self.w_o(o.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim))

    def selection(self, scores: torch.Tensor, start: int) -> torch.Tensor | None:
        """The keys each query attends to in this ``mode``: bool [B, T, L] (None: every causal key)."""
        B, T, L = scores.shape
        if self.mode == "dense":
            return None
        if self.mode == "window":
            return window_selection(T, L, self.index_topk, scores.device).expand(B, T, L)
        return top_k_selection(scores, self.index_topk)

    def attention_distribution(self, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor,
                               k_rope: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """p_t of [V32] 2.1.1: the attention probabilities of eq. 10 over the ``allowed`` keys (bool [B or 1, T,
        L]), summed over the heads and L1-normalised (so the mean over heads) -> [B, T, L] in float32. In the
        absorbed form: q^C_i . k^C_{j,i} = ((W^UK_i)^T q^C_i) . c^KV_j."""
        w_uk = self.w_uk.weight.view(self.n_heads, self.qk_nope_head_dim, self.kv_lora_rank)
        q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)
        logits = (torch.einsum("bhtc,blc->bhtl", q_latent, c_kv)
                  + torch.einsum("bhtr,blr->bhtl", q_rope, k_rope)) * self.scale  # [B, H, T, L]
        return logits.float().masked_fill(~allowed[:, None], float("-inf")).softmax(-1).mean(1)
