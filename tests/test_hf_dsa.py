"""Cross-check attention.dsa.DeepSeekSparseAttention against Hugging Face transformers' DeepseekV32Attention on the
same weights (offline: a random tiny DeepseekV32Config): the index scores, the selected tokens and the attention
output, with and without a cache. The layout differences and their mapping: tests/hf_reference_v32.py."""

import pytest
import torch

pytest.importorskip("transformers.models.deepseek_v32")

from course_lib.attention.dsa import DeepSeekSparseAttention  # noqa: E402
from course_lib.attention.indexer import top_k_selection  # noqa: E402
from hf_reference_v32 import hf_dsa_forward, hf_dsa_like  # noqa: E402

import transformers  # noqa: E402

SIZES = dict(dim=32, n_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=10,
             index_n_heads=8, index_head_dim=10)


def ours(index_topk: int, seed: int = 0) -> DeepSeekSparseAttention:
    torch.manual_seed(seed)
    m = DeepSeekSparseAttention(**SIZES, index_topk=index_topk, max_seq_len=64)
    with torch.no_grad():  # norms away from 1 and 0, so that a weight mapped to the wrong feature shows
        m.q_norm.weight.uniform_(0.5, 1.5)
        m.kv_norm.weight.uniform_(0.5, 1.5)
        m.indexer.k_norm.weight.uniform_(0.5, 1.5)
        m.indexer.k_norm.bias.uniform_(-0.5, 0.5)
    return m.eval()


def our_forward(m: DeepSeekSparseAttention, x: torch.Tensor, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    m.track = True
    out = m(x, cache)
    m.track = False
    return out, m.scores


@pytest.mark.parametrize("index_topk", [5, 64])
def test_dsa_agrees_with_transformers(index_topk):
    m = ours(index_topk)
    hf, rotary = hf_dsa_like(m)
    x = torch.randn(2, 16, SIZES["dim"])
    with torch.no_grad():
        out, scores = our_forward(m, x)
        hf_out, hf_scores = hf_dsa_forward(hf, rotary, x)
    # the index scores, -inf at the same (future) places
    assert torch.equal(torch.isinf(scores), torch.isinf(hf_scores))
    finite = torch.isfinite(scores)
    torch.testing.assert_close(scores[finite], hf_scores[finite], rtol=1e-5, atol=1e-6)
    # the same tokens selected (transformers' extra picks for short rows are future tokens: -inf)
    hf_chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(
        -1, hf_scores.topk(min(index_topk, 16), dim=-1).indices, True) & finite
    assert torch.equal(top_k_selection(scores, index_topk), hf_chosen)
    torch.testing.assert_close(out, hf_out, rtol=1e-5, atol=1e-5)


def test_decoding_with_the_cache_agrees_with_transformers_and_its_cache():
    m = ours(4, seed=1)
    hf, rotary = hf_dsa_like(m)
    x = torch.randn(1, 12, SIZES["dim"])
    cache, hf_cache = m.new_cache(1), transformers.DynamicCache(config=hf.config)
    with torch.no_grad():
        for start, stop in [(0, 6)] + [(t, t + 1) for t in range(6, 12)]:
            out = m(x[:, start:stop], cache)
            hf_out, _ = hf_dsa_forward(hf, rotary, x[:, start:stop], start, hf_cache)
            torch.testing.assert_close(out, hf_out, rtol=1e-5, atol=1e-5)
