"""The checks at the model's boundaries: one validator per boundary, named after it, taking the boundary's
parameters by name (``core.validation.boundary``). They raise TypeError for a wrong type and ValueError for a
wrong value, naming the argument, what was expected and what was given.

``tokens`` is the one check of token ids (it reads their range back to the host once: an embedding lookup of a
bad id would otherwise fail with an opaque IndexError on the CPU and a device-side assert on CUDA); the model's
entry points, ``training.step.train_step`` and the speculative decoders call it on the tokens a user gives them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from course_lib.core.validation import check_int, check_number
from course_lib.attention import arguments as attention_arguments
from course_lib.moe.arguments import check_route_config, check_route_scale

if TYPE_CHECKING:
    from course_lib.model.tiny import ModelCache, ModelConfig, TinyDeepSeek


# ------------------------------------------------------------------------------------------ the tiny model
def model_config(config: ModelConfig) -> None:
    """``ModelConfig``'s fields: ints >= their minimum, strings, bools, and the relations between them."""
    minimum = dict.fromkeys(("vocab_size", "dim", "n_layers", "n_heads", "n_routed_experts", "top_k",
                             "expert_dim", "n_groups", "topk_groups", "max_seq_len"), 1)
    minimum.update(dict.fromkeys(("n_dense_layers", "dense_hidden", "n_shared_experts", "mtp_depth"), 0))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.type in ("int", int):
            check_int(f.name, value, minimum.get(f.name))
        if f.type in ("str", str) and not isinstance(value, str):
            raise TypeError(f"{f.name} must be a string, got {value!r}")
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise TypeError(f"{f.name} must be True or False, got {value!r}")
    c = config
    if c.n_dense_layers > c.n_layers:
        raise ValueError(f"n_dense_layers={c.n_dense_layers} exceeds n_layers={c.n_layers}")
    if c.attention not in ("mha", "mla"):
        raise ValueError(f"attention must be 'mha' or 'mla', got {c.attention!r}")
    if c.attention == "mha" and c.dim % c.n_heads:
        raise ValueError(f"dim={c.dim} must be divisible by n_heads={c.n_heads} (head_dim = dim / n_heads)")
    if c.attention == "mha" and (c.dim // c.n_heads) % 2:
        raise ValueError(f"RoPE rotates pairs: head_dim = dim / n_heads = {c.dim // c.n_heads} must be even")
    if c.attention == "mla":
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            check_int(name, getattr(c, name), 1)
        check_int("q_lora_rank", c.q_lora_rank, 0)
        if c.qk_rope_head_dim % 2:
            raise ValueError(f"RoPE rotates pairs: qk_rope_head_dim must be even, got {c.qk_rope_head_dim}")
    if c.top_k > c.n_routed_experts:
        raise ValueError(f"top_k={c.top_k} exceeds n_routed_experts={c.n_routed_experts}")
    if c.yarn is not None and c.attention != "mla":
        raise ValueError("yarn scales MLA's decoupled RoPE key: it needs attention='mla'")
    attention_arguments.yarn_setting(c.yarn, c.max_seq_len)
    check_route_config(c.n_routed_experts, c.top_k, c.n_groups, c.topk_groups)
    check_route_scale(c.route_scale)


def check_tokens(model: TinyDeepSeek, tokens: Any, windows: bool = False, what: str = "token ids") -> None:
    """Raise TypeError unless ``tokens`` is an int64 tensor [B, T], ValueError unless B >= 1,
    1 <= T <= max_seq_len and every id lies in [0, vocab_size). ``windows``: tokens are training windows
    [B, T + 1] (t_1 .. t_{T+1}, ``losses``' input), so T + 1 >= 2 columns. One host read-back (the id range)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.dim() != 2:
        layout = "[batch, T + 1] (t_1 .. t_{T+1})" if windows else "[batch, T]"
        raise TypeError(f"tokens must be an int64 tensor {layout}, got {tokens!r:.80}")
    T = tokens.shape[1] - windows
    if tokens.shape[0] == 0 or not 1 <= T <= model.config.max_seq_len:
        layout = "[batch >= 1, T + 1] with" if windows else "[batch >= 1, T] with"
        raise ValueError(f"tokens must be {layout} 1 <= T <= {model.config.max_seq_len}, got shape "
                         f"{list(tokens.shape)}")
    check_token_ids(model, tokens, what)


def check_token_ids(model: TinyDeepSeek, tokens: torch.Tensor, what: str = "token ids") -> None:
    """Raise ValueError unless every id of the non-empty ``tokens`` lies in [0, vocab_size)."""
    low, high = torch.stack(torch.aminmax(tokens)).tolist()  # one transfer to the host
    if low < 0 or high >= model.config.vocab_size:
        raise ValueError(f"{what} must lie in [0, {model.config.vocab_size}) (the vocabulary), got ids from "
                         f"{low} to {high}")


def hidden_states(self: TinyDeepSeek, tokens: Any, cache: ModelCache | None) -> None:
    """``TinyDeepSeek.hidden_states`` and ``forward``: the tokens, and a cache of this model and batch size with
    room for them."""
    from course_lib.model.tiny import ModelCache

    check_tokens(self, tokens)
    if cache is None:
        return
    if not isinstance(cache, ModelCache):
        raise TypeError(f"cache must be a ModelCache from this model's new_cache(), got {type(cache).__name__}")
    if not cache.belongs_to(self):
        raise ValueError("this cache was made by another model: make one with this model's new_cache()")
    batch_size, new_tokens = tokens.shape
    if cache.batch_size != batch_size:
        raise ValueError(f"the cache was made for batch_size={cache.batch_size}, the tokens have batch {batch_size}")
    if cache.length + new_tokens > self.config.max_seq_len:
        raise ValueError(f"the cache holds {cache.length} tokens and {new_tokens} more would exceed the "
                         f"model's context max_seq_len={self.config.max_seq_len}")


forward = hidden_states


def losses(self: TinyDeepSeek, tokens: Any, mtp_lambda: Any) -> None:
    """``TinyDeepSeek.losses``: windows [B, T + 1] in the vocabulary and a finite mtp_lambda >= 0."""
    check_number("mtp_lambda", mtp_lambda, 0)
    check_tokens(self, tokens, windows=True)


def generate(self: TinyDeepSeek, prompt: Any, max_new_tokens: Any, temperature: Any, top_k: Any, generator: Any,
             context: Any, use_cache: Any) -> None:
    """``TinyDeepSeek.generate``: a non-empty int64 prompt [T0] in the vocabulary, and the sampling settings."""
    if (not isinstance(prompt, torch.Tensor) or prompt.dim() != 1 or prompt.numel() == 0
            or prompt.dtype != torch.long):
        raise ValueError(f"prompt must be a non-empty int64 tensor [T0], got {prompt!r:.80}")
    check_token_ids(self, prompt, "prompt token ids")
    check_int("max_new_tokens", max_new_tokens, 0)
    check_number("temperature", temperature, 0, strict=True)
    if top_k is not None:
        check_int("top_k", top_k, 1)
    if context and not 1 <= context <= self.config.max_seq_len:  # 0 or None: max_seq_len
        raise ValueError(f"context must lie in [1, max_seq_len={self.config.max_seq_len}], got {context}")


def cache_length(self: ModelCache, length: Any) -> None:
    """``ModelCache.truncate``: an int length in [0, the tokens cached]."""
    if not 0 <= check_int("length", length) <= self.length:
        raise ValueError(f"truncate expects an int length in [0, {self.length}] (the tokens cached), "
                         f"got {length!r}")


# ------------------------------------------------------------------------------------------ the block
def transformer_block(dim: Any, n_heads: Any, ffn: Any, ffn_hidden: Any, max_seq_len: Any, rope_base: Any,
                      attn: Any) -> None:
    """``TransformerBlock(...)``: ffn or ffn_hidden (an int >= 1), not both; dim an int >= 1; an attn of width dim.
    The default attention's and FFN's own constructors check n_heads, max_seq_len, rope_base and ffn_hidden."""
    if ffn is not None and ffn_hidden is not None:
        raise ValueError("give either ffn (a module) or ffn_hidden (the size of the default SwiGLU), not both")
    if ffn_hidden is not None:
        check_int("ffn_hidden", ffn_hidden, 1)
    check_int("dim", dim, 1)
    if attn is not None and getattr(attn, "dim", None) != dim:
        raise ValueError(f"attn must work on width dim={dim}, got {type(attn).__name__} of dim "
                         f"{getattr(attn, 'dim', None)}")


def transformer_block_forward(self: nn.Module, x: Any, cache: Any) -> None:
    """``TransformerBlock.forward``: x float [batch >= 1, 1 <= T <= max_seq_len, dim]."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"TransformerBlock expects a floating-point tensor [batch, T, {self.dim}], "
                        f"got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)}")
    if x.dim() != 3 or x.shape[-1] != self.dim or x.shape[0] == 0 or not 1 <= x.shape[1] <= self.attn.max_seq_len:
        raise ValueError(f"TransformerBlock expects [batch >= 1, 1 <= T <= {self.attn.max_seq_len}, {self.dim}], "
                         f"got shape {list(x.shape)}")


