"""Hugging Face transformers' DeepSeek-V3.2 attention (``DeepseekV32Attention``: MLA with its lightning indexer)
holding the weights of a course_lib ``DeepSeekSparseAttention``, offline (a random tiny config built here).

Layout differences, and how the mapping below handles them:
- MLA: transformers fuses q_b_proj = per head [W^UQ_i; W^QR_i], kv_a_proj_with_mqa = [W^DKV; W^KR], kv_b_proj = per
  head [W^UK_i; W^UV_i], and turns consecutive RoPE pairs as the course does (V3.2's MLA is always interleaved).
- The indexer: the same matrices (wq_b from c^Q, wk and k_norm, a LayerNorm with a bias, from h, weights_proj from
  h) and the same scales, (H^I)^-1/2 on the weights and (d^I)^-1/2 on the scores (the course folds both into w^I).
  RoPE turns the first d_h^R features of q^I and k^I, but transformers turns the pairs (j, j + d_h^R/2) where the
  course turns (2j, 2j+1): the rows of wq_b's and wk's rotated features, and k_norm's weight and bias there, are
  permuted (evens, then odds), which leaves every dot product, and so every score, as it is.
- Neither computes the released kernel's Hadamard rotation (orthogonal: it keeps the dot products) or FP8 scoring.
- transformers' indexer picks min(k, L) tokens per query, the future ones (score -inf) included for a query with
  fewer than k tokens behind it; its attention mask drops those again. The course selects only tokens it may see.

Needs transformers (the test extra); importing this module does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from course_lib.attention.dsa import DeepSeekSparseAttention


def halves_order(d: int) -> torch.Tensor:
    """Feature order that turns consecutive pairs (2j, 2j+1) into the pairs (j, j + d/2): evens, then odds."""
    return torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])


def hf_config(m: DeepSeekSparseAttention) -> Any:
    """A ``DeepseekV32Config`` of the sizes of ``m`` (transformers' names), eager attention."""
    from transformers import DeepseekV32Config

    config = DeepseekV32Config(
        hidden_size=m.dim, num_attention_heads=m.n_heads, num_key_value_heads=m.n_heads, q_lora_rank=m.q_lora_rank,
        kv_lora_rank=m.kv_lora_rank, qk_nope_head_dim=m.qk_nope_head_dim, qk_rope_head_dim=m.qk_rope_head_dim,
        v_head_dim=m.v_head_dim, index_topk=m.index_topk, index_n_heads=m.indexer.index_n_heads,
        index_head_dim=m.indexer.index_head_dim, attention_bias=False, rms_norm_eps=1e-6,
        max_position_embeddings=m.max_seq_len)
    config._attn_implementation = "eager"
    return config


def hf_dsa_like(m: DeepSeekSparseAttention) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformers' DeepseekV32Attention with the weights of ``m``, its rotary embedding)."""
    from transformers.models.deepseek_v32 import modeling_deepseek_v32 as modeling

    config = hf_config(m)
    hf = modeling.DeepseekV32Attention(config, layer_idx=0)
    H, Q, C, dh, dr, dv = m.n_heads, m.q_lora_rank, m.kv_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim
    index, HI, dI = m.indexer, m.indexer.index_n_heads, m.indexer.index_head_dim
    order = torch.cat([halves_order(dr), torch.arange(dr, dI)])  # rotated features de-interleaved, the rest kept
    with torch.no_grad():
        hf.q_a_proj.weight.copy_(m.w_dq.weight)
        hf.q_a_layernorm.weight.copy_(m.q_norm.weight)
        hf.q_b_proj.weight.copy_(torch.cat([m.w_uq.weight.view(H, dh, Q), m.w_qr.weight.view(H, dr, Q)], 1)
                                 .reshape(-1, Q))
        hf.kv_a_proj_with_mqa.weight.copy_(torch.cat([m.w_dkv.weight, m.w_kr.weight]))
        hf.kv_a_layernorm.weight.copy_(m.kv_norm.weight)
        hf.kv_b_proj.weight.copy_(torch.cat([m.w_uk.weight.view(H, dh, C), m.w_uv.weight.view(H, dv, C)], 1)
                                  .reshape(-1, C))
        hf.o_proj.weight.copy_(m.w_o.weight)
        hf.indexer.wq_b.weight.copy_(index.wq_b.weight.view(HI, dI, Q)[:, order].reshape(-1, Q))
        hf.indexer.wk.weight.copy_(index.wk.weight[order])
        hf.indexer.k_norm.weight.copy_(index.k_norm.weight[order])
        hf.indexer.k_norm.bias.copy_(index.k_norm.bias[order])
        hf.indexer.weights_proj.weight.copy_(index.weights_proj.weight)
    return hf, modeling.DeepseekV32RotaryEmbedding(config)


class TopkInputs(TorchFunctionMode):
    """Records the tensor every ``topk`` inside the block is called on (transformers' indexer keeps its scores
    to itself and returns only the indices)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in (torch.Tensor.topk, torch.topk):
            self.seen.append(args[0].detach().clone())
        return func(*args, **(kwargs or {}))


def hf_dsa_forward(hf: torch.nn.Module, rotary: torch.nn.Module, x: torch.Tensor, start: int = 0,
                   cache: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, T, dim], index scores [B, T, start + T]) of transformers' layer for x [B, T, dim] at positions
    start..start+T-1, with an additive causal mask."""
    B, T, _ = x.shape
    positions = torch.arange(start, start + T)[None].expand(B, T)
    mask = torch.full((T, start + T), float("-inf")).triu(start + 1)[None, None].expand(B, 1, T, start + T)
    with TopkInputs() as seen:
        out, _ = hf(x, rotary(x, positions), mask, cache=cache)
    return out, seen.seen[0]
