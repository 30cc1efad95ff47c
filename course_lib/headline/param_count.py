"""Counting the parameters of a DeepSeek-V3-style model: in total, and activated for one token.

``ModelSizes`` uses the field names of Hugging Face's ``DeepseekV3Config`` so a config can be compared
one-to-one (the tests count a tiny Hugging Face model's parameters and compare them with ``param_breakdown``).
Each layer has Multi-head Latent Attention (MLA, [V3] 2.1.1) and either a dense SwiGLU FFN (the first
``first_k_dense_replace`` layers) or a DeepSeekMoE layer ([V3] 2.1.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from course_lib.core.validation import boundary
from course_lib.headline import arguments


@dataclass(frozen=True)
class ModelSizes:
    """The sizes that determine a DeepSeek-V3-style model's parameter count (names as in DeepseekV3Config)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    first_k_dense_replace: int
    intermediate_size: int  # hidden size of the dense layers' FFN
    moe_intermediate_size: int  # hidden size of each expert
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int  # K_r: routed experts chosen per token
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        arguments.model_sizes(self)


# [V3] 4.2 and the released config.json of deepseek-ai/DeepSeek-V3.
DEEPSEEK_V3 = ModelSizes(
    vocab_size=129_280, hidden_size=7168, num_hidden_layers=61, first_k_dense_replace=3,
    intermediate_size=18_432, moe_intermediate_size=2048, n_routed_experts=256, n_shared_experts=1,
    num_experts_per_tok=8, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
)


@boundary(arguments.moe_ffn_params)
def moe_ffn_params(dim: int, expert_dim: int, n_routed: int, n_shared: int, top_k: int) -> tuple[int, int]:
    """Parameters of one DeepSeekMoE layer's FFN part: (total, activated for one token).

    Every expert is a SwiGLU FFN with three dim x expert_dim matrices; the router holds one centroid of
    size dim per routed expert and is used by every token. A token activates the shared experts, its
    top_k routed experts and the router. Raises TypeError for non-ints, ValueError for negative sizes
    (``arguments.moe_ffn_params``).
    """
    expert = 3 * dim * expert_dim
    router = n_routed * dim
    return (n_routed + n_shared) * expert + router, (top_k + n_shared) * expert + router


@boundary(arguments.attention_params)
def attention_params(s: ModelSizes) -> int:
    """Parameters of one MLA attention block, its two low-rank RMSNorms included."""
    qk_head_dim = s.qk_nope_head_dim + s.qk_rope_head_dim
    if s.q_lora_rank is None:
        query = s.hidden_size * s.num_attention_heads * qk_head_dim
    else:
        query = s.hidden_size * s.q_lora_rank + s.q_lora_rank + s.q_lora_rank * s.num_attention_heads * qk_head_dim
    key_value = (s.hidden_size * (s.kv_lora_rank + s.qk_rope_head_dim) + s.kv_lora_rank
                 + s.kv_lora_rank * s.num_attention_heads * (s.qk_nope_head_dim + s.v_head_dim))
    output = s.num_attention_heads * s.v_head_dim * s.hidden_size
    return query + key_value + output


@boundary(arguments.param_breakdown)
def param_breakdown(s: ModelSizes) -> dict[str, tuple[int, int]]:
    """Parameters by component: name -> (total, activated for one token).

    The embedding table is counted as activated, by the common convention, although a token reads only its
    own row of it.
    """
    n_moe = s.num_hidden_layers - s.first_k_dense_replace
    expert = 3 * s.hidden_size * s.moe_intermediate_size
    embedding = s.vocab_size * s.hidden_size
    head = 0 if s.tie_word_embeddings else embedding
    norms = 2 * s.hidden_size * s.num_hidden_layers + s.hidden_size
    attention = attention_params(s) * s.num_hidden_layers
    dense_ffn = 3 * s.hidden_size * s.intermediate_size * s.first_k_dense_replace
    router = s.n_routed_experts * s.hidden_size * n_moe
    shared = s.n_shared_experts * expert * n_moe
    routed_total = s.n_routed_experts * expert * n_moe
    routed_active = s.num_experts_per_tok * expert * n_moe
    return {
        "embedding": (embedding, embedding),
        "attention (MLA)": (attention, attention),
        "dense FFN layers": (dense_ffn, dense_ffn),
        "routers": (router, router),
        "shared experts": (shared, shared),
        "routed experts": (routed_total, routed_active),
        "norms": (norms, norms),
        "output head": (head, head),
    }


@boundary(arguments.count_params)
def count_params(s: ModelSizes) -> tuple[int, int]:
    """(total, activated for one token) parameters of the whole model."""
    parts = param_breakdown(s).values()
    return sum(total for total, _ in parts), sum(active for _, active in parts)
