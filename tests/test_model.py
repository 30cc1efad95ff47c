"""The tiny DeepSeek-style model: shapes, causality, parameter counts, MTP, generation, eval forwards."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from course_lib.model import mtp
from course_lib.training.step import train_step
from id_reads import id_reductions  # tests/id_reads.py
from course_lib.core.layers import SwiGLU
from course_lib.model.tiny import ModelConfig, TinyDeepSeek, temperature_softmax
from course_lib.moe.layer import DeepSeekMoE
from course_lib.headline.param_count import moe_ffn_params
from tiny_models import tiny_config

TINY = tiny_config(vocab_size=20, n_layers=3, n_routed_experts=6, mtp_depth=0)


def tokens(batch=2, length=12, seed=0, vocab=20):
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_layers_are_dense_first_then_moe():
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY)
    assert isinstance(model.blocks[0].ffn, SwiGLU)
    assert all(isinstance(b.ffn, DeepSeekMoE) for b in model.blocks[1:])
    assert model.moe_layers() == [b.ffn for b in model.blocks[1:]]
    assert model(tokens()).shape == (2, 12, 20)


def test_logits_are_causal():
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY).eval()
    x = tokens(length=10)
    changed = x.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 20
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_main_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY)
    window = tokens(length=11)
    main, mtp_part = model.losses(window)
    expected = F.cross_entropy(model(window[:, :-1]).reshape(-1, 20), window[:, 1:].reshape(-1))
    torch.testing.assert_close(main, expected)
    assert float(mtp_part) == 0.0


def test_mtp_depths_share_embedding_and_head_and_follow_the_report():
    torch.manual_seed(0)
    model = TinyDeepSeek(dataclasses.replace(TINY, mtp_depth=2))
    assert len(model.mtp_modules) == 2
    window = tokens(length=11)
    _, weighted = model.losses(window, mtp_lambda=0.3)
    # recompute by hand: depth k reads h^{k-1}[:, :T-k] and Emb(t_{k+1..T}), predicts t_{k+2..T+1}
    inputs = window[:, :-1]
    h, logits = model.hidden_states(inputs), []
    for k, module in enumerate(model.mtp_modules, start=1):
        assert module.embed is model.embed and module.head is model.head
        h, depth_logits = module(h, inputs)
        assert depth_logits.shape == (2, 10 - k, 20)
        logits.append(depth_logits)
    torch.testing.assert_close(weighted, mtp.mtp_loss(logits, window, 0.3))
    assert weighted > 0
    assert not any("embed" in n or "head." in n for n, _ in model.mtp_modules.named_parameters())


def test_param_counts_follow_the_modules_and_param_count():
    torch.manual_seed(0)
    model = TinyDeepSeek(dataclasses.replace(TINY, mtp_depth=1))
    parts = model.param_breakdown()
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp_modules"))
    total, activated = model.count_params()
    assert total == main
    assert parts["MTP modules"][0] == sum(p.numel() for p in model.mtp_modules.parameters())
    moe_total, moe_active = moe_ffn_params(32, 16, 6, 1, 2)
    assert parts["MoE layers"] == (2 * moe_total, 2 * moe_active)
    assert parts["MoE layers"][0] == sum(p.numel() for m in model.moe_layers() for p in m.parameters())
    assert total - activated == 2 * (6 - 2) * 3 * 32 * 16  # the routed experts a token does not use


def test_dense_baseline_has_the_same_activated_parameters_up_to_the_routers():
    moe_model, dense_model = TinyDeepSeek(TINY), TinyDeepSeek(TINY.dense_baseline())
    assert not dense_model.moe_layers()
    assert dense_model.blocks[2].ffn.w_up.weight.shape == (3 * 16, 32)  # (top_k + shared) * expert_dim
    routers = 2 * 6 * 32
    assert moe_model.count_params()[1] == dense_model.count_params()[1] + routers


def test_eval_forwards_do_not_count_load():
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY)
    window = tokens(length=11)
    model.eval()
    model.losses(window)
    with torch.no_grad():
        model.train()
        model.losses(window)
    assert all(float(m.load.sum()) == 0 for m in model.moe_layers())
    model.train()
    model.losses(window)
    assert all(float(m.load.sum()) == 2 * 10 * 2 for m in model.moe_layers())  # tokens x top_k


def test_generate_is_seeded_and_respects_top_k():
    torch.manual_seed(0)
    model = TinyDeepSeek(TINY)
    prompt = torch.tensor([1, 2, 3])
    a = model.generate(prompt, 40, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 40, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert a.shape == (43,) and torch.equal(a, b) and torch.equal(a[:3], prompt)  # longer than max_seq_len: cut
    greedy1 = model.generate(prompt, 5, top_k=1, generator=torch.Generator().manual_seed(1))
    greedy2 = model.generate(prompt, 5, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(greedy1, greedy2)
    assert model.training  # generation restores the mode it found
    short = model.generate(prompt, 5, generator=torch.Generator().manual_seed(5), context=4)
    assert short.shape == (8,)
    with pytest.raises(ValueError, match="context"):
        model.generate(prompt, 5, context=33)


def test_temperature_softmax_is_exact_and_greedy_near_zero():
    """softmax(logits / T) for every T > 0: the exact distribution where float64 holds it, one-hot on the argmax
    (uniform over tied maxima) for a tiny T, never inf or NaN, from logits of any float dtype, -inf allowed."""
    logits = torch.tensor([[1.5, -2.0, 3.25, 0.0], [0.5, 0.5, float("-inf"), -1.0]])
    for temperature in (4.0, 0.8, 1e-2):
        torch.testing.assert_close(temperature_softmax(logits, temperature),
                                   F.softmax(logits.double() / temperature, -1), rtol=1e-12, atol=1e-300)
    for temperature in (1e-30, 1e-45, 1e-300, 5e-324):  # 1e-45 overflowed float32 logits / T before
        for dtype in (torch.bfloat16, torch.float32, torch.float64):
            probs = temperature_softmax(logits.to(dtype), temperature)
            assert probs.dtype == torch.float64
            assert probs.tolist() == [[0.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.0, 0.0]], (temperature, dtype)


@pytest.mark.parametrize("change, message", [
    (dict(dim=30, n_heads=4), "divisible"), (dict(top_k=7), "top_k"), (dict(n_dense_layers=4), "n_dense_layers"),
    (dict(dim=0), "dim"), (dict(mtp_depth=-1), "mtp_depth"),
])
def test_bad_configs(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def test_bad_inputs():
    model = TinyDeepSeek(TINY)
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="T <= 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"dim": 8, "experts": 4})
    with pytest.raises(TypeError, match="dim must be an int"):
        ModelConfig(dim=8.0)


# ------------------------------------------------------------------------------------------ attention, KV cache
MLA = dataclasses.replace(TINY, attention="mla", q_lora_rank=12, kv_lora_rank=8, qk_nope_head_dim=8,
                          qk_rope_head_dim=4, v_head_dim=8)
MLA_NO_Q_LORA = dataclasses.replace(MLA, q_lora_rank=0)  # DeepSeek-V2-Lite's queries: one W^Q


def test_default_attention_is_mha_with_the_old_parameter_names():
    model = TinyDeepSeek(TINY)
    names = [n for n in model.state_dict() if n.startswith("blocks.0.attn.")]
    assert names == ["blocks.0.attn.qkv.weight", "blocks.0.attn.out.weight"]
    mla_model = TinyDeepSeek(dataclasses.replace(MLA, mtp_depth=1))
    assert type(mla_model.blocks[0].attn).__name__ == "MultiHeadLatentAttention"
    assert type(mla_model.mtp_modules[0].block.attn).__name__ == "MultiHeadLatentAttention"
    names = [n for n in TinyDeepSeek(MLA_NO_Q_LORA).state_dict() if n.startswith("blocks.0.attn.w_")]
    assert "blocks.0.attn.w_q.weight" in names and not any("w_dq" in n or "q_norm" in n for n in names)
    with pytest.raises(ValueError, match="q_lora_rank must be an int >= 0"):
        dataclasses.replace(MLA, q_lora_rank=-1)


MLA_ABSORBED = dataclasses.replace(MLA, mla_absorb=True)


def test_the_absorbed_form_in_the_config_gives_the_naive_forms_logits():
    """ModelConfig(mla_absorb=True) builds every MLA layer (MTP's too) in the absorbed form, with the same parameters
    and the same logits, whole and decoded with the cache."""
    torch.manual_seed(0)
    naive = TinyDeepSeek(dataclasses.replace(MLA, mtp_depth=1)).double().eval()
    absorbed = TinyDeepSeek(dataclasses.replace(MLA_ABSORBED, mtp_depth=1)).double().eval()
    absorbed.load_state_dict(naive.state_dict())
    assert all(block.attn.absorb for block in absorbed.blocks) and absorbed.mtp_modules[0].block.attn.absorb
    assert not any(block.attn.absorb for block in naive.blocks)
    x = tokens(length=10)
    cache = absorbed.new_cache(2)
    with torch.no_grad():
        full = naive(x)
        torch.testing.assert_close(absorbed(x), full, rtol=1e-6, atol=1e-6)
        steps = [absorbed(x[:, :4], cache)] + [absorbed(x[:, t:t + 1], cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="mla_absorb must be True or False"):
        dataclasses.replace(MLA, mla_absorb=1)
    from course_lib.training.cli import build_parser, configs_from_args  # the training command's flag
    args = build_parser().parse_args(["--attention", "mla", "--mla-absorb"])
    assert configs_from_args(args, 50)[0].mla_absorb is True
    assert configs_from_args(build_parser().parse_args([]), 50)[0].mla_absorb is False


@pytest.mark.parametrize("config", [TINY, MLA, MLA_NO_Q_LORA], ids=["mha", "mla", "mla-q_lora_rank-0"])
def test_decoding_with_the_cache_gives_the_logits_of_one_forward(config):
    torch.manual_seed(0)
    model = TinyDeepSeek(config).double().eval()
    x = tokens(length=12)
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(x)
        steps = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    # 1e-6, not 1e-10: the MoE router scores in float32 (moe.DeepSeekMoE.route) whatever the model's dtype
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-6, atol=1e-6)
    assert cache.length == 12


def test_model_cache_layers_bytes_and_truncate():
    model = TinyDeepSeek(dataclasses.replace(MLA, mtp_depth=2))
    cache = model.new_cache(3)
    assert len(cache.blocks) == 3 and len(cache.mtp) == 2 and cache.length == 0 and cache.nbytes == 0
    with torch.no_grad():
        model(tokens(batch=3, length=7), cache)
    per_layer = 3 * 7 * (8 + 4) * 4  # batch x tokens x (d_c + d_h^R) x float32
    assert cache.nbytes == 3 * per_layer and all(c.length == 0 for c in cache.mtp)  # the model fills no MTP cache
    cache.truncate(4)
    assert cache.length == 4 and all(c.length == 4 for c in cache.blocks)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(5)


def test_cache_errors():
    model, other = TinyDeepSeek(TINY), TinyDeepSeek(TINY)
    with pytest.raises(ValueError, match="another model"):
        model(tokens(), other.new_cache(2))
    with pytest.raises(ValueError, match="batch_size=1"):
        model(tokens(batch=2), model.new_cache(1))
    cache = model.new_cache(2)
    with torch.no_grad():
        model(tokens(length=30), cache)
    with pytest.raises(ValueError, match="exceed the model's context max_seq_len=32"):
        model(tokens(length=3), cache)
    assert cache.length == 30 and all(c.length == 30 for c in cache.blocks)  # nothing half-updated
    with pytest.raises(TypeError, match="ModelCache"):
        model(tokens(), cache.blocks[0])


def generate_without_cache(model, prompt, max_new_tokens, temperature, top_k, generator, context):
    """The recompute-everything generation: every step runs the whole window [-context:] from position 0."""
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(seq[-context:][None])[0, -1] / temperature
            if top_k is not None:
                logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
            seq = torch.cat([seq, torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)])
    return seq


@pytest.mark.parametrize("config", [TINY, MLA], ids=["mha", "mla"])
@pytest.mark.parametrize("context, top_k", [(32, None), (10, 5)])
def test_generate_with_the_cache_samples_as_recomputing(config, context, top_k):
    """Same samples as recomputing the window, also when the text outgrows the context (the window slides)."""
    torch.manual_seed(0)
    model = TinyDeepSeek(config).eval()
    prompt = torch.tensor([1, 2, 3, 4])
    cached = model.generate(prompt, 40, 0.8, top_k, torch.Generator().manual_seed(7), context)
    recomputed = generate_without_cache(model, prompt, 40, 0.8, top_k, torch.Generator().manual_seed(7), context)
    assert torch.equal(cached, recomputed)
    uncached = model.generate(prompt, 40, 0.8, top_k, torch.Generator().manual_seed(7), context, use_cache=False)
    assert torch.equal(uncached, recomputed)


@pytest.mark.parametrize("change, message", [
    (dict(attention="gqa"), "attention must be 'mha' or 'mla'"),
    (dict(attention="mla", qk_rope_head_dim=5), "qk_rope_head_dim must be even"),
    (dict(attention="mla", kv_lora_rank=0), "kv_lora_rank must be an int >= 1"),
    (dict(dim=36, n_heads=4), "head_dim = dim / n_heads = 9 must be even"),
])
def test_bad_attention_configs(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


def test_token_ids_are_read_once_where_they_enter_not_per_layer_depth_or_decoded_token():
    """Each entry point reduces the user's tokens once (the one host read-back of its check); the layers, the MTP
    depths' losses and the decoding steps inside read none."""
    torch.manual_seed(0)
    model = TinyDeepSeek(dataclasses.replace(TINY, mtp_depth=1))
    assert id_reductions(lambda: model.generate(torch.tensor([1, 2, 3]), 6)) == [[3]]
    # the window slides: each step re-reads the window into the emptied cache, and checks nothing
    assert id_reductions(lambda: model.generate(torch.tensor([1, 2, 3]), 6, use_cache=False, context=4)) == [[3]]
    assert id_reductions(lambda: model.losses(tokens(length=9))) == [[2, 9]]  # the windows, not each depth's targets
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = [tokens(length=9, seed=1), tokens(length=9, seed=2)]
    assert id_reductions(lambda: train_step(model, optimizer, batches)) == [[2, 9], [2, 9]]  # at the step's entry
    bad = tokens(length=9)
    bad[1, -1] = 20  # a target id outside the vocabulary
    with pytest.raises(ValueError, match=r"\[0, 20\)"):  # still checked, before anything is computed
        train_step(model, optimizer, [bad])
