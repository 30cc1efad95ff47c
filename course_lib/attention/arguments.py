"""Validators of the attention area's boundaries (``@boundary(arguments.<name>)``, ``core.validation``): one per
boundary, named after it, taking its parameters by name and raising the course's TypeError / ValueError.
Constructors call theirs at the top of ``__init__``."""

from __future__ import annotations

from typing import Any

import torch

from course_lib.core.validation import check_int, check_number


def rope_frequencies(head_dim: int, base: float) -> None:
    check_int("head_dim", head_dim)
    check_number("base", base, 1, strict=True)
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: head_dim must be even and >= 2, got {head_dim}")


def rope_angles(head_dim: int, max_seq_len: int, base: float, frequencies: torch.Tensor | None = None) -> None:
    check_int("head_dim", head_dim)
    check_int("max_seq_len", max_seq_len)
    rope_frequencies(head_dim, base)
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    if frequencies is not None and (not isinstance(frequencies, torch.Tensor) or not frequencies.is_floating_point()
                                    or list(frequencies.shape) != [head_dim // 2]):
        raise ValueError(f"frequencies must be a floating-point tensor [head_dim / 2] = [{head_dim // 2}], got "
                         f"{frequencies!r:.80}")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"apply_rope expects a floating-point tensor x [..., T, head_dim], got {x!r:.80}")
    T, half = x.shape[-2], x.shape[-1] // 2
    if x.shape[-1] % 2 or cos.shape[0] < T or cos.shape[1] != half or sin.shape != cos.shape:
        raise ValueError(f"apply_rope expected x [..., T, head_dim] with an even head_dim and cos, sin "
                         f"[>= T, head_dim / 2]; got x {list(x.shape)} and cos {list(cos.shape)}")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float | None,
                     mask: torch.Tensor | None = None) -> None:
    T, L = q.shape[-2], k.shape[-2]
    if L != start + T:
        raise ValueError(f"causal_attention expected start + T = {start} + {T} keys, got {L}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                             or list(mask.shape) != [q.shape[0], T, L]):
        got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"causal_attention expects a mask of None or bool [B, T, start + T] = "
                         f"[{q.shape[0]}, {T}, {L}] (True: the key may be attended to), got {got}")


def kv_cache(kind: str, entries: dict[str, tuple[int, ...]], batch_size: int, max_len: int,
             dtype: torch.dtype) -> None:
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind must be a non-empty string such as 'mha' or 'mla', got {kind!r}")
    if not entries or any(not shape or min(shape) < 1 for shape in entries.values()):
        raise ValueError(f"entries must map names to non-empty shapes of positive sizes, got {entries!r}")
    check_int("batch_size", batch_size, 1)
    check_int("max_len", max_len, 1)
    if not dtype.is_floating_point:
        raise TypeError(f"a KV cache holds floating-point tensors, got dtype {dtype}")


def kv_cache_room(cache: Any, kind: str, batch_size: int, new_tokens: int) -> None:
    """Raise ValueError unless ``cache`` (a KVCache) is of ``kind`` and can take ``new_tokens`` more tokens of
    ``batch_size`` rows (the checks an attention layer's forward and ``KVCache.append`` share)."""
    if kind != cache.kind:
        raise ValueError(f"this is a {cache.kind} cache, but the layer is {kind}: a cache from another model? "
                         f"Make one with the model's new_cache()")
    if batch_size != cache.batch_size:
        raise ValueError(f"the cache was made for batch_size={cache.batch_size}, the input has batch {batch_size}")
    if cache.length + new_tokens > cache.max_len:
        raise ValueError(f"the cache holds {cache.length} tokens and {new_tokens} more would make "
                         f"{cache.length + new_tokens}, longer than the context max_len={cache.max_len}")


def kv_cache_truncate(self: Any, length: int) -> None:
    if not 0 <= check_int("length", length) <= self.length:
        raise ValueError(f"truncate expects an int length in [0, {self.length}] (the tokens cached), got {length!r}")


