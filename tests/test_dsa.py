"""DeepSeek Sparse Attention (attention.indexer, attention.dsa, training.sparse_attention): the indexer against a
slow loop of [V32] eq. 1, sparse equals dense when k covers the context, cached decoding equals the full forward,
the selection is causal and of size k, and the two training stages move only what they should."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from course_lib.attention.dsa import DeepSeekSparseAttention
from course_lib.attention.indexer import (index_kl_loss, index_scores, top_k_selection, window_selection)
from course_lib.attention.mla import MultiHeadLatentAttention
from course_lib.training import sparse_attention
from tiny_models import tiny_model

SIZES = dict(dim=32, n_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=6,
             v_head_dim=10)
INDEX = dict(index_n_heads=8, index_head_dim=10)


def dsa(index_topk: int, seed: int = 0, **changes) -> DeepSeekSparseAttention:
    torch.manual_seed(seed)
    return DeepSeekSparseAttention(**{**SIZES, **INDEX, **changes}, index_topk=index_topk, max_seq_len=64)


def no_tie_at_boundary(scores: torch.Tensor, k: int) -> bool:
    """True when no query's k-th and (k+1)-th highest finite scores are equal (the top-k is then unique)."""
    top = scores.topk(min(k + 1, scores.shape[-1]), dim=-1).values
    if top.shape[-1] <= k:
        return True
    kth, next_ = top[..., k - 1], top[..., k]
    return bool(((kth - next_).abs() > 1e-4).logical_or(torch.isinf(next_)).all())


def slow_index_scores(q, k, w, start):
    B, T, H, _ = q.shape
    out = torch.full((B, T, k.shape[1]), float("-inf"))
    for b in range(B):
        for t in range(T):
            for s in range(start + t + 1):
                out[b, t, s] = sum(float(w[b, t, j]) * max(float(q[b, t, j] @ k[b, s]), 0.0) for j in range(H))
    return out


@pytest.mark.parametrize("start", [0, 3])
def test_index_scores_match_a_slow_loop(start):
    torch.manual_seed(0)
    q, k, w = torch.randn(2, 4, 3, 5), torch.randn(2, start + 4, 5), torch.randn(2, 4, 3)
    torch.testing.assert_close(index_scores(q, k, w, start), slow_index_scores(q, k, w, start))


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 12), k=st.integers(1, 15), seed=st.integers(0, 1000))
def test_top_k_selection_is_causal_and_of_size_min_k_t(T, k, seed):
    torch.manual_seed(seed)
    scores = index_scores(torch.randn(1, T, 2, 4), torch.randn(1, T, 4), torch.randn(1, T, 2))
    chosen = top_k_selection(scores, k)
    assert not (chosen & torch.ones(T, T, dtype=torch.bool).triu(1)).any()  # never a future token
    assert chosen.sum(-1).tolist() == [[min(k, t + 1) for t in range(T)]]
    kept = scores.masked_fill(~chosen, float("inf")).amin(-1)  # lowest selected score of each query
    dropped = scores.masked_fill(chosen, float("-inf")).amax(-1)  # highest score left out
    assert (kept >= dropped).all()


def test_window_selection_keeps_the_most_recent_tokens():
    assert window_selection(3, 5, 2).tolist() == [[False, True, True, False, False],
                                                  [False, False, True, True, False],
                                                  [False, False, False, True, True]]


def test_index_kl_loss_is_zero_when_the_indexer_matches_and_positive_otherwise():
    torch.manual_seed(0)
    scores = torch.randn(2, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    p = scores.softmax(-1)
    assert index_kl_loss(p, scores, allowed).item() == pytest.approx(0.0, abs=1e-6)
    uniform = allowed.float() / allowed.sum(-1, keepdim=True)
    expected = sum(float((uniform[t, :t + 1] * (uniform[t, :t + 1].log() - scores[b, t, :t + 1].log_softmax(-1)))
                         .sum()) for b in range(2) for t in range(5)) / 10
    assert index_kl_loss(uniform.expand(2, 5, 5), scores, allowed).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("absorb", [True, False])
def test_sparse_equals_dense_mla_when_k_covers_the_context(absorb):
    m = dsa(index_topk=20, absorb=absorb)
    mla = MultiHeadLatentAttention(**SIZES, max_seq_len=64, absorb=absorb)
    mla.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("indexer.")})
    x = torch.randn(2, 20, SIZES["dim"])
    with torch.no_grad():
        torch.testing.assert_close(m(x), mla(x), rtol=1e-6, atol=1e-6)
        m.mode = "dense"
        torch.testing.assert_close(m(x), mla(x), rtol=1e-6, atol=1e-6)


def test_sparse_differs_from_dense_when_k_is_smaller():
    m = dsa(index_topk=3)
    x = torch.randn(1, 20, SIZES["dim"])
    with torch.no_grad():
        sparse = m(x)
        m.mode = "dense"
        dense = m(x)
    torch.testing.assert_close(sparse[:, :3], dense[:, :3])  # the first 3 queries see at most 3 tokens
    assert (sparse[:, 3:] - dense[:, 3:]).abs().max() > 1e-3


