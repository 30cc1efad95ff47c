"""Bad input raises a clear error (issue 9 item 4): a sweep of the public functions and classes of course_lib's
routing, balance, moe, layers, transformer, mtp, model, train, data, toy_moe, compute and param_count for
non-finite values, wrong types and dtypes, out-of-range arguments and empty inputs. Each row: what is called, the
error type expected and a fragment of its message. The sweep stays complete as the package grows (issue 19): every
``@boundary`` of course_lib (where a user's input enters, ``core.validation.boundary``) needs a row whose call its
own validator rejects, and a row that calls what the package no longer has fails by name."""

import builtins
import dataclasses
import dis
import importlib
import inspect
import pkgutil
import traceback
import types
from pathlib import Path
from typing import Callable

import pytest
import torch

import course_lib
from course_lib.attention import cache as kv_cache, dsa, indexer, mha, mla, rope, yarn
from course_lib.core import layers
from course_lib.core.validation import boundary, check_int
from course_lib.headline import compute, param_count
from course_lib.inference import eplb, expert_placement, serving_costs, speculative
from course_lib.model import block as transformer, mtp
from course_lib.moe import arguments as moe_arguments, balance, dispatch, layer as moe, routing, toy as toy_moe
from course_lib.parallel import distributed
from course_lib.post_training import grpo, loop as grpo_loop, rewards as grpo_rewards, routing_replay, sampling
from course_lib.precision import accumulation, linear, quantization
from course_lib.parallel.expert_parallel import layer as ep_layer, placement, traffic
from course_lib.parallel.pipeline import run as pipeline_run, schedules as pipeline, simulator as pipeline_simulator
from course_lib.parallel.pipeline import plots as pipeline_plots, stages as pipeline_stages
from course_lib.training import checkpoint, cli, config, data, loop, sparse_attention, step
from course_lib.model.tiny import ModelConfig, TinyDeepSeek
from tiny_models import tiny_config, tiny_model

NAN, INF = float("nan"), float("inf")
TINY = tiny_config()


def scores(*shape, value=None):
    t = torch.rand(*shape)
    if value is not None:
        t.view(-1)[0] = value
    return t


def moe_layer(**changes):
    args = dict(dim=8, expert_dim=4, n_routed_experts=4, n_shared_experts=1, top_k=2)
    return moe.DeepSeekMoE(**{**args, **changes})


def sparse_layer(**changes):
    args = dict(dim=8, n_heads=2, q_lora_rank=4, kv_lora_rank=4, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4,
                index_n_heads=2, index_head_dim=4, index_topk=2)
    return dsa.DeepSeekSparseAttention(**{**args, **changes})


def sparse_model():
    return sparse_attention.sparsify(tiny_model(attention="mla"), 2, 16, 4)


def sparse_training_with_one_optimizer():
    model = sparse_model()
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    return sparse_attention.sparse_training_step(model, optimizer, optimizer, torch.zeros(1, 5, dtype=torch.long))


def tiny_corpus():
    tok = data.CharTokenizer("abcd")
    return data.Corpus(tok, torch.randint(0, 4, (200,)), torch.randint(0, 4, (100,)))


def tiny_trainer(**cfg):
    tok = data.CharTokenizer(data.ASCII_ALPHABET)
    corpus = data.Corpus(tok, torch.randint(0, 96, (500,)), torch.randint(0, 96, (200,)))
    return loop.Trainer(tiny_model(), corpus, config.TrainConfig(batch_size=2, seq_len=8, **cfg), "cpu")


def moe_after_forward(load_value):
    layer = moe_layer()
    layer.load.fill_(load_value)
    return layer


def nan_tensor(*shape):
    t = torch.randn(*shape)
    t.view(-1)[0] = NAN
    return t


V3 = param_count.DEEPSEEK_V3
V3_ARGS = {f: getattr(V3, f) for f in V3.__dataclass_fields__}
G = torch.Generator().manual_seed(0)

