"""A tiny DeepSeek-V3-style language model, assembled from the course's parts.

    tokens [B, T] -> Embedding -> n_layers x TransformerBlock -> RMSNorm -> output head -> logits [B, T, vocab]

Each TransformerBlock (``transformer``) is causal self-attention and a feed-forward part: the first
``n_dense_layers`` use a dense SwiGLU (``layers.SwiGLU``), the others a DeepSeekMoE layer (``moe.DeepSeekMoE``:
shared experts, sigmoid-routed experts, the loss-free balancing bias), as in [V3] 2.1.2 where the first 3 of 61
layers are dense. ``mtp_depth = D`` adds D Multi-Token Prediction modules (``mtp.MTPModule``, [V3] 2.2) that share
the embedding and the output head. The attention is standard multi-head attention with RoPE by default
(``attention="mha"``) or V3's Multi-head Latent Attention (``attention="mla"``, [V3] 2.1.1), whose KV cache is
a fraction of MHA's. ``new_cache`` makes the KV cache for incremental decoding, which ``generate`` uses.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.model import arguments, mtp
from course_lib.attention.cache import KVCache
from course_lib.attention.mha import MultiHeadAttention
from course_lib.attention.mla import MultiHeadLatentAttention
from course_lib.attention.yarn import YarnScaling
from course_lib.core.layers import RMSNorm, SwiGLU
from course_lib.moe.layer import DeepSeekMoE
from course_lib.headline.param_count import moe_ffn_params
from course_lib.model.block import TransformerBlock
from course_lib.core.runtime import eval_mode
from course_lib.core.validation import boundary


@dataclass(frozen=True)
class ModelConfig:
    """The sizes of the tiny model. The defaults train to readable text in about a minute on 2 CPU cores (600 steps)."""

    vocab_size: int = 96
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_dense_layers: int = 1  # the first layers use a dense FFN ([V3]: 3 of 61)
    dense_hidden: int = 0  # hidden size of the dense FFN; 0 = (top_k + n_shared) * expert_dim, an MoE layer's activated FFN
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    top_k: int = 2  # K_r: routed experts per token
    expert_dim: int = 64  # hidden size of each expert
    n_groups: int = 1  # group-limited routing ([V3]: 8 groups, 4 kept); 1 = off
    topk_groups: int = 1
    route_scale: float = 1.0  # [CODE] multiplies the gates by 2.5; the paper does not
    max_seq_len: int = 256
    mtp_depth: int = 0  # D, the number of MTP modules ([V3]: 1)
    attention: str = "mha"  # "mha" (multi-head attention with RoPE) or "mla" (Multi-head Latent Attention)
    # MLA sizes ([V3] 2.1.1; V3: 1536, 512, 128, 64, 128 with 128 heads of a 7168 model), used when attention="mla"
    q_lora_rank: int = 96  # d_c': the query latent; 0 = no query compression (one W^Q, as DeepSeek-V2-Lite)
    kv_lora_rank: int = 64  # d_c: the cached key-value latent
    qk_nope_head_dim: int = 32  # d_h: per-head query/key part without RoPE
    qk_rope_head_dim: int = 16  # d_h^R: the decoupled RoPE part (per head for queries, one shared key)
    v_head_dim: int = 32  # per-head value size
    # MLA's form: False up-projects the cached latents to keys and values (training, prefill); True attends over
    # the latents with W^UK and W^UV absorbed (the released code's decode mode, [CODE]); the same outputs
    mla_absorb: bool = False
    # YaRN on MLA's decoupled RoPE parts ([V3] 4.3, notebook 11): None = plain RoPE; a YarnScaling extends a model
    # trained at yarn.original_seq_len to max_seq_len (attention="mla" only)
    yarn: YarnScaling | None = None

    def __post_init__(self) -> None:
        arguments.model_config(self)

    @property
    def ffn_hidden(self) -> int:
        """Hidden size of the dense layers' SwiGLU."""
        return self.dense_hidden or (self.top_k + self.n_shared_experts) * self.expert_dim

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    def dense_baseline(self) -> ModelConfig:
        """The dense model with the same activated parameters: every layer a SwiGLU whose hidden size is that of
        the shared plus top_k routed experts. It lacks only the router's centroids (n_routed x dim per layer)."""
        return dataclasses.replace(self, n_dense_layers=self.n_layers, dense_hidden=self.ffn_hidden)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from ``dataclasses.asdict`` output; unknown keys raise ValueError, a non-dict TypeError."""
        if not isinstance(values, dict):
            raise TypeError(f"ModelConfig.from_dict expects a dict of fields, got {type(values).__name__}")
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        if isinstance(values.get("yarn"), dict):  # asdict turned the YarnScaling into a dict
            values = {**values, "yarn": YarnScaling(**values["yarn"])}
        return cls(**values)


def temperature_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) over the last axis, in float64, for every temperature > 0 down to the
    smallest positive float: the distribution that decoding with a temperature samples from.

    logits: float [..., V] of any float dtype (entries may be -inf, e.g. masked by top-k; at least one finite per
    row) -> float64 [..., V] on the same device. Computed as softmax((logits - max) / temperature) in float64:
    the shifted logits are <= 0 and the largest is exactly 0, so dividing by a tiny temperature gives 0 for the
    argmax and a very negative number or -inf for the rest, never inf or inf - inf (NaN). As temperature -> 0 the
    distribution becomes one-hot on the argmax (uniform over tied maxima): greedy decoding. Elsewhere it is
    softmax(logits / temperature) up to float64 rounding, far below the logits' own (float32 or narrower).
    The caller validates the temperature (``check_number(..., 0, strict=True)``).
    """
    wide = logits.double()
    return F.softmax((wide - wide.amax(-1, keepdim=True)) / temperature, dim=-1)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One sampling step of decoding: the next token of each row from softmax(logits / temperature)
    (``temperature_softmax``) restricted to the row's top_k most likely tokens (all when None).

    logits: float [B, V] on the CPU (``generator`` is a CPU torch.Generator) -> int64 [B, 1]. ``generate`` and
    the batched sampling of ``post_training.sampling`` share it; their boundaries validate the settings.
    """
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(temperature_softmax(logits, temperature), 1, generator=generator)


class ModelCache:
    """The KV cache of a whole TinyDeepSeek (make it with ``model.new_cache(batch_size)``).

    blocks: one ``attention.KVCache`` per main block, first to last; mtp: one per MTP module's block (depth 1
    first; the model never fills them, speculative decoding does). ``length`` is the main blocks' (tokens the
    model has read), ``nbytes`` the bytes of every layer, ``truncate(length)`` drops the positions >= length in
    every layer (the MTP caches that hold fewer keep theirs).
    """

    def __init__(self, model: TinyDeepSeek, blocks: list[KVCache], mtp: list[KVCache]) -> None:
        self._model = weakref.ref(model)
        self.blocks, self.mtp = blocks, mtp

    def belongs_to(self, model: nn.Module) -> bool:
        return self._model() is model

    @property
    def batch_size(self) -> int:
        return self.blocks[0].batch_size

    @property
    def length(self) -> int:
        return self.blocks[0].length

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self.blocks + self.mtp)

    @boundary(arguments.cache_length)
    def truncate(self, length: int) -> None:
        for cache in self.blocks + self.mtp:
            cache.truncate(min(length, cache.length))

    def __repr__(self) -> str:
        return (f"ModelCache({len(self.blocks)} blocks + {len(self.mtp)} MTP, kind={self.blocks[0].kind!r}, "
                f"batch_size={self.batch_size}, length={self.length}, nbytes={self.nbytes})")


class TinyDeepSeek(nn.Module):
    """The model. forward(tokens [B, T] int64, cache=None) -> logits [B, T, vocab_size]; ``losses`` adds the MTP
    depths; ``new_cache`` and ``generate`` decode incrementally."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"TinyDeepSeek needs a ModelConfig, got {type(config).__name__}")
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.blocks = nn.ModuleList(  # the FFN is made before the attention, as in the MHA-only model
            TransformerBlock(c.dim, c.n_heads, ffn=self._ffn(layer), attn=self._attention())
            for layer in range(c.n_layers))
        self.norm = RMSNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.mtp_modules = nn.ModuleList(  # TRM_k: a block with a dense FFN (V3's MTP block is an MoE block)
            mtp.MTPModule(k, self.embed, self.head, TransformerBlock(c.dim, c.n_heads, ffn=SwiGLU(c.dim, c.ffn_hidden),
                                                                     attn=self._attention()))
            for k in range(1, c.mtp_depth + 1))
        nn.init.normal_(self.embed.weight, std=0.02)

    def _ffn(self, layer: int) -> nn.Module:
        c = self.config
        if layer < c.n_dense_layers:
            return SwiGLU(c.dim, c.ffn_hidden)
        return DeepSeekMoE(c.dim, c.expert_dim, c.n_routed_experts, c.n_shared_experts, c.top_k,
                           c.n_groups, c.topk_groups, c.route_scale)

    def _attention(self) -> nn.Module:
        c = self.config
        if c.attention == "mla":
            return MultiHeadLatentAttention(c.dim, c.n_heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim,
                                            c.qk_rope_head_dim, c.v_head_dim, c.max_seq_len, absorb=c.mla_absorb,
                                            yarn=c.yarn)
        return MultiHeadAttention(c.dim, c.n_heads, c.max_seq_len)

    def moe_layers(self) -> list[DeepSeekMoE]:
        """The DeepSeekMoE layers of the main model, first to last."""
        return [block.ffn for block in self.blocks if isinstance(block.ffn, DeepSeekMoE)]

    def new_cache(self, batch_size: int = 1) -> ModelCache:
        """An empty KV cache for ``batch_size`` sequences, in the dtype and on the device of the weights: one
        ``KVCache`` per main block and per MTP module's block. Make it after moving the model (.to, .double)."""
        return ModelCache(self, [block.attn.new_cache(batch_size) for block in self.blocks],
                          [module.block.attn.new_cache(batch_size) for module in self.mtp_modules])

    @boundary(arguments.hidden_states)
    def hidden_states(self, tokens: torch.Tensor, cache: ModelCache | None = None) -> torch.Tensor:
        """tokens [B, T] int64 -> the last block's output h^0 [B, T, dim] (before the final RMSNorm).

        With a cache (from ``new_cache``) holding L tokens, ``tokens`` are the T new ones, at positions
        L..L+T-1 (L + T <= max_seq_len); every block appends them to its cache. Raises TypeError/ValueError
        (``arguments.hidden_states``) for tokens that are not int64 [B >= 1, 1 <= T <= max_seq_len] in the
        vocabulary, a cache of another model or of another batch size, and L + T > max_seq_len.
        """
        h = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            h = block(h, None if cache is None else cache.blocks[i])
        return h

    @boundary(arguments.forward)
    def forward(self, tokens: torch.Tensor, cache: ModelCache | None = None) -> torch.Tensor:
        """tokens [B, T] int64 (the new ones when a cache is given) -> logits [B, T, vocab_size]. Raises as
        ``hidden_states``."""
        return self.head(self.norm(self.hidden_states(tokens, cache)))

    @boundary(arguments.losses)
    def losses(self, tokens: torch.Tensor, mtp_lambda: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
        """(main loss, weighted MTP loss) of a batch of windows tokens [B, T + 1] (t_1 .. t_{T+1}).

        main: the next-token cross-entropy of the main head, mean over the B x T positions.
        MTP: (mtp_lambda / D) * sum_k L_k ([V3] eq. 25), 0 when D = 0. Depth k reads the previous depth's hidden
        states at positions 1..T-k and the embeddings of t_{k+1}..t_T, and predicts t_{k+2}..t_{T+1}.
        Raises TypeError / ValueError (``arguments.losses``) for tokens that are not int64 [B >= 1, T + 1 >= 2] in
        the vocabulary and for an mtp_lambda that is not a finite number >= 0. Non-finite weights give a
        non-finite loss, or ``validation.NonFiniteError`` from an FP8 layer: ``training.step.train_step`` reports
        both as TrainingDiverged.
        """
        inputs = tokens[:, :-1]  # [B, T]
        h = self.hidden_states(inputs)
        main = mtp.mtp_depth_loss(self.head(self.norm(h)), tokens, 0)
        if not self.mtp_modules:
            return main, main.new_zeros(())
        depth_logits = []
        for module in self.mtp_modules:
            h, logits = module(h, inputs)  # h: [B, T - k, dim]; logits [B, T - k, vocab] predict t_{k+2}..t_{T+1}
            depth_logits.append(logits)
        return main, mtp.mtp_loss(depth_logits, tokens, mtp_lambda)

    # ------------------------------------------------------------------------------------------ counting
    def param_breakdown(self) -> dict[str, tuple[int, int]]:
        """Parameters by component: name -> (total, activated for one token), like param_count.param_breakdown.
        The MTP modules are listed apart and are not part of the model's count ([V3] 4.2: 671B main model plus
        14B of MTP module)."""
        c = self.config

        def numel(modules: list[nn.Module]) -> int:
            return sum(p.numel() for m in modules for p in m.parameters())

        moes = self.moe_layers()
        moe_total, moe_active = moe_ffn_params(c.dim, c.expert_dim, c.n_routed_experts, c.n_shared_experts, c.top_k)
        dense = [b.ffn for b in self.blocks if not isinstance(b.ffn, DeepSeekMoE)]
        rest = numel(list(self.blocks)) - numel(dense) - numel(moes)  # attention and the blocks' norms
        parts = {
            "embedding": (numel([self.embed]),) * 2,
            "attention and norms": (rest + numel([self.norm]),) * 2,
            "dense FFN layers": (numel(dense),) * 2,
            "MoE layers": (moe_total * len(moes), moe_active * len(moes)),
            "output head": (numel([self.head]),) * 2,
            "MTP modules": (numel(list(self.mtp_modules)),) * 2,
        }
        return parts

    def count_params(self) -> tuple[int, int]:
        """(total, activated per token) of the main model, MTP modules excluded, as [V3] counts 671B / 37B."""
        parts = {k: v for k, v in self.param_breakdown().items() if k != "MTP modules"}
        return sum(t for t, _ in parts.values()), sum(a for _, a in parts.values())

    # ------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    @boundary(arguments.generate)
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, context: int | None = None,
                 use_cache: bool = True) -> torch.Tensor:
        """Sample a continuation with the main head (the MTP modules are not used), decoding with a KV cache.

        prompt: int64 [T0] -> int64 [T0 + max_new_tokens]. Each step samples from softmax(logits / temperature)
        (``temperature_softmax``: any temperature > 0; near 0 it is greedy decoding) restricted to the top_k most
        likely tokens (all when None), with ``generator`` (a CPU torch.Generator)
        for repeatable samples. The model reads at most the last ``context`` tokens (default max_seq_len; pass the
        training sequence length, since positions beyond it were never trained), at positions 0..context-1.

        The cache makes each new token cost one token's forward instead of the whole window's. While the text
        fits in the context, the cache grows by one token per step. Beyond it the window slides: every position
        in it moves, so the cached keys (rotated for their old positions) no longer apply, and each step re-reads
        the last ``context`` tokens into the emptied cache, as a model without a cache would. The samples are
        those of recomputing the whole window every step (up to float rounding in the logits), which is what
        ``use_cache=False`` does (to measure what the cache saves). Raises TypeError / ValueError
        (``arguments.generate``) for a prompt that is not a non-empty int64 [T0] in the vocabulary and for bad
        settings; the loop then feeds the model its own samples, unchecked.
        """
        context = context or self.config.max_seq_len
        if not 1 <= context <= self.config.max_seq_len:
            raise ValueError(f"context must lie in [1, max_seq_len={self.config.max_seq_len}], got {context}")
        device = next(self.parameters()).device
        tokens = prompt.to(device)
        cache = self.new_cache(1) if use_cache else None
        new = tokens[-context:]  # what the cache has not read yet
        with eval_mode(self):
            for step in range(max_new_tokens):
                logits = self(new[None], cache)[0, -1:].cpu()  # [1, vocab]
                choice = sample_next(logits, temperature, top_k, generator)[0].to(device)  # [1]
                tokens = torch.cat([tokens, choice])
                if cache is not None and cache.length < context:
                    new = choice
                else:  # no cache, or the window slides: read the whole window from position 0
                    if cache is not None:
                        cache.truncate(0)
                    new = tokens[-context:]
        return tokens.cpu()
