"""Training DeepSeek Sparse Attention as DeepSeek-V3.2 was trained ([V32] 2.1.1), from a trained MLA model (V3.2
continued from V3.1-Terminus; here the tiny model of ``model.tiny`` with attention="mla"):

    sparsify(model, H^I, d^I, k)           # every MLA layer becomes a DeepSeekSparseAttention (same weights)
    indexer_warmup_step(model, opt, batch) # 1. dense warm-up: attention stays dense, only the indexers learn,
                                           #    loss sum_layers mean_t KL(p_t || softmax(I_t)) over every causal key
    sparse_training_step(model, opt, indexer_opt, batch)
                                           # 2. sparse training: each query attends to its top-k; the model learns
                                           #    from the language-model loss (``step.train_step``), the indexers from
                                           #    their KL over the selected keys only, their input detached

V3.2: warm-up lr 1e-3, 1000 steps x 16 sequences x 128K tokens; sparse training lr 7.3e-6, k = 2048, 15000 steps
x 480 x 128K tokens. ``attention_recall`` measures what the warm-up buys: the share of the dense attention's mass
that the indexer's top-k holds, against the sliding window of the same k.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
from torch import nn

from course_lib.attention.dsa import DeepSeekSparseAttention
from course_lib.attention.indexer import top_k_selection, window_selection
from course_lib.core.validation import boundary
from course_lib.model.tiny import TinyDeepSeek
from course_lib.training import arguments
from course_lib.training.step import StepResult, train_step


@boundary(arguments.sparsify)
def sparsify(model: TinyDeepSeek, index_n_heads: int, index_head_dim: int, index_topk: int) -> TinyDeepSeek:
    """Give every MLA layer of ``model`` (main blocks and MTP modules) a lightning indexer, in place: each becomes a
    ``DeepSeekSparseAttention`` holding the same weights and a new indexer (``from_mla``), in "sparse" mode.
    Returns the model. Raises TypeError for a model that is not a TinyDeepSeek with attention="mla", ValueError
    as DeepSeekSparseAttention (q_lora_rank 0, index_topk < 1, an indexer head shorter than d_h^R)."""
    blocks = list(model.blocks) + [module.block for module in model.mtp_modules]
    for block in blocks:
        block.attn = DeepSeekSparseAttention.from_mla(block.attn, index_n_heads, index_head_dim, index_topk)
    return model


def dsa_layers(model: nn.Module) -> list[DeepSeekSparseAttention]:
    """The DeepSeekSparseAttention layers of ``model``, first to last."""
    return [module for module in model.modules() if isinstance(module, DeepSeekSparseAttention)]


def indexer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every lightning indexer of ``model`` (what the warm-up trains)."""
    return [p for layer in dsa_layers(model) for p in layer.indexer.parameters()]


def model_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter of ``model`` but the indexers' (what the language-model loss trains)."""
    indexers = {id(p) for p in indexer_parameters(model)}
    return [p for p in model.parameters() if id(p) not in indexers]


@boundary(arguments.set_attention)
def set_attention(model: nn.Module, mode: str, index_topk: int | None = None, track: bool = False) -> None:
    """Set every DSA layer's ``mode`` ("sparse", "dense" or "window"), its index_topk when given, and ``track``
    (keep p_t, I and the indexer's KL loss of each forward). Raises ValueError for another mode or index_topk < 1,
    or a model without DSA layers."""
    for layer in dsa_layers(model):
        layer.mode, layer.track = mode, track
        if index_topk is not None:
            layer.index_topk = index_topk


def summed_index_loss(model: nn.Module) -> torch.Tensor:
    """The sum over the DSA layers of the indexer KL loss of their last tracked forward."""
    return torch.stack([layer.index_loss for layer in dsa_layers(model)]).sum()