CASES = [  # (name, call, error type, fragment of the message)
    # routing
    ("affinity_scores int x", lambda: routing.affinity_scores(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 4)),
     TypeError, "floating-point"),
    ("affinity_scores NaN x", lambda: routing.affinity_scores(nan_tensor(2, 4), torch.ones(3, 4)), ValueError, "NaN"),
    ("affinity_scores inf centroids", lambda: routing.affinity_scores(torch.ones(2, 4), torch.full((3, 4), INF)),
     ValueError, "inf"),
    ("affinity_scores empty centroids", lambda: routing.affinity_scores(torch.ones(2, 4), torch.ones(0, 4)),
     ValueError, "non-empty"),
    ("affinity_scores wrong dim", lambda: routing.affinity_scores(torch.ones(2, 5), torch.ones(3, 4)), ValueError,
     "[..., 4]"),
    ("check_route_config float", lambda: moe_arguments.check_route_config(8.0, 2), TypeError,
     "n_experts must be an int"),
    ("check_route_config k > n", lambda: moe_arguments.check_route_config(4, 5), ValueError, "k <= n_experts"),
    ("check_route_scale NaN", lambda: moe_arguments.check_route_scale(NAN), ValueError, "route_scale"),
    ("check_route_scale string", lambda: moe_arguments.check_route_scale("2.5"), TypeError, "route_scale"),
    ("group_limit indivisible", lambda: routing.group_limit(scores(3, 8), 3, 1), ValueError, "divisible"),
    ("group_limit 1-D", lambda: routing.group_limit(scores(8), 2, 1), ValueError, "[tokens, n_experts]"),
    ("group_limit int", lambda: routing.group_limit(torch.ones(3, 8, dtype=torch.long), 2, 1), TypeError,
     "floating-point"),
    ("topk_route inf score", lambda: routing.topk_route(scores(4, 8, value=INF), 2), ValueError, "inf"),
    ("topk_route NaN score", lambda: routing.topk_route(scores(4, 8, value=NAN), 2), ValueError, "NaN"),
    ("topk_route negative score", lambda: routing.topk_route(scores(4, 8, value=-0.5), 2), ValueError, ">= 0"),
    ("topk_route NaN route_scale", lambda: routing.topk_route(scores(4, 8), 2, route_scale=NAN), ValueError,
     "route_scale"),
    ("topk_route negative route_scale", lambda: routing.topk_route(scores(4, 8), 2, route_scale=-1.0), ValueError,
     "route_scale"),
    ("topk_route inf route_scale", lambda: routing.topk_route(scores(4, 8), 2, route_scale=INF), ValueError,
     "route_scale"),
    ("topk_route int bias", lambda: routing.topk_route(scores(4, 8), 2, torch.zeros(8, dtype=torch.long)), TypeError,
     "bias must be a floating-point"),
    ("topk_route inf bias", lambda: routing.topk_route(scores(4, 8), 2, torch.full((8,), INF)), ValueError, "bias"),
    ("topk_route bias shape", lambda: routing.topk_route(scores(4, 8), 2, torch.zeros(7)), ValueError, "[8]"),
    ("topk_route int scores", lambda: routing.topk_route(torch.ones(4, 8, dtype=torch.long), 2), TypeError,
     "floating-point"),
    ("topk_route empty", lambda: routing.topk_route(torch.ones(0, 8), 2), ValueError, "empty"),
    ("topk_route k = 0", lambda: routing.topk_route(scores(4, 8), 0), ValueError, "k must be an int >= 1"),
    ("topk_route k bool", lambda: routing.topk_route(scores(4, 8), True), TypeError, "k must be an int"),
    # balance
    ("expert_load float indices", lambda: balance.expert_load(torch.ones(3, 2), 4), TypeError, "integer tensor"),
    ("expert_load out of range", lambda: balance.expert_load(torch.tensor([[0, 4]]), 4), ValueError, "[0, 3]"),
    ("expert_load n_experts 0", lambda: balance.expert_load(torch.tensor([[0]]), 0), ValueError,
     "n_experts must be an int >= 1"),
    ("max_violation NaN", lambda: balance.max_violation(torch.tensor([1.0, NAN])), ValueError, "finite counts"),
    ("max_violation negative", lambda: balance.max_violation(torch.tensor([3.0, -1.0])), ValueError, ">= 0"),
    ("max_violation empty", lambda: balance.max_violation(torch.zeros(0)), ValueError, "non-empty"),
    ("max_violation all zero", lambda: balance.max_violation(torch.zeros(4)), ValueError, "positive mean"),
    ("update_bias gamma inf", lambda: balance.update_bias(torch.zeros(4), torch.ones(4), INF), ValueError,
     "gamma must be >= 0 and finite"),
    ("update_bias gamma NaN", lambda: balance.update_bias(torch.zeros(4), torch.ones(4), NAN), ValueError, "gamma"),
    ("update_bias gamma string", lambda: balance.update_bias(torch.zeros(4), torch.ones(4), "0.1"), TypeError,
     "gamma"),
    ("update_bias NaN load", lambda: balance.update_bias(torch.zeros(4), torch.tensor([1, NAN, 0, 0]), 0.1),
     ValueError, "load must hold finite counts"),
    ("update_bias inf load", lambda: balance.update_bias(torch.zeros(4), torch.tensor([1, INF, 0, 0]), 0.1),
     ValueError, "finite counts"),
    ("update_bias integer bias", lambda: balance.update_bias(torch.zeros(4, dtype=torch.long), torch.ones(4), 0.1),
     TypeError, "round every step"),
    ("update_bias empty", lambda: balance.update_bias(torch.zeros(0), torch.zeros(0), 0.1), ValueError, "non-empty"),
    ("balance_loss inf score", lambda: balance.balance_loss(scores(4, 8, value=INF), 2, 0.1), ValueError, "inf"),
    ("balance_loss alpha inf", lambda: balance.balance_loss(scores(4, 8), 2, INF), ValueError, "alpha"),
    ("balance_loss alpha NaN", lambda: balance.balance_loss(scores(4, 8), 2, NAN), ValueError, "alpha"),
    ("balance_loss k = 0", lambda: balance.balance_loss(scores(4, 8), 0, 0.1), ValueError, "k must be an int"),
    ("balance_loss int", lambda: balance.balance_loss(torch.ones(4, 8, dtype=torch.long), 2, 0.1), TypeError,
     "floating-point"),
    ("balance_loss empty", lambda: balance.balance_loss(torch.ones(0, 8), 2, 0.1), ValueError, "empty"),
    ("sequence_balance_loss 2-D", lambda: balance.sequence_balance_loss(scores(4, 8), 2, 0.1), ValueError, "3-D"),
    ("sequence_balance_loss NaN", lambda: balance.sequence_balance_loss(scores(2, 4, 8, value=NAN), 2, 0.1),
     ValueError, "NaN"),
    # moe
    ("DeepSeekMoE dim 8.5", lambda: moe_layer(dim=8.5), TypeError, "dim must be an int"),
    ("DeepSeekMoE expert_dim 0", lambda: moe_layer(expert_dim=0), ValueError, "expert_dim must be an int >= 1"),
    ("DeepSeekMoE top_k float", lambda: moe_layer(top_k=2.0), TypeError, "k must be an int"),
    ("DeepSeekMoE route_scale NaN", lambda: moe_layer(route_scale=NAN), ValueError, "route_scale"),
    ("DeepSeekMoE route_scale 0", lambda: moe_layer(route_scale=0.0), ValueError, "route_scale"),
    ("DeepSeekMoE forward int", lambda: moe_layer()(torch.ones(2, 8, dtype=torch.long)), TypeError, "floating-point"),
    ("DeepSeekMoE forward NaN", lambda: moe_layer()(nan_tensor(3, 8)), ValueError, "NaN"),
    ("DeepSeekMoE forward inf", lambda: moe_layer()(torch.full((3, 8), INF)), ValueError, "inf"),
    ("DeepSeekMoE forward empty", lambda: moe_layer()(torch.ones(0, 8)), ValueError, "non-empty"),
    ("DeepSeekMoE forward wrong dim", lambda: moe_layer()(torch.ones(3, 7)), ValueError, "[..., 8]"),
    ("DeepSeekMoE update_bias gamma inf", lambda: moe_layer().update_bias(INF), ValueError, "gamma"),
    ("DeepSeekMoE update_bias NaN load", lambda: moe_after_forward(NAN).update_bias(0.001), ValueError, "load"),
    # layers
    ("RMSNorm dim float", lambda: layers.RMSNorm(8.0), TypeError, "dim must be an int"),
    ("RMSNorm dim 0", lambda: layers.RMSNorm(0), ValueError, "dim must be an int >= 1"),
    ("RMSNorm eps NaN", lambda: layers.RMSNorm(8, eps=NAN), ValueError, "eps"),
    ("RMSNorm eps 0", lambda: layers.RMSNorm(8, eps=0.0), ValueError, "eps"),
    ("RMSNorm int input", lambda: layers.RMSNorm(4)(torch.ones(2, 4, dtype=torch.long)), TypeError, "floating-point"),
    ("RMSNorm wrong dim", lambda: layers.RMSNorm(4)(torch.ones(2, 5)), ValueError, "[..., 4]"),
    ("SwiGLU forward int x", lambda: layers.SwiGLU(4, 3)(torch.ones(2, 4, dtype=torch.long)), TypeError,
     "floating-point"),
    ("SwiGLU forward wrong dim", lambda: layers.SwiGLU(4, 3)(torch.ones(2, 5)), ValueError, "[..., 4]"),
    ("SwiGLU hidden 0", lambda: layers.SwiGLU(4, 0), ValueError, "hidden must be an int >= 1"),
    ("SwiGLU dim float", lambda: layers.SwiGLU(4.0, 8), TypeError, "dim must be an int"),
    # transformer
    ("rope_frequencies odd", lambda: rope.rope_frequencies(7), ValueError, "even"),
    ("yarn_frequencies factor below 1", lambda: yarn.yarn_frequencies(8, 10000.0, 0.5, 16), ValueError, "factor"),
    ("yarn_ramp betas reversed", lambda: yarn.yarn_ramp(8, 10000.0, 16, 1.0, 32.0), ValueError, "beta_fast"),
    ("yarn_mscale factor NaN", lambda: yarn.yarn_mscale(NAN), ValueError, "factor"),
    ("interpolated_frequencies odd", lambda: yarn.interpolated_frequencies(7, 10000.0, 2.0), ValueError, "even"),
    ("ntk_frequencies dim 2", lambda: yarn.ntk_frequencies(2, 10000.0, 2.0), ValueError, "dim must be >= 4"),
    ("YarnScaling original 0", lambda: yarn.YarnScaling(original_seq_len=0), ValueError, "original_seq_len"),
    ("rope_angles odd", lambda: rope.rope_angles(7, 8), ValueError, "even"),
    ("rope_angles frequencies of another size", lambda: rope.rope_angles(8, 8, frequencies=torch.ones(3)), ValueError,
     "frequencies must be"),
    ("rope_angles float", lambda: rope.rope_angles(8.0, 8), TypeError, "head_dim must be an int"),
    ("rope_angles max_seq_len 0", lambda: rope.rope_angles(8, 0), ValueError, "max_seq_len"),
    ("rope_angles base NaN", lambda: rope.rope_angles(8, 8, NAN), ValueError, "base"),
    ("rope_angles base 1", lambda: rope.rope_angles(8, 8, 1.0), ValueError, "base"),
    ("apply_rope int", lambda: rope.apply_rope(torch.ones(2, 4, dtype=torch.long),
                                                      *rope.rope_angles(4, 8)), TypeError, "floating-point"),
    ("apply_rope too long", lambda: rope.apply_rope(torch.ones(9, 4), *rope.rope_angles(4, 8)),
     ValueError, "[>= T"),
    ("MultiHeadAttention dim float", lambda: mha.MultiHeadAttention(8.0, 2), TypeError, "dim must be an int"),
    ("MultiHeadAttention heads", lambda: mha.MultiHeadAttention(8, 3), ValueError, "multiple of n_heads"),
    ("MultiHeadAttention forward shape", lambda: mha.MultiHeadAttention(8, 2)(torch.ones(2, 8)), ValueError,
     "[B, T, 8]"),
    ("MultiHeadLatentAttention odd rope", lambda: mla.MultiHeadLatentAttention(8, 2, 4, 4, 4, 3, 4), ValueError,
     "qk_rope_head_dim must be even"),
    ("MultiHeadLatentAttention float size", lambda: mla.MultiHeadLatentAttention(8, 2, 4.0, 4, 4, 2, 4),
     TypeError, "q_lora_rank must be an int"),
    ("MultiHeadLatentAttention cache of MHA",
     lambda: mla.MultiHeadLatentAttention(8, 2, 4, 4, 4, 2, 4)(torch.ones(1, 2, 8),
                                                                   mha.MultiHeadAttention(8, 2).new_cache()),
     ValueError, "mha"),
    ("causal_attention too few keys", lambda: mha.causal_attention(torch.ones(1, 1, 2, 4), torch.ones(1, 1, 1, 4),
                                                                         torch.ones(1, 1, 1, 4)), ValueError, "keys"),
    # DeepSeek Sparse Attention
    ("DeepSeekSparseAttention index_topk 0", lambda: sparse_layer(index_topk=0), ValueError, "index_topk"),
    ("DeepSeekSparseAttention indexer head shorter than RoPE", lambda: sparse_layer(index_head_dim=1), ValueError,
     "the indexer does not fit the model"),
    ("DeepSeekSparseAttention without a query latent", lambda: sparse_layer(q_lora_rank=0), ValueError,
     "q_lora_rank must be >= 1"),
    ("DeepSeekSparseAttention.from_mla of MHA", lambda: dsa.DeepSeekSparseAttention.from_mla(
        mha.MultiHeadAttention(8, 2), 2, 4, 4), TypeError, "built on MLA"),
    ("LightningIndexer float heads", lambda: indexer.LightningIndexer(8, 4, 2.0, 4, 2), TypeError,
     "index_n_heads must be an int"),
    ("DeepSeekSparseAttention cache of MLA", lambda: sparse_layer()(torch.ones(1, 2, 8), mla.MultiHeadLatentAttention(
        8, 2, 4, 4, 4, 2, 4).new_cache()), ValueError, "a cache from another model"),
    ("DeepSeekSparseAttention cache of another indexer", lambda: sparse_layer()(torch.ones(1, 2, 8), sparse_layer(
        index_head_dim=6).new_cache()), ValueError, "a cache from another model"),
    ("index_scores keys of another length", lambda: indexer.index_scores(torch.ones(1, 2, 2, 4), torch.ones(1, 3, 4),
                                                                        torch.ones(1, 2, 2)), ValueError, "start + T"),
    ("top_k_selection k 0", lambda: indexer.top_k_selection(torch.ones(1, 2, 2), 0), ValueError, "index_topk"),
    ("window_selection more queries than positions", lambda: indexer.window_selection(3, 2, 1), ValueError, "T <= L"),
    ("index_kl_loss int mask", lambda: indexer.index_kl_loss(torch.ones(1, 2, 2), torch.ones(1, 2, 2),
                                                             torch.ones(2, 2)), ValueError, "bool mask"),
    ("causal_attention float mask", lambda: mha.causal_attention(torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4),
                                                                 torch.ones(1, 1, 2, 4), mask=torch.ones(1, 2, 2)),
     ValueError, "bool [B, T, start + T]"),
    ("sparsify an MHA model", lambda: sparse_attention.sparsify(tiny_model(), 2, 16, 4), TypeError, "attention='mla'"),
    ("sparsify k 0", lambda: sparse_attention.sparsify(tiny_model(attention="mla"), 2, 16, 0), ValueError,
     "index_topk"),
    ("set_attention unknown mode", lambda: sparse_attention.set_attention(sparse_model(), "strided"), ValueError,
     "mode must be one of"),
    ("indexer_warmup_step dense model", lambda: sparse_attention.indexer_warmup_step(
        tiny_model(attention="mla"), torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1),
        torch.zeros(1, 5, dtype=torch.long)), TypeError, "sparse_attention.sparsify"),
    ("sparse_training_step one optimizer", lambda: sparse_training_with_one_optimizer(), ValueError,
     "give two optimizers"),
    ("attention_recall k not below T", lambda: sparse_attention.attention_recall(
        sparse_model(), torch.zeros(1, 4, dtype=torch.long), 4), ValueError, "longer than that"),
    ("KVCache integer dtype", lambda: kv_cache.KVCache("mha", {"k": (1, 2)}, 1, 4, dtype=torch.long), TypeError,
     "floating-point"),
    ("KVCache.append a missing entry", lambda: kv_cache.KVCache("mla", {"c_kv": (4,), "k_rope": (2,)}, 1, 4).append(
        c_kv=torch.zeros(1, 1, 4)), ValueError, "append expects exactly the entries"),
    ("KVCache.truncate past its length", lambda: kv_cache.KVCache("mha", {"k": (1, 2), "v": (1, 2)}, 1, 4).truncate(3),
     ValueError, "truncate expects an int length in [0, 0]"),
    ("kv_cache_elements_per_token unknown", lambda: kv_cache.kv_cache_elements_per_token("xyz"), ValueError,
     "attention must be one of"),
    ("kv_cache_elements_per_token missing size", lambda: kv_cache.kv_cache_elements_per_token("mla", kv_lora_rank=4),
     ValueError, "qk_rope_head_dim"),
    ("ModelCache truncate beyond", lambda: TinyDeepSeek(ModelConfig(dim=16, n_heads=2, n_layers=1)).new_cache()
     .truncate(3), ValueError, "truncate expects"),
    ("TransformerBlock both ffns", lambda: transformer.TransformerBlock(8, 2, ffn=layers.SwiGLU(8, 4), ffn_hidden=4),
     ValueError, "not both"),
    ("TransformerBlock ffn_hidden 0", lambda: transformer.TransformerBlock(8, 2, ffn_hidden=0), ValueError,
     "ffn_hidden"),
    ("TransformerBlock int input", lambda: transformer.TransformerBlock(8, 2)(torch.ones(1, 2, 8, dtype=torch.long)),
     TypeError, "floating-point"),
    ("TransformerBlock too long", lambda: transformer.TransformerBlock(8, 2, max_seq_len=4)(torch.ones(1, 5, 8)),
     ValueError, "T <= 4"),
    # mtp
    ("mtp_depth_loss float tokens", lambda: mtp.mtp_depth_loss(torch.randn(1, 3, 5), torch.ones(1, 4), 0), TypeError,
     "int64"),
    ("mtp_depth_loss k too big", lambda: mtp.mtp_depth_loss(torch.randn(1, 3, 5), torch.zeros(1, 4, dtype=torch.long),
                                                            3), ValueError, "k < T"),
    ("mtp_depth_loss target out of vocab", lambda: mtp.mtp_depth_loss(
        torch.randn(1, 3, 5), torch.full((1, 4), 7, dtype=torch.long), 0), ValueError, "[0, 5)"),
    ("mtp_loss lam inf", lambda: mtp.mtp_loss([torch.randn(1, 2, 5)], torch.zeros(1, 4, dtype=torch.long), INF),
     ValueError, "lam"),
    ("mtp_loss empty", lambda: mtp.mtp_loss([], torch.zeros(1, 4, dtype=torch.long), 0.3), ValueError, "empty"),
    ("mtp_forward k 0", lambda: mtp.mtp_forward(torch.ones(1, 4, 8), torch.ones(1, 4, 8), 0, *[None] * 4), ValueError,
     "1 <= k < T"),
    ("MTPModule depth 0", lambda: mtp.MTPModule(0, torch.nn.Embedding(5, 8), torch.nn.Linear(8, 5), None), ValueError,
     "depth"),
    ("MTPModule not an embedding", lambda: mtp.MTPModule(1, torch.nn.Linear(5, 8), torch.nn.Linear(8, 5), None),
     TypeError, "nn.Embedding"),
    # model
    ("ModelConfig dim float", lambda: ModelConfig(dim=128.0), TypeError, "dim must be an int"),
    ("ModelConfig route_scale NaN", lambda: ModelConfig(route_scale=NAN), ValueError, "route_scale"),
    ("ModelConfig route_scale string", lambda: ModelConfig(route_scale="2.5"), TypeError, "route_scale"),
    ("ModelConfig groups indivisible", lambda: ModelConfig(n_groups=3), ValueError, "divisible"),
    ("ModelConfig topk_groups > n_groups", lambda: ModelConfig(n_groups=2, topk_groups=3), ValueError, "topk_groups"),
    ("ModelConfig.from_dict not a dict", lambda: ModelConfig.from_dict([1, 2]), TypeError, "dict"),
    ("ModelConfig.from_dict unknown", lambda: ModelConfig.from_dict({"width": 3}), ValueError, "unknown"),
    ("TinyDeepSeek not a config", lambda: TinyDeepSeek({"dim": 8}), TypeError, "ModelConfig"),
    ("TinyDeepSeek float tokens", lambda: tiny_model()(torch.ones(1, 4)), TypeError, "int64"),
    ("TinyDeepSeek token out of vocab", lambda: tiny_model()(torch.full((1, 4), 96)), ValueError, "[0, 96)"),
    ("TinyDeepSeek negative token", lambda: tiny_model()(torch.full((1, 4), -1)), ValueError, "[0, 96)"),
    ("TinyDeepSeek empty", lambda: tiny_model()(torch.ones(0, 4, dtype=torch.long)), ValueError, "batch >= 1"),
    ("hidden_states float tokens", lambda: tiny_model().hidden_states(torch.ones(1, 4)), TypeError, "int64"),
    ("hidden_states another model's cache", lambda: tiny_model().hidden_states(
        torch.zeros(1, 4, dtype=torch.long), tiny_model().new_cache()), ValueError, "another model"),
    ("MTPModule forward float tokens", lambda: tiny_model().mtp_modules[0](torch.ones(1, 4, 32), torch.ones(1, 5)), TypeError,
     "int64 inputs"),
    ("plain_generate empty prompt", lambda: speculative.plain_generate(tiny_model(), torch.zeros(0, dtype=torch.long), 2),
     ValueError, "prompt"),
    ("speculative_generate float prompt", lambda: speculative.speculative_generate(tiny_model(), torch.zeros(2), 2),
     TypeError, "prompt"),
    ("losses mtp_lambda inf", lambda: tiny_model().losses(torch.zeros(1, 5, dtype=torch.long), INF), ValueError,
     "mtp_lambda"),
    ("losses one column", lambda: tiny_model().losses(torch.zeros(1, 1, dtype=torch.long)), ValueError, "T + 1"),
    ("generate negative length", lambda: tiny_model().generate(torch.zeros(2, dtype=torch.long), -1), ValueError,
     "max_new_tokens"),
    ("generate float length", lambda: tiny_model().generate(torch.zeros(2, dtype=torch.long), 2.5), TypeError,
     "max_new_tokens"),
    ("generate temperature inf", lambda: tiny_model().generate(torch.zeros(2, dtype=torch.long), 2, INF), ValueError,
     "temperature"),
    ("generate top_k 0", lambda: tiny_model().generate(torch.zeros(2, dtype=torch.long), 2, top_k=0), ValueError,
     "top_k"),
    ("generate prompt out of vocab", lambda: tiny_model().generate(torch.full((2,), 99), 2), ValueError, "[0, 96)"),
    # train
    ("TrainConfig lr inf", lambda: config.TrainConfig(lr=INF), ValueError, "lr must be >= 0 and finite"),
    ("TrainConfig gamma NaN", lambda: config.TrainConfig(gamma=NAN), ValueError, "gamma"),
    ("TrainConfig steps float", lambda: config.TrainConfig(steps=2.5), TypeError, "steps must be an int"),
    ("TrainConfig lr string", lambda: config.TrainConfig(lr="3e-3"), TypeError, "lr must be a number"),
    ("TrainConfig dtype", lambda: config.TrainConfig(dtype="float16"), ValueError, "dtype must be one of"),
    ("lr_at negative", lambda: config.lr_at(-1, config.TrainConfig()), ValueError, "step must be an int >= 0"),
    ("train_step gamma inf", lambda: step.train_step(tiny_model(), None, [torch.zeros(1, 5, dtype=torch.long)],
                                                      gamma=INF), ValueError, "gamma"),
    ("train_step a tensor", lambda: step.train_step(tiny_model(), None, torch.zeros(1, 5, dtype=torch.long)),
     ValueError, "list of int64"),
    ("train_step empty", lambda: step.train_step(tiny_model(), None, []), ValueError, "empty"),
    ("train_step mode", lambda: step.train_step(tiny_model(), None, [], balance_mode="aux_free"), ValueError,
     "balance_mode"),
    ("StepRollback not a model", lambda: step.StepRollback("model", None), TypeError, "torch.nn.Module"),
    ("StepRollback not an optimizer", lambda: step.StepRollback(tiny_model(), "sgd"), TypeError,
     "torch.optim.Optimizer"),
    ("mean_maxvio 1-D", lambda: loop.mean_maxvio(torch.ones(4)), ValueError, "[n_layers, n_experts]"),
    ("Trainer wrong types", lambda: loop.Trainer(tiny_model(), "docs"), TypeError, "Corpus"),
    ("Trainer vocab", lambda: loop.Trainer(tiny_model(), tiny_corpus(), config.TrainConfig(seq_len=8), "cpu"),
     ValueError, "vocab_size"),
    ("Trainer corpus shorter than a window", lambda: loop.Trainer(
        tiny_model(), data.Corpus(data.CharTokenizer(data.ASCII_ALPHABET), torch.zeros(9, dtype=torch.long),
                                  torch.zeros(20, dtype=torch.long)), config.TrainConfig(seq_len=8), "cpu"),
     ValueError, "the train split has 9 tokens: too few"),
    ("Trainer.train steps -1", lambda: tiny_trainer().train(-1, progress=False), ValueError,
     "steps must be an int >= 0"),
    ("Trainer.evaluate max_tokens 0", lambda: tiny_trainer().evaluate(0), ValueError, "max_tokens"),
    ("Trainer.summary nothing", lambda: tiny_trainer().summary(), ValueError, "train at least one step"),
    ("check_same_config not configs", lambda: checkpoint.check_same_config(TINY, {"dim": 3}), TypeError, "ModelConfig"),
    ("make_optimizer not a config", lambda: config.make_optimizer(tiny_model(), {"lr": 1}), TypeError, "TrainConfig"),
    ("autocast dtype", lambda: step.autocast(torch.device("cpu"), "half"), ValueError, "dtype must be one of"),
    ("read_checkpoint missing", lambda: checkpoint.read_checkpoint("/nonexistent/x.pt"), checkpoint.CheckpointError,
     "no checkpoint"),
    ("open_checkpoint missing", lambda: checkpoint.open_checkpoint("/nonexistent/x.pt"), checkpoint.CheckpointError,
     "no checkpoint"),
    ("load_model missing", lambda: checkpoint.load_model("/nonexistent/x.pt"), checkpoint.CheckpointError, "no checkpoint"),
    ("History.from_dict", lambda: config.History.from_dict({"step": [1]}), ValueError, "fields"),
    ("main bad size", lambda: cli.main(["--dim", "0", "--steps", "1", "--device", "cpu"]) == 2 or 1 / 0,
     None, None),
    # data
    ("to_ascii bytes", lambda: data.to_ascii(b"abc"), TypeError, "str"),
    ("CharTokenizer empty", lambda: data.CharTokenizer(""), ValueError, "non-empty"),
    ("CharTokenizer repeated", lambda: data.CharTokenizer("aa"), ValueError, "repeat"),
    ("encode not a str", lambda: data.CharTokenizer("ab").encode(["a"]), TypeError, "str"),
    ("encode unknown character", lambda: data.CharTokenizer("ab").encode("abc"), ValueError, "'c'"),
    ("decode float ids", lambda: data.CharTokenizer("ab").decode([0.5]), TypeError, "int"),
    ("decode float tensor", lambda: data.CharTokenizer("ab").decode(torch.tensor([0.0])), TypeError, "int"),
    ("decode out of range", lambda: data.CharTokenizer("ab").decode([2]), ValueError, "outside the vocabulary"),
    ("Corpus float ids", lambda: data.Corpus(data.CharTokenizer("ab"), torch.zeros(10), torch.zeros(10,
                                                                                                   dtype=torch.long)),
     TypeError, "int64"),
    ("Corpus ids out of vocab", lambda: data.Corpus(data.CharTokenizer("ab"), torch.full((10,), 2),
                                                   torch.zeros(10, dtype=torch.long)), ValueError, "[0, 2)"),
    ("Corpus empty", lambda: data.Corpus(data.CharTokenizer("ab"), torch.zeros(0, dtype=torch.long),
                                         torch.zeros(10, dtype=torch.long)), ValueError, "empty"),
    ("Corpus domains shape", lambda: data.Corpus(data.CharTokenizer("ab"), torch.zeros(10, dtype=torch.long),
                                                 torch.zeros(10, dtype=torch.long), torch.zeros(9, dtype=torch.long),
                                                 torch.zeros(10, dtype=torch.long)), ValueError, "domains"),
    ("get_batch float size", lambda: tiny_corpus().get_batch("train", 2.5, 8, G), TypeError, "batch_size"),
    ("get_batch bad split", lambda: tiny_corpus().get_batch("test", 2, 8, G), ValueError, "split"),
    ("split unknown", lambda: tiny_corpus().split("test"), ValueError, "split must be 'train' or 'val'"),
    ("get_batch_with_domains seq_len 0", lambda: tiny_corpus().get_batch_with_domains("train", 2, 0, G), ValueError,
     "seq_len must be >= 1"),
    ("get_batch too long", lambda: tiny_corpus().get_batch("val", 2, 200, G), ValueError, "too few"),
    ("eval_batches batch_size 0", lambda: list(tiny_corpus().eval_batches(0, 8)), ValueError, "batch_size"),
    ("eval_batches max_tokens 0", lambda: list(tiny_corpus().eval_batches(2, 8, 0)), ValueError, "max_tokens"),
    ("python_docs val_fraction NaN", lambda: data.python_docs(NAN), ValueError, "val_fraction"),
    ("synthetic_lines float", lambda: data.synthetic_lines(2.5), TypeError, "n_lines"),
    ("synthetic_lines 0", lambda: data.synthetic_lines(0), ValueError, "n_lines"),
    ("synthetic_task val_fraction 1.5", lambda: data.synthetic_task(100, val_fraction=1.5), ValueError,
     "val_fraction"),
    ("synthetic_task one line", lambda: data.synthetic_task(1), ValueError, "n_lines"),
    ("synthetic_task a tokenizer without its characters", lambda: data.synthetic_task(
        10, tokenizer=data.CharTokenizer("abc")), ValueError, "is not in the tokenizer's alphabet"),
    # toy_moe
    ("ToyConfig dim 0", lambda: toy_moe.ToyConfig(dim=0), ValueError, "dim"),
    ("ToyConfig top_k > n_experts", lambda: toy_moe.ToyConfig(top_k=9), ValueError, "top_k"),
    ("ToyConfig noise NaN", lambda: toy_moe.ToyConfig(noise=NAN), ValueError, "noise"),
    ("ToyConfig lr 0", lambda: toy_moe.ToyConfig(lr=0.0), ValueError, "lr"),
    ("ToyConfig batch float", lambda: toy_moe.ToyConfig(batch_size=256.0), TypeError, "batch_size"),
    ("ClusterTask not a config", lambda: toy_moe.ClusterTask({"dim": 3}), TypeError, "ToyConfig"),
    ("ClusterTask.sample 0", lambda: toy_moe.ClusterTask(toy_moe.ToyConfig()).sample(0, G), ValueError, "n_tokens"),
    ("ClusterTask.sample float", lambda: toy_moe.ClusterTask(toy_moe.ToyConfig()).sample(2.5, G), TypeError,
     "n_tokens"),
    ("make_toy_moe not a config", lambda: toy_moe.make_toy_moe(None, None), TypeError, "ToyConfig"),
    ("train_toy_moe alpha inf", lambda: toy_moe.train_toy_moe("aux", 2, alpha=INF), ValueError, "alpha"),
    ("train_toy_moe gamma NaN", lambda: toy_moe.train_toy_moe("loss_free", 2, gamma=NAN), ValueError, "gamma"),
    ("train_toy_moe mode", lambda: toy_moe.train_toy_moe("aux_free", 2), ValueError, "mode"),
    ("train_toy_moe steps 0", lambda: toy_moe.train_toy_moe("none", 0), ValueError, "steps"),
    ("train_toy_moe eval tokens 0", lambda: toy_moe.train_toy_moe("none", 2, n_eval_tokens=0), ValueError,
     "n_eval_tokens"),
    ("smooth window float", lambda: toy_moe.smooth(torch.ones(5), 2.5), TypeError, "window"),
    ("smooth 2-D", lambda: toy_moe.smooth(torch.ones(5, 2)), ValueError, "1-D"),
    ("smooth NaN", lambda: toy_moe.smooth(torch.tensor([1.0, NAN])), ValueError, "NaN"),
    ("expert_popularity 0", lambda: toy_moe.expert_popularity(0), ValueError, "n_experts"),
    ("skewed_scores empty", lambda: toy_moe.skewed_scores(0, 8, 1.0, G), ValueError, "n_tokens"),
    ("skewed_scores skew NaN", lambda: toy_moe.skewed_scores(4, 8, NAN, G), ValueError, "skew"),
    ("simulate gamma inf", lambda: toy_moe.simulate_bias_balancing(2, gamma=INF), ValueError, "gamma"),
    ("simulate top_k > n_experts", lambda: toy_moe.simulate_bias_balancing(2, n_experts=4, top_k=5), ValueError,
     "top_k"),
    ("simulate n_tokens 0", lambda: toy_moe.simulate_bias_balancing(2, n_tokens=0), ValueError, "n_tokens"),
    ("simulate skew NaN", lambda: toy_moe.simulate_bias_balancing(2, skew=NAN), ValueError, "skew"),
    # compute
    ("training_flops inf", lambda: compute.training_flops(INF, 1e12), ValueError, "activated_params"),
    ("training_flops string", lambda: compute.training_flops("37e9", 1e12), TypeError, "activated_params"),
    ("achieved_flops_per_gpu 0 hours", lambda: compute.achieved_flops_per_gpu(37e9, 1e12, 0), ValueError, "gpu_hours"),
    ("gpu_utilisation NaN peak", lambda: compute.gpu_utilisation(37e9, 1e12, 1e6, NAN), ValueError, "peak_flops"),
    ("training_cost mapping of strings", lambda: compute.training_cost({"pre": "1"}, 2.0), TypeError, "gpu_hours"),
    ("training_cost empty mapping", lambda: compute.training_cost({}, 2.0), ValueError, "gpu_hours"),
    ("training_cost negative price", lambda: compute.training_cost(1.0, -2.0), ValueError, "price_per_gpu_hour"),
    # param_count
    ("ModelSizes negative", lambda: param_count.ModelSizes(**{**V3_ARGS, "hidden_size": -1}), ValueError,
     "hidden_size"),
    ("ModelSizes bool", lambda: param_count.ModelSizes(**{**V3_ARGS, "n_routed_experts": True}), TypeError,
     "n_routed_experts must be an int"),
    ("ModelSizes q_lora_rank negative", lambda: param_count.ModelSizes(**{**V3_ARGS, "q_lora_rank": -5}), ValueError,
     "q_lora_rank"),
    ("ModelSizes tie string", lambda: param_count.ModelSizes(**{**V3_ARGS, "tie_word_embeddings": "no"}), TypeError,
     "tie_word_embeddings"),
    ("moe_ffn_params negative", lambda: param_count.moe_ffn_params(-8, 4, 8, 1, 2), ValueError, "dim"),
    ("moe_ffn_params float", lambda: param_count.moe_ffn_params(8.5, 4, 8, 1, 2), TypeError, "dim"),
    ("moe_ffn_params top_k > n", lambda: param_count.moe_ffn_params(8, 4, 8, 1, 9), ValueError, "top_k"),
    ("attention_params not sizes", lambda: param_count.attention_params({"hidden_size": 8}), TypeError, "ModelSizes"),
    ("param_breakdown not sizes", lambda: param_count.param_breakdown(None), TypeError, "ModelSizes"),
    ("count_params not sizes", lambda: param_count.count_params(V3_ARGS), TypeError, "ModelSizes"),
    # the parallel area and the experts' dispatch
    ("routed_experts unknown implementation", lambda: dispatch.routed_experts(
        torch.ones(3, 8), torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.long), torch.ones(4, 16, 8),
        torch.ones(4, 16, 8), torch.ones(4, 8, 16), torch.zeros(4), implementation="fast"), ValueError,
     "implementation must be one of"),
    ("init_process_group rank out of range", lambda: distributed.init_process_group(4, 4, 29500), ValueError,
     "rank must lie in [0, world_size=4)"),
    ("init_from_env unknown backend", lambda: distributed.init_from_env("mpi"), ValueError, "backend must be one of"),
    ("run_ranks a lambda", lambda: distributed.run_ranks(lambda rank: None, 2), ValueError, "cannot be found"),
    ("send_splits uneven experts", lambda: placement.send_splits(torch.zeros(3, 2, dtype=torch.long), 6, 4),
     ValueError, "must be divisible by world_size=4"),
    ("expert_ranks float indices", lambda: placement.expert_ranks(torch.zeros(3, 2), 8, 4), TypeError, "indices"),
    ("destination_nodes uneven nodes", lambda: placement.destination_nodes(torch.zeros(3, 2, dtype=torch.long), 8, 4, 3),
     ValueError, "ranks_per_node=3"),
    ("dispatch_plan rank out of range", lambda: placement.dispatch_plan(torch.zeros(3, 2, dtype=torch.long), 8, 4, 2, 4),
     ValueError, "rank must lie in [0, world_size=4)"),
    ("traffic expert out of range", lambda: traffic.traffic(torch.full((3, 2), 9), torch.zeros(3, dtype=torch.long),
                                                            8, 4, 2, 16), ValueError, "9"),
    ("all_to_all rows and splits differ", lambda: ep_layer.all_to_all(torch.ones(3, 2), [3], [2]), ValueError,
     "x has 3 rows but send_splits [2] sum to 2"),
    # pipeline schedules and their simulator
    ("gpipe no stages", lambda: pipeline.gpipe(0, 4), ValueError, "n_stages must be an int >= 1"),
    ("one_f_one_b too few micro-batches", lambda: pipeline.one_f_one_b(4, 3), ValueError,
     "1F1B with n_stages=4 needs n_micro_batches >= 4, got 3"),
    ("zb1p float micro-batches", lambda: pipeline.zb1p(4, 8.0), TypeError, "n_micro_batches must be an int"),
    ("dualpipe odd stage count", lambda: pipeline.dualpipe(5, 20), ValueError, "DualPipe needs an even n_stages"),
    ("dualpipe odd micro-batch count", lambda: pipeline.dualpipe(4, 9), ValueError, "even n_micro_batches"),
    ("dualpipe too few micro-batches", lambda: pipeline.dualpipe(8, 10), ValueError, "n_micro_batches >= 16"),
    ("dualpipev too few micro-batches", lambda: pipeline.dualpipev(8, 6), ValueError, "n_micro_batches >= 8"),
    ("simulate not a schedule", lambda: pipeline_simulator.simulate([["F0"]], pipeline_simulator.Costs()), TypeError,
     "schedule must be a Schedule"),
    ("Costs negative", lambda: pipeline_simulator.Costs(F=-1.0), ValueError, "F must be >= 0"),
    ("Costs W longer than B", lambda: pipeline_simulator.Costs(B=1.0, W=2.0), ValueError, "W=2.0, B=1.0"),
    ("Costs send string", lambda: pipeline_simulator.Costs(send="1"), TypeError, "send must be a number"),
    ("gantt not a timeline", lambda: pipeline_plots.gantt(pipeline.one_f_one_b(2, 2)), TypeError,
     "timeline must be a simulator.Timeline"),
    ("StageModule model with MTP", lambda: pipeline_stages.StageModule(tiny_model(), 0, 2), ValueError,
     "build it with mtp_depth=0"),
    ("StageModule stage out of range", lambda: pipeline_stages.StageModule(tiny_model(mtp_depth=0), 2, 2), ValueError,
     "stage must lie in [0, n_stages=2), got 2"),
    ("reference_step float tokens", lambda: pipeline_stages.reference_step(tiny_model(mtp_depth=0), torch.ones(2, 5)),
     TypeError, "tokens must be an int64 tensor"),
    ("reference_step uneven micro-batches", lambda: pipeline_stages.reference_step(
        tiny_model(mtp_depth=0), torch.zeros(6, 5, dtype=torch.long), 4), ValueError,
     "must split into n_micro_batches=4 micro-batches of equal size"),
    ("run_pipeline unknown schedule", lambda: pipeline_run.run_pipeline(tiny_model(mtp_depth=0),
                                                                        torch.zeros(4, 5, dtype=torch.long), "GPipe"),
     ValueError, "schedule must be one of ['1F1B', 'DualPipeV', 'ZB1P']"),
    ("run_pipeline uneven micro-batches", lambda: pipeline_run.run_pipeline(
        tiny_model(mtp_depth=0), torch.zeros(6, 5, dtype=torch.long), "1F1B", 2, 4), ValueError,
     "must split into n_micro_batches=4 micro-batches of equal size"),
    ("run_pipeline too few micro-batches for DualPipeV", lambda: pipeline_run.run_pipeline(
        tiny_model(mtp_depth=0), torch.zeros(4, 5, dtype=torch.long), "DualPipeV", 2, 2), ValueError,
     "DualPipeV with n_stages=4 needs n_micro_batches >= 4, got 2"),
    # FP8 and speculative decoding's acceptance rules
    ("fp8_max not an FP8 dtype", lambda: quantization.fp8_max(torch.float16), TypeError, "float8_e4m3fn"),
    ("fp8_grid not an FP8 dtype", lambda: quantization.fp8_grid(torch.float32), TypeError, "float8_e4m3fn"),
    ("tile_shape unknown granularity", lambda: quantization.tile_shape("row", (4, 128)), ValueError, "granularity"),
    ("quantize NaN", lambda: quantization.quantize(nan_tensor(2, 128)), ValueError, "non-finite"),
    ("fake_quantize integer x", lambda: quantization.fake_quantize(torch.ones(2, 128, dtype=torch.long)), TypeError,
     "float tensor"),
    ("relative_error shapes differ", lambda: quantization.relative_error(torch.ones(2), torch.ones(3)), ValueError,
     "one shape"),
    ("scaled_matmul plain tensors", lambda: linear.scaled_matmul(torch.ones(2, 128), torch.ones(2, 128)), TypeError,
     "Quantized"),
    ("fp8_linear mismatched weight", lambda: linear.fp8_linear(torch.ones(2, 128), torch.ones(4, 64)), ValueError,
     "weight [N, K]"),
    ("to_fp8 not a module", lambda: linear.to_fp8("model"), TypeError, "torch.nn.Module"),
    ("round_mantissa 60 bits", lambda: accumulation.round_mantissa(torch.ones(3, dtype=torch.float64), 60), ValueError,
     "0..52"),
    ("accumulate unknown rounding", lambda: accumulation.accumulate(torch.ones(4), rounding="up"), ValueError,
     "rounding"),
    ("fp8_products mismatched", lambda: accumulation.fp8_products(torch.ones(2, 128), torch.ones(3, 64)), ValueError,
     "b [N, K]"),
    ("accept_greedy one main token short", lambda: speculative.accept_greedy(torch.zeros(2, dtype=torch.long),
                                                                             torch.zeros(2, dtype=torch.long)),
     ValueError, "main_tokens [d + 1]"),
    ("accept_sampled integer probabilities", lambda: speculative.accept_sampled(
        torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, 4, dtype=torch.long), torch.ones(1, 2, 4, dtype=torch.long)),
     TypeError, "floating-point probabilities"),
    # serving: EPLB, the placement's loads, a day of serving
    ("rebalance_experts fewer replicas than experts", lambda: eplb.rebalance_experts(torch.ones(1, 8), 4, 1, 1, 4),
     ValueError, "at least one replica"),
    ("rebalance_experts GPUs do not divide replicas", lambda: eplb.rebalance_experts(torch.ones(1, 8), 10, 1, 1, 4),
     ValueError, "num_gpus (4) must divide num_replicas (10)"),
    ("rebalance_experts groups do not divide experts", lambda: eplb.rebalance_experts(torch.ones(1, 8), 8, 3, 1, 4),
     ValueError, "num_groups (3) must divide"),
    ("rebalance_experts nodes do not divide GPUs", lambda: eplb.rebalance_experts(torch.ones(1, 8), 12, 2, 2, 3),
     ValueError, "num_nodes (2) must divide num_gpus (3)"),
    ("rebalance_experts negative load", lambda: eplb.rebalance_experts(torch.tensor([[1.0, -2.0]]), 2, 1, 1, 1),
     ValueError, "loads >= 0"),
    ("rebalance_experts NaN load", lambda: eplb.rebalance_experts(torch.tensor([[1.0, NAN]]), 2, 1, 1, 1),
     ValueError, "finite loads"),
    ("rebalance_experts inf load", lambda: eplb.rebalance_experts(torch.tensor([[INF, 1.0]]), 2, 1, 1, 1),
     ValueError, "finite loads"),
    ("rebalance_experts 1-D weight", lambda: eplb.rebalance_experts(torch.ones(8), 8, 1, 1, 1), ValueError,
     "[layers, n_experts]"),
    ("rebalance_experts list weight", lambda: eplb.rebalance_experts([[1.0, 2.0]], 2, 1, 1, 1), TypeError,
     "real tensor"),
    ("rebalance_experts float replicas", lambda: eplb.rebalance_experts(torch.ones(1, 2), 2.0, 1, 1, 1), TypeError,
     "num_replicas must be an int"),
    ("static_placement GPUs do not divide", lambda: expert_placement.static_placement(1, 6, 4), ValueError,
     "num_gpus (4) must divide"),
    ("gpu_experts float phy2log", lambda: expert_placement.gpu_experts(torch.zeros(1, 4), 2), TypeError,
     "integer tensor"),
    ("gpu_loads expert without a slot", lambda: expert_placement.gpu_loads(
        torch.ones(1, 3), torch.tensor([[0, 1, 1, 0]]), 2), ValueError, "at least one slot"),
    ("gpu_loads expert out of range", lambda: expert_placement.gpu_loads(
        torch.ones(1, 2), torch.tensor([[0, 1, 2, 1]]), 2), ValueError, "[0, 1]"),
    ("gpu_loads layers differ", lambda: expert_placement.gpu_loads(
        torch.ones(2, 2), torch.tensor([[0, 1]]), 2), ValueError, "layers"),
    ("imbalance no load", lambda: expert_placement.imbalance(torch.zeros(1, 4)), ValueError, "no load"),
    ("ServingDay more hits than input", lambda: serving_costs.ServingDay(
        1.0, 8, 2.0, 10.0, 20.0, 1.0, 0.1, 0.5, 2.0, 1e3, 1e3), ValueError, "cannot exceed input_tokens"),
    ("ServingDay zero nodes", lambda: dataclasses.replace(serving_costs.DAY6, nodes=0.0), ValueError, "nodes"),
    ("gpu_cost not a day", lambda: serving_costs.gpu_cost(87_072), TypeError, "ServingDay"),
    ("revenue not a day", lambda: serving_costs.revenue({"input_tokens": 1}), TypeError, "ServingDay"),
    ("cost_profit_margin not a day", lambda: serving_costs.cost_profit_margin(None), TypeError, "ServingDay"),
    ("nodes_implied not a day", lambda: serving_costs.nodes_implied("day 6"), TypeError, "ServingDay"),
    ("revenue_rounding negative step", lambda: serving_costs.revenue_rounding(serving_costs.DAY6, -1.0), ValueError,
     "step"),
    ("with_cache_hit_share 1", lambda: serving_costs.with_cache_hit_share(serving_costs.DAY6, 1.0), ValueError,
     "[0, 1)"),
    ("with_decode_speedup 0", lambda: serving_costs.with_decode_speedup(serving_costs.DAY6, 0.0), ValueError,
     "speedup"),
    ("kv_cache_bytes tile does not divide", lambda: serving_costs.kv_cache_bytes(100, 64, True, 128), ValueError,
     "tile (128) must divide"),
    ("kv_cache_bytes fp8 not bool", lambda: serving_costs.kv_cache_bytes(512, 64, "yes"), TypeError, "fp8"),
    ("tokens_cached NaN memory", lambda: serving_costs.tokens_cached(NAN, 1152), ValueError, "memory_bytes"),
    # post-training (GRPO)
    ("group_advantages groups of one", lambda: grpo.group_advantages(torch.ones(4, 1)), ValueError, "G >= 2"),
    ("group_advantages NaN", lambda: grpo.group_advantages(nan_tensor(2, 4)), ValueError, "NaN"),
    ("kl_estimator shapes", lambda: grpo.kl_estimator(torch.zeros(3), torch.zeros(2)), ValueError, "same shape"),
    ("grpo_loss empty completion", lambda: grpo.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                                                          torch.ones(2), torch.tensor([[True] * 3, [False] * 3])),
     ValueError, "no token in the mask"),
    ("grpo_loss mismatched shapes", lambda: grpo.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3),
                                                           torch.ones(2), torch.ones(2, 3, dtype=torch.bool)),
     ValueError, "old_logp must have logp's shape"),
    ("grpo_loss clip_eps 0", lambda: grpo.grpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                                                    torch.ones(2), torch.ones(2, 3, dtype=torch.bool), clip_eps=0.0),
     ValueError, "clip_eps"),
    ("sample_groups too long", lambda: sampling.sample_groups(tiny_model(), torch.zeros(1, 30, dtype=torch.long), 2, 8),
     ValueError, "exceed the model's context"),
    ("completion_log_probs prompt_len 0", lambda: sampling.completion_log_probs(
        tiny_model(), torch.zeros(2, 6, dtype=torch.long), 0), ValueError, "prompt_len"),
    ("routing_disagreement shapes", lambda: routing_replay.routing_disagreement(
        [torch.zeros(1, 2, 2, dtype=torch.long)], [torch.zeros(1, 3, 2, dtype=torch.long)]), ValueError,
     "same tokens"),
    ("replay_routing float experts", lambda: routing_replay.replay_routing(tiny_model(), [torch.zeros(1, 2, 2)]).__enter__(),
     TypeError, "int64"),
    ("sorting_examples too many", lambda: grpo_rewards.sorting_examples(30, word_len=1), ValueError, "only 26 exist"),
    ("group_rewards not a rollout", lambda: grpo_rewards.group_rewards("abc", ["a"], data.CharTokenizer()), TypeError,
     "Rollout"),
    ("GRPOConfig group of one", lambda: grpo_loop.GRPOConfig(group_size=1), ValueError, "group_size"),
    ("grpo_train prompts of two lengths", lambda: grpo_loop.grpo_train(
        tiny_model(), [("ab", "a"), ("abc", "a")], data.CharTokenizer(), grpo_loop.GRPOConfig(prompts_per_step=1)),
     ValueError, "same length"),
    ("topk_route replayed indices of another shape", lambda: routing.topk_route(
        scores(3, 4), 2, indices=torch.zeros(3, 1, dtype=torch.long)), ValueError, "indices (the experts to replay)"),
]