def kv_cache_append(self: Any, new: dict[str, torch.Tensor]) -> None:
    if set(new) != set(self.entries):
        raise ValueError(f"append expects exactly the entries {sorted(self.entries)}, got {sorted(new)}")
    first = next(iter(new.values()))
    T = first.shape[-2] if isinstance(first, torch.Tensor) and first.dim() >= 2 else -1
    for name, tensor in new.items():
        *lead, features = self.entries[name]
        if not isinstance(tensor, torch.Tensor) or list(tensor.shape) != [self.batch_size, *lead, T, features] or T < 1:
            raise ValueError(f"cache entry {name!r} expects [B, *{tuple(lead)}, T, {features}] with B = "
                             f"{self.batch_size} and the same T >= 1 for every entry, got {list(tensor.shape)}")
        if not tensor.is_floating_point() or tensor.device != self.device:
            raise TypeError(f"cache entry {name!r} holds floats on {self.device}, got {tensor.dtype} on "
                            f"{tensor.device}: make the cache after moving the model (new_cache)")
    kv_cache_room(self, self.kind, self.batch_size, T)


def kv_cache_elements_per_token(attention: str, n_heads: int, head_dim: int, n_groups: int, kv_lora_rank: int,
                                qk_rope_head_dim: int) -> None:
    needs = {"mha": ("n_heads", "head_dim"), "gqa": ("n_groups", "head_dim"), "mqa": ("head_dim",),
             "mla": ("kv_lora_rank", "qk_rope_head_dim")}
    if attention not in needs:
        raise ValueError(f"attention must be one of {sorted(needs)}, got {attention!r}")
    sizes = dict(n_heads=n_heads, head_dim=head_dim, n_groups=n_groups, kv_lora_rank=kv_lora_rank,
                 qk_rope_head_dim=qk_rope_head_dim)
    missing = [name for name in needs[attention] if not (isinstance(sizes[name], int) and sizes[name] > 0)]
    if missing:
        raise ValueError(f"{attention} needs {', '.join(missing)} > 0 (ints), got {sizes}")


def multi_head_attention(dim: int, n_heads: int, max_seq_len: int, rope_base: float) -> None:
    check_int("dim", dim)
    check_int("n_heads", n_heads)
    if dim < 1 or n_heads < 1 or dim % n_heads:
        raise ValueError(f"dim must be a positive multiple of n_heads, got dim={dim}, n_heads={n_heads}")
    rope_angles(dim // n_heads, max_seq_len, rope_base)


def multi_head_latent_attention(dim: int, n_heads: int, q_lora_rank: int, kv_lora_rank: int, qk_nope_head_dim: int,
                                qk_rope_head_dim: int, v_head_dim: int, max_seq_len: int, rope_base: float,
                                yarn: Any = None) -> None:
    sizes = dict(dim=dim, n_heads=n_heads, kv_lora_rank=kv_lora_rank, qk_nope_head_dim=qk_nope_head_dim,
                 qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim, max_seq_len=max_seq_len)
    for name, value in sizes.items():
        check_int(name, value, 1)
    check_int("q_lora_rank", q_lora_rank, 0)  # 0: no query compression (DeepSeek-V2-Lite)
    if qk_rope_head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: qk_rope_head_dim must be even, got {qk_rope_head_dim}")
    check_number("rope_base", rope_base, 1, strict=True)
    yarn_setting(yarn, max_seq_len)


def yarn_setting(yarn: Any, max_seq_len: int) -> None:
    """A YaRN setting for a model of context max_seq_len: None, or a YarnScaling whose original (pre-training)
    context is not above the model's."""
    from course_lib.attention.yarn import YarnScaling  # yarn's module imports this one

    if yarn is None:
        return
    if not isinstance(yarn, YarnScaling):
        raise TypeError(f"yarn must be a YarnScaling (course_lib.attention.yarn) or None, got {yarn!r:.80}")
    if yarn.original_seq_len > max_seq_len:
        raise ValueError(f"yarn.original_seq_len={yarn.original_seq_len} is above the model's max_seq_len="
                         f"{max_seq_len}: YaRN extends a model trained at original_seq_len to a longer max_seq_len")


def attention_forward(self: Any, x: torch.Tensor, cache: Any) -> None:
    """The forward of ``MultiHeadAttention`` and ``MultiHeadLatentAttention``: x [B, T, self.dim] floating point,
    non-empty, and the T new tokens fit in the context (and in ``cache``, a KVCache of the layer's kind, dtype
    and device, when given)."""
    from course_lib.attention.cache import KVCache  # the cache's module imports this one

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != self.dim:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(self).__name__} expects a floating-point tensor [B, T, {self.dim}], got {got}")
    B, T, _ = x.shape
    if B == 0 or T == 0:
        raise ValueError(f"{type(self).__name__} got an empty input {list(x.shape)}")
    if cache is None:
        if T > self.max_seq_len:
            raise ValueError(f"T={T} exceeds max_seq_len={self.max_seq_len}")
        return
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache (from new_cache()), got {type(cache).__name__}")
    weight = next(self.parameters())  # new_cache takes the weights' dtype and device (autocast leaves them)
    if cache.dtype != weight.dtype or cache.device != weight.device:
        raise TypeError(f"the cache holds {cache.dtype} on {cache.device}, the layer's weights are {weight.dtype} "
                        f"on {weight.device}: make the cache after moving the model (new_cache)")
    kv_cache_room(cache, self.kind, B, T)
    if cache.length + T > self.max_seq_len:
        raise ValueError(f"the cache holds {cache.length} tokens and {T} more exceed the context "
                         f"max_seq_len={self.max_seq_len}")