# ------------------------------------------------------------------------------------------ MTP
def check_windows(tokens: Any) -> int:
    """Validate tokens [batch >= 1, T + 1 >= 2] int64 (t_1 .. t_{T+1}) and return T."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64:
        got = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise TypeError(f"tokens must be an int64 tensor [batch, T + 1] (t_1 .. t_{{T+1}}), got {got}")
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch >= 1, T + 1 >= 2] (t_1 .. t_{{T+1}}), got shape {list(tokens.shape)}")
    return tokens.shape[1] - 1


def mtp_depth_loss(logits: Any, tokens: Any, k: Any) -> None:
    """``mtp.mtp_depth_loss``: logits float [batch, T - k, vocab], windows [batch, T + 1] whose targets lie in
    the vocabulary, 0 <= k < T. The target ids' range costs a host read-back."""
    T = check_windows(tokens)
    if not 0 <= check_int("k (the MTP depth)", k) < T:
        raise ValueError(f"k (the MTP depth) must satisfy 0 <= k < T = {T} (tokens has T + 1 = {T + 1} columns), "
                         f"got k = {k}")
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor [batch, T - k, vocab], got {got}")
    expected = [tokens.shape[0], T - k]
    if logits.dim() != 3 or list(logits.shape[:2]) != expected or logits.shape[2] == 0:
        raise ValueError(f"depth k = {k} expects logits [batch, T - k, vocab] = [{expected[0]}, {expected[1]}, vocab] "
                         f"for tokens {list(tokens.shape)} (T = {T}), got {list(logits.shape)}")
    targets = tokens[:, k + 1:]  # [batch, T - k]: t_{k+2} .. t_{T+1}
    vocab = logits.shape[2]
    low, high = torch.stack(torch.aminmax(targets)).tolist()
    if low < 0 or high >= vocab:
        raise ValueError(f"target token ids must lie in [0, vocab) = [0, {vocab}) for logits [..., {vocab}], "
                         f"got ids from {low} to {high}: is the vocabulary the same?")