@pytest.mark.parametrize("call, error, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(call, error, fragment):
    if error is None:  # a call that reports the error its own way (the CLI: one line, status 2)
        assert call()
        return
    with pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value), str(raised.value)


def test_moe_update_bias_with_bad_input_leaves_the_state_alone():
    layer = moe_layer()
    layer.load.copy_(torch.tensor([3.0, NAN, 1.0, 0.0]))
    bias, load = layer.bias.clone(), layer.load.clone()
    for gamma in (0.001, INF):
        with pytest.raises(ValueError):
            layer.update_bias(gamma)
        assert torch.equal(layer.bias, bias) and torch.allclose(layer.load, load, equal_nan=True)


def test_balance_loss_with_all_zero_scores_for_a_token_is_finite_with_a_finite_gradient():
    logits = torch.randn(6, 8)
    logits[2] = -200.0  # sigmoid underflows to exactly 0 for every expert of token 2
    logits.requires_grad_(True)
    assert (torch.sigmoid(logits)[2] == 0).all()
    for loss_of in (lambda s: balance.balance_loss(s, 2, 0.01),
                    lambda s: balance.sequence_balance_loss(s.view(2, 3, 8), 2, 0.01)):
        loss = loss_of(torch.sigmoid(logits))
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()
    raw = torch.zeros(4, 8, requires_grad=True)  # all-zero scores, gradient taken on the scores themselves
    loss = balance.balance_loss(raw, 2, 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(raw.grad).all()
    # the epsilon changes no float32 number for ordinary scores: the loss is alpha * sum_i f_i P_i without it
    s = torch.rand(64, 8)
    f = torch.zeros_like(s).scatter(-1, s.topk(2, dim=-1).indices, 1.0).sum(dim=0) * (8 / (2 * 64))
    p = (s / s.sum(dim=-1, keepdim=True)).mean(dim=0)
    assert torch.equal(balance.balance_loss(s, 2, 1.0), (f * p).sum())


def package_modules() -> list[types.ModuleType]:
    """Every module of course_lib (``python -m`` entry points left out: importing one runs it)."""
    def fail(name):
        raise ImportError(f"course_lib: {name} does not import")
    infos = pkgutil.walk_packages(course_lib.__path__, "course_lib.", onerror=fail)
    return [course_lib] + [importlib.import_module(i.name) for i in infos if not i.name.endswith(".__main__")]


def boundaries_of(module: types.ModuleType) -> dict[str, Callable]:
    """The boundaries (``@validation.boundary``: they have a ``validator``) that ``module`` defines: its functions
    and the methods of its classes, by dotted name."""
    def is_boundary(obj):
        return inspect.isfunction(obj) and callable(getattr(obj, "validator", None))
    found = {}
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # imported from elsewhere: counted where it is defined
        if is_boundary(obj):
            found[f"{module.__name__}.{name}"] = obj
        elif inspect.isclass(obj):
            for attribute, member in vars(obj).items():
                member = getattr(member, "__func__", member)  # staticmethod, classmethod
                if is_boundary(member):
                    found[f"{module.__name__}.{name}.{attribute}"] = member
    return found


CHECKED = boundary(lambda: None)(lambda: None).__code__  # the code of every boundary's wrapper


def rejecting_boundaries(call: Callable[[], object], boundaries: dict[str, Callable]) -> list[str]:
    """Run ``call``; return the names of the ``boundaries`` whose own validator raised the error it ended with: in
    its traceback, the wrapper of a boundary (a frame that holds its ``__wrapped__``) calling its ``validator``."""
    try:
        call()
    except Exception as error:  # noqa: BLE001  (any error: the rows expect several types)
        frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    else:
        return []
    by_function = {}  # every layer of a boundary's wrappers (under torch.no_grad, over a context decorator)
    for name, fn in boundaries.items():
        while hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
            by_function[id(fn)] = name
    return [name for outer, inner in zip(frames, frames[1:]) if outer.f_code is CHECKED
            for name in {by_function.get(id(value)) for value in outer.f_locals.values()} - {None}
            if inner.f_code is getattr(boundaries[name].validator, "__code__", None)]


def test_every_boundary_has_a_row_that_its_validator_rejects():
    """Each ``@boundary`` of the package (a function or method where a user's input enters) has at least one row
    whose call raises from that boundary's own validator, not from another's or from the math."""
    boundaries = {name: fn for module in package_modules() for name, fn in boundaries_of(module).items()}
    rejected = {name for _, call, _, _ in CASES for name in rejecting_boundaries(call, boundaries)}
    missing = sorted(set(boundaries) - rejected)
    assert not missing, f"boundaries with no bad-input row that their validator rejects: {missing}"


def test_the_sweep_tells_which_boundary_rejected_a_call():
    """The two helpers above on a module made here: a method and a function found, a validator skipped inside
    another boundary or an error of the math not counted, two boundaries sharing one validator told apart."""
    def positive(x):
        check_int("x", x, 1)

    @boundary(positive)
    def outer(x):
        return inner(x - 1)

    @boundary(positive)
    def inner(x):
        return 1 // x

    class Layer:
        @boundary(lambda self, x: positive(x))
        def forward(self, x):
            return x

    module = types.ModuleType("made_here")
    outer.__module__ = inner.__module__ = Layer.__module__ = "made_here"
    module.outer, module.inner, module.Layer, module.positive = outer, inner, Layer, positive
    found = boundaries_of(module)
    assert set(found) == {"made_here.outer", "made_here.inner", "made_here.Layer.forward"}
    assert rejecting_boundaries(lambda: outer(0), found) == ["made_here.outer"]
    assert rejecting_boundaries(lambda: inner(0), found) == ["made_here.inner"]
    assert rejecting_boundaries(lambda: outer(1), found) == []  # inner(0) from inside: 1 // 0 raises
    assert rejecting_boundaries(lambda: Layer().forward(0), found) == ["made_here.Layer.forward"]
    assert rejecting_boundaries(lambda: outer(2), found) == []  # no error


TESTS = Path(__file__).parent


def package_names(fn: Callable, code: types.CodeType | None = None, seen: set | None = None
                  ) -> tuple[list[str], list[str]]:
    """The names a row's call ``fn`` reads from course_lib, and those course_lib does not have: a global that is a
    course_lib module, class or function, followed by the attributes read from it (``routing.topk_route``,
    ``ModelConfig.from_dict``); the helpers of tests/ the call uses (``moe_layer``, ``tiny_model``) are read too."""
    code, namespace = code or fn.__code__, fn.__globals__
    seen = set() if seen is None else seen
    reached, missing, chain, value = [], [], [], None
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_ATTR", "LOAD_METHOD") and chain:
            chain.append(instruction.argval)
            if not hasattr(value, instruction.argval):
                missing.append(".".join(chain))
                chain = []
            else:
                value = getattr(value, instruction.argval)
                reached.append(".".join(chain))
            continue
        chain = []
        if instruction.opname != "LOAD_GLOBAL":
            continue
        name = instruction.argval
        if name not in namespace:
            if not hasattr(builtins, name):
                missing.append(name)
            continue
        value = namespace[name]
        if any(str(getattr(value, key, "")).startswith("course_lib") for key in ("__name__", "__module__")):
            chain = [name]
            reached.append(name)
        elif inspect.isfunction(value) and Path(value.__code__.co_filename).parent == TESTS \
                and value.__code__ not in seen:
            seen.add(value.__code__)
            more = package_names(value, None, seen)
            reached, missing = reached + more[0], missing + more[1]
    for constant in code.co_consts:  # nested functions and comprehensions
        if isinstance(constant, types.CodeType):
            more = package_names(fn, constant, seen)
            reached, missing = reached + more[0], missing + more[1]
    return reached, missing


def test_every_row_calls_what_the_package_has():
    """A row whose function, class or method was renamed or removed fails here by name (not as an
    AttributeError in its own test), and every row calls something of course_lib."""
    wrong = {}
    for name, call, _, _ in CASES:
        reached, missing = package_names(call)
        if missing or not reached:
            wrong[name] = missing or "calls nothing of course_lib"
    assert not wrong, f"bad-input rows that call what course_lib does not have: {wrong}"


def test_a_row_naming_a_removed_function_is_found():
    assert package_names(lambda: routing.topk_route(scores(4, 8), 2))[1] == []
    assert package_names(lambda: routing.topk_routing(scores(4, 8), 2))[1] == ["routing.topk_routing"]
    assert package_names(lambda: ModelConfig.from_dicts({}))[1] == ["ModelConfig.from_dicts"]
    assert package_names(lambda: moe_layer(dim=8.5))[0] == ["moe", "moe.DeepSeekMoE"]
    assert "TinyDeepSeek" in package_names(lambda: tiny_model()(torch.ones(1, 4)))[0]  # through tests/tiny_models.py
    assert package_names(lambda: no_such_helper())[1] == ["no_such_helper"]  # noqa: F821