def yarn_lengths(original_seq_len: int, beta_fast: float, beta_slow: float) -> None:
    """The original context L and the rotation counts beta_fast > beta_slow > 0 that bound YaRN's ramp."""
    check_int("original_seq_len", original_seq_len, 1)
    check_number("beta_slow", beta_slow, 0, strict=True)
    check_number("beta_fast", beta_fast)
    if beta_fast <= beta_slow:
        raise ValueError(f"beta_fast must exceed beta_slow (rotations within the original context: the fast pairs "
                         f"turn more than beta_fast times, the slow ones fewer than beta_slow), got beta_fast="
                         f"{beta_fast}, beta_slow={beta_slow}")


def yarn_factor(factor: float) -> None:
    check_number("factor", factor)
    if factor < 1:
        raise ValueError(f"factor must be >= 1 (the context grows s times; s < 1 would shrink it), got {factor}")


def yarn_ramp(dim: int, base: float, original_seq_len: int, beta_fast: float, beta_slow: float) -> None:
    rope_frequencies(dim, base)
    yarn_lengths(original_seq_len, beta_fast, beta_slow)


def yarn_frequencies(dim: int, base: float, factor: float, original_seq_len: int, beta_fast: float,
                     beta_slow: float) -> None:
    yarn_factor(factor)
    yarn_ramp(dim, base, original_seq_len, beta_fast, beta_slow)


def yarn_mscale(factor: float, mscale: float) -> None:
    yarn_factor(factor)
    check_number("mscale", mscale, 0)


def yarn_scaling(factor: float, original_seq_len: int, beta_fast: float, beta_slow: float, mscale: float) -> None:
    yarn_mscale(factor, mscale)
    yarn_lengths(original_seq_len, beta_fast, beta_slow)


def interpolated_frequencies(dim: int, base: float, factor: float) -> None:
    rope_frequencies(dim, base)
    yarn_factor(factor)


def ntk_frequencies(dim: int, base: float, factor: float) -> None:
    interpolated_frequencies(dim, base, factor)
    if dim < 4:
        raise ValueError(f"NTK-aware scaling raises the base to the power dim / (dim - 2): dim must be >= 4, got {dim}")


def lightning_indexer(dim: int, q_lora_rank: int, index_n_heads: int, index_head_dim: int,
                      qk_rope_head_dim: int) -> None:
    for name, value in dict(dim=dim, index_n_heads=index_n_heads, index_head_dim=index_head_dim,
                            qk_rope_head_dim=qk_rope_head_dim).items():
        check_int(name, value, 1)
    if check_int("q_lora_rank", q_lora_rank) < 1:
        raise ValueError(f"the lightning indexer reads MLA's query latent c^Q: q_lora_rank must be >= 1 (V3.2: 1536), "
                         f"got {q_lora_rank}")
    if index_head_dim < qk_rope_head_dim or qk_rope_head_dim % 2:
        raise ValueError(f"the indexer does not fit the model: RoPE turns the first qk_rope_head_dim="
                         f"{qk_rope_head_dim} features of its query and key (an even number), so index_head_dim must "
                         f"be at least that (V3.2: 128 >= 64), got index_head_dim={index_head_dim}")