@pytest.mark.parametrize("absorb", [True, False])
@pytest.mark.parametrize("index_topk", [4, 64])
def test_cached_decoding_equals_the_full_forward(absorb, index_topk):
    m = dsa(index_topk, seed=1, absorb=absorb)
    x = torch.randn(2, 18, SIZES["dim"])
    with torch.no_grad():
        m.track = True
        full = m(x)
        assert no_tie_at_boundary(m.scores, index_topk)  # else the top-k, and so the output, is not unique
        m.track = False
        cache = m.new_cache(2)
        pieces = [m(x[:, :6], cache), m(x[:, 6:9], cache)] + [m(x[:, t:t + 1], cache) for t in range(9, 18)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 18 and cache["k_index"].shape == (2, 18, INDEX["index_head_dim"])


def test_the_cache_per_token_is_mla_plus_the_indexer_key():
    m = dsa(4)
    cache = m.new_cache(1)
    per_token = SIZES["kv_lora_rank"] + SIZES["qk_rope_head_dim"] + INDEX["index_head_dim"]
    assert cache.bytes_per_token == per_token * 4


def test_from_mla_shares_the_weights_and_the_mla_output():
    torch.manual_seed(0)
    mla = MultiHeadLatentAttention(**SIZES, max_seq_len=64)
    m = DeepSeekSparseAttention.from_mla(mla, index_topk=64, **INDEX)
    assert m.w_uk.weight is mla.w_uk.weight
    x = torch.randn(1, 9, SIZES["dim"])
    with torch.no_grad():
        torch.testing.assert_close(m(x), mla(x), rtol=1e-6, atol=1e-6)


def test_the_indexer_learns_only_from_its_loss_and_the_model_only_from_its_own():
    m = dsa(4)
    m.track = True
    x = torch.randn(1, 12, SIZES["dim"], requires_grad=True)
    m(x).sum().backward()
    assert all(p.grad is None for p in m.indexer.parameters())  # the top-k passes no gradient
    m.zero_grad()
    x.grad = None
    m(x)
    m.index_loss.backward()
    assert x.grad is None  # the indexer's input is detached
    assert all(p.grad is None for name, p in m.named_parameters() if not name.startswith("indexer."))
    assert all(p.grad is not None for p in m.indexer.parameters())


def test_attention_mass_is_the_head_mean_of_the_softmax():
    m = dsa(5, absorb=False)
    m.track = True
    x = torch.randn(1, 8, SIZES["dim"])
    with torch.no_grad():
        m(x)
        p = m.attention_mass
    assert torch.allclose(p.sum(-1), torch.ones(1, 8))
    assert ((p > 0).sum(-1) <= 5).all()  # sparse: the mass sits on the selected tokens only


def tiny_sparse_model():
    model = tiny_model(attention="mla", mtp_depth=0)
    return sparse_attention.sparsify(model, index_n_heads=2, index_head_dim=16, index_topk=4)


def test_sparsify_turns_every_mla_layer_and_keeps_the_output_when_k_covers_the_context():
    model = tiny_model(attention="mla", mtp_depth=0)
    tokens = torch.randint(0, 96, (2, 10))
    with torch.no_grad():
        before = model(tokens)
        sparse_attention.sparsify(model, 2, 16, 10)
        after = model(tokens)
    assert len(sparse_attention.dsa_layers(model)) == model.config.n_layers
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_warmup_moves_only_the_indexers():
    model = tiny_sparse_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    bias_before = [moe.bias.clone() for moe in model.moe_layers()]
    optimizer = torch.optim.AdamW(sparse_attention.indexer_parameters(model), lr=1e-2)
    loss = sparse_attention.indexer_warmup_step(model, optimizer, torch.randint(0, 96, (2, 17)))
    assert math.isfinite(loss) and loss > 0
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != (".indexer." in name), name
    assert all(torch.equal(a, moe.bias) for a, moe in zip(bias_before, model.moe_layers()))
    assert all(p.requires_grad for p in model.parameters())


def test_sparse_training_step_moves_the_model_and_the_indexers():
    model = tiny_sparse_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(sparse_attention.model_parameters(model), lr=1e-2)
    indexer_optimizer = torch.optim.AdamW(sparse_attention.indexer_parameters(model), lr=1e-2)
    result = sparse_attention.sparse_training_step(model, optimizer, indexer_optimizer, torch.randint(0, 96, (2, 17)))
    assert math.isfinite(result.model.main_loss) and result.index_loss > 0
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(".indexer." in name for name in moved) and any(".indexer." not in name for name in moved)
    assert all(layer.mode == "sparse" and not layer.track for layer in sparse_attention.dsa_layers(model))


def test_warmup_raises_the_recall_of_the_indexer():
    torch.manual_seed(0)
    model = tiny_sparse_model()
    tokens = torch.randint(0, 96, (4, 17))
    optimizer = torch.optim.AdamW(sparse_attention.indexer_parameters(model), lr=3e-2)
    before = sparse_attention.attention_recall(model, tokens[:, :-1], 4)
    for _ in range(30):
        sparse_attention.indexer_warmup_step(model, optimizer, tokens)
    after = sparse_attention.attention_recall(model, tokens[:, :-1], 4)
    assert sum(after.indexer) > sum(before.indexer)
    assert after.window == before.window  # the rest of the model did not move


def test_a_sparsified_model_decodes_with_its_cache_as_the_full_forward():
    model = tiny_model(attention="mla", mtp_depth=0)
    sparse_attention.sparsify(model, index_n_heads=4, index_head_dim=16, index_topk=3)
    tokens = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        sparse_attention.set_attention(model, "sparse", track=True)
        full = model(tokens)
        assert all(no_tie_at_boundary(layer.scores, 3) for layer in sparse_attention.dsa_layers(model))
        sparse_attention.set_attention(model, "sparse")
        cache = model.new_cache(1)
        pieces = [model(tokens[:, :4], cache)] + [model(tokens[:, t:t + 1], cache) for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)