def mtp_loss(depth_logits: Any, tokens: Any, lam: Any) -> None:
    """``mtp.mtp_loss``: D >= 1 depths' logits (each as ``mtp_depth_loss`` checks, one vocab size) and a finite
    lam >= 0."""
    if isinstance(depth_logits, torch.Tensor) or not isinstance(depth_logits, Sequence):
        raise TypeError(f"depth_logits must be a list of D tensors (depth k's logits [batch, T - k, vocab] at "
                        f"index k - 1), got {type(depth_logits).__name__}")
    if len(depth_logits) == 0:
        raise ValueError("depth_logits is empty: with D = 0 MTP depths there is no MTP loss (and no 1 / D)")
    check_number("lam (lambda, the weight of the MTP loss)", lam, 0)
    for k, logits in enumerate(depth_logits, start=1):
        mtp_depth_loss(logits, tokens, k)
    if len({logits.shape[-1] for logits in depth_logits}) > 1:
        raise ValueError(f"every depth shares the output head, so every depth's logits need the same vocab size; "
                         f"got {[list(logits.shape) for logits in depth_logits]}")


def mtp_forward(h_prev: Any, emb: Any, k: Any, norm_h: Any, norm_e: Any, proj: Any, block: Any, cache: Any) -> None:
    """``mtp.mtp_forward``: h_prev [batch, L, dim] and emb [batch, T, dim] of one batch and width, 1 <= k < T,
    L >= T - k."""
    check_depth_shapes(list(h_prev.shape), list(emb.shape), k)


def check_depth_shapes(h_prev: list[int], emb: list[int], k: Any) -> None:
    """Shapes h_prev [batch, L, dim] and emb [batch, T, dim] for depth k: one batch >= 1 and width, 1 <= k < T,
    L >= T - k."""
    check_int("k (the MTP depth)", k)
    if len(emb) != 3 or len(h_prev) != 3 or emb[2] != h_prev[2] or emb[0] != h_prev[0]:
        raise ValueError(f"expected h_prev [batch, L, dim] and emb [batch, T, dim] with the same batch and dim, got "
                         f"h_prev {h_prev} and emb {emb}")
    T = emb[1]
    if emb[0] == 0:
        raise ValueError(f"the batch is empty: h_prev {h_prev}, emb {emb}")
    if not 1 <= k < T or h_prev[1] < T - k:
        raise ValueError(f"depth k must satisfy 1 <= k < T = {T} and h_prev needs at least T - k positions; got k = "
                         f"{k}, h_prev {h_prev}, emb {emb}")


def mtp_module(self: nn.Module, h_prev: Any, tokens: Any, cache: Any) -> None:
    """``MTPModule.forward``: h_prev float [batch, L, dim], tokens int64 [batch, T] (then as ``mtp_forward``)."""
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.dim() != 2:
        raise TypeError(f"tokens must be the int64 inputs [batch, T] (t_1 .. t_T), got {tokens!r:.80}")
    if not isinstance(h_prev, torch.Tensor) or not h_prev.is_floating_point():
        raise TypeError(f"h_prev must be a floating-point tensor [batch, L, {self.dim}], got {h_prev!r:.80}")
    check_depth_shapes(list(h_prev.shape), [*tokens.shape, self.dim], self.depth)