@contextmanager
def only_indexers_trainable(model: nn.Module) -> Iterator[None]:
    """Within the block, every parameter but the indexers' has requires_grad False (the rest of the model frozen,
    so autograd records nothing of it); restored on exit."""
    frozen = [p for p in model_parameters(model) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


@boundary(arguments.indexer_warmup_step)
def indexer_warmup_step(model: TinyDeepSeek, optimizer: torch.optim.Optimizer, tokens: torch.Tensor) -> float:
    """One step of the dense warm-up ([V32] 2.1.1) on a batch of windows tokens [B, T + 1] (the last token is not
    read): dense attention, the rest of the model frozen and in eval mode (the MoE routing state does not move),
    ``optimizer`` (over ``indexer_parameters``) steps on the indexers' KL loss summed over the layers. Returns that
    loss. Raises TypeError / ValueError for a model without DSA layers or tokens that do not fit."""
    set_attention(model, "dense", track=True)
    model.eval()
    try:
        with only_indexers_trainable(model):
            optimizer.zero_grad(set_to_none=True)
            model.hidden_states(tokens[:, :-1])
            loss = summed_index_loss(model)
            loss.backward()
            optimizer.step()
    finally:
        set_attention(model, "sparse")
    return loss.item()


class SparseStepResult(NamedTuple):
    """One sparse-training step: the model's step (``step.StepResult``) and the indexers' summed KL loss."""
    model: StepResult
    index_loss: float


@boundary(arguments.sparse_training_step)
def sparse_training_step(model: TinyDeepSeek, optimizer: torch.optim.Optimizer,
                         indexer_optimizer: torch.optim.Optimizer, tokens: torch.Tensor, *, gamma: float = 0.0,
                         grad_clip: float = 1.0) -> SparseStepResult:
    """One step of sparse training ([V32] 2.1.1) on windows tokens [B, T + 1]: every query attends to its top-k;
    ``optimizer`` (over ``model_parameters``) steps on the language-model loss through ``step.train_step`` (its
    balancing update with ``gamma``, its rollback on failure), then ``indexer_optimizer`` (over
    ``indexer_parameters``) on the indexers' KL over the selected keys. Neither loss reaches the other's
    parameters: the top-k selection passes no gradient and the indexers read their input detached."""
    set_attention(model, "sparse", track=True)
    try:
        result = train_step(model, optimizer, [tokens], gamma=gamma, grad_clip=grad_clip)
        index_loss = summed_index_loss(model)
        indexer_optimizer.zero_grad(set_to_none=True)
        index_loss.backward()
        indexer_optimizer.step()
    finally:
        set_attention(model, "sparse")
    return SparseStepResult(result, index_loss.item())


class Recall(NamedTuple):
    """Per DSA layer, the mean share of the dense attention mass (p_t, heads summed and L1-normalised) that falls
    on the indexer's top-k tokens and on the k most recent ones, over the queries with more than k tokens to
    choose from."""
    indexer: list[float]
    window: list[float]


@boundary(arguments.attention_recall)
@torch.no_grad()
def attention_recall(model: TinyDeepSeek, tokens: torch.Tensor, index_topk: int) -> Recall:
    """``Recall`` of the DSA layers of ``model`` on tokens [B, T] (T > index_topk), with dense attention: what the
    indexer's top-``index_topk`` captures of where the model really looks, and what a sliding window of as many
    tokens captures. Raises TypeError / ValueError for a model without DSA layers, tokens that do not fit or an
    index_topk not below T."""
    was_training = model.training
    set_attention(model, "dense", track=True)
    model.eval()
    try:
        model.hidden_states(tokens)
        T = tokens.shape[1]
        window = window_selection(T, T, index_topk, tokens.device)
        indexer, recent = [], []
        for layer in dsa_layers(model):
            p = layer.attention_mass[:, index_topk:]  # [B, T - k, T]: the queries with a choice to make
            chosen = top_k_selection(layer.scores, index_topk)[:, index_topk:]
            indexer.append((p * chosen).sum(-1).mean().item())
            recent.append((p * window[index_topk:]).sum(-1).mean().item())
    finally:
        set_attention(model, "sparse")
        model.train(was_training)
    return Recall(indexer, recent)
