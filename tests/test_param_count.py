"""Parameter counts (course_lib.headline.param_count) against real modules: a tiny Hugging Face DeepSeek-V3 model,
parameter by parameter, and a plain MoE layer built from nn.Linear."""

import pytest
import torch
from torch import nn

from course_lib.headline.param_count import DEEPSEEK_V3, ModelSizes, count_params, moe_ffn_params, param_breakdown

TINY = ModelSizes(vocab_size=97, hidden_size=32, num_hidden_layers=4, first_k_dense_replace=1,
                  intermediate_size=48, moe_intermediate_size=16, n_routed_experts=8, n_shared_experts=2,
                  num_experts_per_tok=3, num_attention_heads=4, q_lora_rank=24, kv_lora_rank=12,
                  qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)


def test_v3_totals_match_the_report():
    total, active = count_params(DEEPSEEK_V3)
    assert round(total / 1e9) == 671
    assert 36.5e9 < active < 37.6e9  # 37.6B with the embedding table counted, 36.6B without


def test_moe_ffn_params_matches_counting_nn_linear_weights():
    dim, hidden, n_routed, n_shared, top_k = 12, 20, 6, 2, 2

    def expert() -> nn.Module:
        return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False),
                             nn.Linear(hidden, dim, bias=False))

    routed = [expert() for _ in range(n_routed)]
    shared = [expert() for _ in range(n_shared)]
    router = nn.Linear(dim, n_routed, bias=False)
    numel = lambda modules: sum(p.numel() for m in modules for p in m.parameters())  # noqa: E731
    total = numel(routed + shared + [router])
    active = numel(routed[:top_k] + shared + [router])
    assert moe_ffn_params(dim, hidden, n_routed, n_shared, top_k) == (total, active)


def test_moe_ffn_params_rejects_top_k_above_experts():
    with pytest.raises(ValueError, match="top_k"):
        moe_ffn_params(8, 8, 4, 1, 5)


@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_breakdown_matches_hugging_face_deepseek_v3(q_lora_rank):
    transformers = pytest.importorskip("transformers")
    sizes = ModelSizes(**{**TINY.__dict__, "q_lora_rank": q_lora_rank})
    config = transformers.DeepseekV3Config(
        vocab_size=sizes.vocab_size, hidden_size=sizes.hidden_size, num_hidden_layers=sizes.num_hidden_layers,
        first_k_dense_replace=sizes.first_k_dense_replace, intermediate_size=sizes.intermediate_size,
        moe_intermediate_size=sizes.moe_intermediate_size, n_routed_experts=sizes.n_routed_experts,
        n_shared_experts=sizes.n_shared_experts, num_experts_per_tok=sizes.num_experts_per_tok,
        num_attention_heads=sizes.num_attention_heads, num_key_value_heads=sizes.num_attention_heads,
        q_lora_rank=q_lora_rank, kv_lora_rank=sizes.kv_lora_rank, qk_nope_head_dim=sizes.qk_nope_head_dim,
        qk_rope_head_dim=sizes.qk_rope_head_dim, v_head_dim=sizes.v_head_dim, n_group=1, topk_group=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config)
    hf_total = sum(p.numel() for p in model.parameters())
    total, _ = count_params(sizes)
    assert total == hf_total
    parts = param_breakdown(sizes)
    hf_attention = sum(p.numel() for layer in model.model.layers for p in layer.self_attn.parameters())
    assert parts["attention (MLA)"][0] == hf_attention


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        ModelSizes(**{**TINY.__dict__, "num_experts_per_tok": 9})
    with pytest.raises(ValueError, match="hidden_size"):
        ModelSizes(**{**TINY.__dict__, "hidden_size": -1})