def check_index_topk(index_topk: int) -> None:
    if check_int("index_topk", index_topk) < 1:
        raise ValueError(f"index_topk, the tokens each query attends to, must be >= 1 (V3.2: 2048), got {index_topk}")


def deepseek_sparse_attention(dim: int, n_heads: int, q_lora_rank: int, kv_lora_rank: int, qk_nope_head_dim: int,
                              qk_rope_head_dim: int, v_head_dim: int, index_n_heads: int, index_head_dim: int,
                              index_topk: int, max_seq_len: int, rope_base: float, yarn: Any = None) -> None:
    multi_head_latent_attention(dim, n_heads, q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim,
                                v_head_dim, max_seq_len, rope_base, yarn)
    lightning_indexer(dim, q_lora_rank, index_n_heads, index_head_dim, qk_rope_head_dim)
    check_index_topk(index_topk)


def dsa_from_mla(mla: Any) -> None:
    from course_lib.attention.mla import MultiHeadLatentAttention  # mla's module imports this one

    if not isinstance(mla, MultiHeadLatentAttention):
        raise TypeError(f"DeepSeek Sparse Attention is built on MLA: expected a MultiHeadLatentAttention, got "
                        f"{type(mla).__name__}")


def sparse_attention_forward(self: Any, x: torch.Tensor, cache: Any) -> None:
    """``attention_forward``, and a cache holding exactly the layer's entries (a DSA cache of another model, with
    another indexer or latent size, is refused by name)."""
    attention_forward(self, x, cache)
    if cache is not None:
        expected = self.new_cache(1).entries
        if cache.entries != expected:
            raise ValueError(f"this cache holds {cache.entries}, the layer needs {expected}: a cache from another "
                             f"model? Make one with the model's new_cache()")


def _float_tensor(name: str, value: Any, dims: int) -> None:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != dims:
        got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a floating-point tensor of {dims} dimensions, got {got}")


def index_scores(q_index: torch.Tensor, k_index: torch.Tensor, weights: torch.Tensor, start: int) -> None:
    _float_tensor("q_index", q_index, 4)
    _float_tensor("k_index", k_index, 3)
    _float_tensor("weights", weights, 3)
    check_int("start", start, 0)
    B, T, H, d = q_index.shape
    if list(k_index.shape) != [B, start + T, d] or list(weights.shape) != [B, T, H]:
        raise ValueError(f"index_scores expects q_index [B, T, H^I, d^I], k_index [B, start + T, d^I] and weights "
                         f"[B, T, H^I]; got {list(q_index.shape)}, {list(k_index.shape)}, {list(weights.shape)} "
                         f"with start={start}")


def top_k_selection(scores: torch.Tensor, index_topk: int) -> None:
    _float_tensor("scores", scores, 3)
    check_index_topk(index_topk)


def window_selection(T: int, L: int, window: int, device: Any) -> None:
    for name, value in dict(T=T, L=L, window=window).items():
        check_int(name, value, 1)
    if T > L:
        raise ValueError(f"window_selection: the T={T} queries are among the L={L} positions, so T <= L")


def index_kl_loss(attention: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor) -> None:
    _float_tensor("attention", attention, 3)
    _float_tensor("scores", scores, 3)
    if attention.shape != scores.shape or not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool:
        raise ValueError(f"index_kl_loss expects attention and scores of one shape [B, T, L] and a bool mask, got "
                         f"{list(attention.shape)}, {list(scores.shape)}, {allowed!r:.60}")
    try:
        allowed.expand_as(scores)
    except RuntimeError:
        raise ValueError(f"index_kl_loss: allowed {list(allowed.shape)} does not broadcast to {list(scores.shape)}")
