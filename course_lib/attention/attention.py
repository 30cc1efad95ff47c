"""Causal self-attention for the course's models: multi-head attention (MHA) and DeepSeek's Multi-head Latent
Attention (MLA, [V3] 2.1.1 eqs. 1-11; [V2] 2.1), rotary position embedding, and the KV cache both fill.

- ``MultiHeadAttention``: standard MHA with RoPE ([RoFormer], Su et al. 2021) on queries and keys. Its cache holds
  the keys and values: 2 n_h d_h elements per token per layer.
- ``MultiHeadLatentAttention``: keys and values come from one compressed latent c^KV (d_c elements); RoPE is
  carried by a separate ("decoupled") key k^R of d_h^R elements, ONE shared by every head. Its cache holds
  c^KV and k^R only: d_c + d_h^R elements per token per layer ([V2] Table 1). Two forms give the same output:
  the naive one up-projects the latent to per-head keys and values; the absorbed one folds W^UK into the query
  and W^UV into the output, and attends over the latent cache directly.
- ``KVCache``: one layer's cache for incremental decoding; ``.length`` tokens, ``.nbytes`` bytes,
  ``.truncate(length)`` to roll back.

Both attentions: forward(x [B, T, dim], cache=None) -> [B, T, dim]. Without a cache, x is a whole sequence at
positions 0..T-1. With a cache holding L tokens, x holds T new tokens at positions L..L+T-1: they attend to the
L cached positions and causally to each other, and the layer appends their keys (MHA) or latents (MLA) to the
cache. Shapes: B = batch, T = new tokens, L = cached tokens, H = heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.core.layers import RMSNorm
from course_lib.core.validation import check_int, check_number


# ------------------------------------------------------------------------------------------------ RoPE
def rope_angles(head_dim: int, max_seq_len: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles: position p turns the pair (2i, 2i+1) by p * base^(-2i / head_dim).

    Returns (cos, sin), each float32 [max_seq_len, head_dim / 2]. Raises TypeError for sizes that are not ints,
    ValueError for an odd head_dim (RoPE rotates pairs of features), max_seq_len < 1 or a base that is not a
    finite number > 1.
    """
    check_int("head_dim", head_dim)
    check_int("max_seq_len", max_seq_len)
    check_number("base", base, 1, strict=True)
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of features: head_dim must be even and >= 2, got {head_dim}")
    if max_seq_len < 1:
        raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [head_dim / 2]
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # [max_seq_len, head_dim / 2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of features (x[..., 2i], x[..., 2i+1]) of position p by its angle.

    x: [..., T, head_dim]; cos, sin: [>= T, head_dim / 2] (from ``rope_angles``; row p is position p, so pass
    cos[start:] for tokens at positions start..start+T-1) -> [..., T, head_dim].
    The pairs are consecutive features, as in DeepSeek-V3's inference code (Hugging Face's Llama rotates the two
    halves instead: the same rotation on permuted features). Dot products of rotated queries and keys depend only
    on the distance between their positions.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise TypeError(f"apply_rope expects a floating-point tensor x [..., T, head_dim], got {x!r:.80}")
    T, half = x.shape[-2], x.shape[-1] // 2
    if x.shape[-1] % 2 or cos.shape[0] < T or cos.shape[1] != half:
        raise ValueError(f"apply_rope expected x [..., T, head_dim] with an even head_dim and cos, sin "
                         f"[>= T, head_dim / 2]; got x {list(x.shape)} and cos {list(cos.shape)}")
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)  # [T, head_dim / 2]
    even, odd = x[..., 0::2], x[..., 1::2]  # [..., T, head_dim / 2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int = 0,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v, where query i sits at position start + i and key j at position j.

    q: [B, H, T, d_qk]; k: [B, H, start + T, d_qk]; v: [B, H, start + T, d_v] -> [B, H, T, d_v].
    scale: None = 1/sqrt(d_qk). Query i attends to keys 0..start+i (all cached ones and the new ones up to itself).
    """
    T, L = q.shape[-2], k.shape[-2]
    if L != start + T:
        raise ValueError(f"causal_attention expected start + T = {start} + {T} keys, got {L}")
    if start == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if T == 1:  # one new token sees every position
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    positions = torch.arange(T, device=q.device)[:, None] + start  # [T, 1]
    mask = positions >= torch.arange(L, device=q.device)[None, :]  # [T, L]: True where attention is allowed
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# ------------------------------------------------------------------------------------------------ cache
class KVCache:
    """One attention layer's cache for incremental decoding (inference: use it under torch.no_grad()).

    ``entries`` maps each cached tensor's name to its shape per token and batch row, the last axis being the
    feature axis: a cached tensor is stored as [B, *shape[:-1], L, shape[-1]], the sequence on axis -2.
    - MHA (kind "mha"): {"k": (H, d_h), "v": (H, d_h)}: cache["k"], cache["v"] are [B, H, L, d_h].
    - MLA (kind "mla"): {"c_kv": (d_c,), "k_rope": (d_h^R,)}: cache["c_kv"] is [B, L, d_c] (after its RMSNorm),
      cache["k_rope"] [B, L, d_h^R] (after RoPE).
    Storage grows by doubling up to ``max_len`` (the model's context), so appending a token copies nothing in
    the common case. ``truncate`` only moves the length back: the storage is kept for the next tokens.
    The cache keeps its ``dtype`` (the weights'): new entries of another float dtype are cast to it, as under
    ``torch.autocast``, where a float32 model's keys arrive in bfloat16. Attention layers make their own with
    ``new_cache(batch_size)``.
    """

    def __init__(self, kind: str, entries: dict[str, tuple[int, ...]], batch_size: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty string such as 'mha' or 'mla', got {kind!r}")
        if not entries or any(not shape or min(shape) < 1 for shape in entries.values()):
            raise ValueError(f"entries must map names to non-empty shapes of positive sizes, got {entries!r}")
        check_int("batch_size", batch_size, 1)
        check_int("max_len", max_len, 1)
        if not dtype.is_floating_point:
            raise TypeError(f"a KV cache holds floating-point tensors, got dtype {dtype}")
        self.kind, self.entries = kind, {name: tuple(shape) for name, shape in entries.items()}
        self.batch_size, self.max_len, self.dtype, self.device = batch_size, max_len, dtype, torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}
        self._length = 0

    def __repr__(self) -> str:
        return (f"KVCache(kind={self.kind!r}, entries={self.entries}, batch_size={self.batch_size}, "
                f"length={self.length}, max_len={self.max_len}, dtype={self.dtype}, nbytes={self.nbytes})")

    @property
    def length(self) -> int:
        """Tokens cached (per batch row)."""
        return self._length

    @property
    def bytes_per_token(self) -> int:
        """Bytes one more token adds to the cache, over the whole batch."""
        elements = sum(math.prod(shape) for shape in self.entries.values())
        return self.batch_size * elements * torch.empty((), dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        """Bytes of the cached tokens: length * bytes_per_token (the storage may hold up to twice that)."""
        return self._length * self.bytes_per_token

    @property
    def capacity(self) -> int:
        """Tokens the current storage can hold before it grows."""
        return next(iter(self._buffers.values())).shape[-2] if self._buffers else 0

    def __getitem__(self, name: str) -> torch.Tensor:
        """The cached tensor ``name``, [B, *shape[:-1], length, shape[-1]] (a view of the storage)."""
        if name not in self.entries:
            raise KeyError(f"this {self.kind} cache holds {sorted(self.entries)}, not {name!r}")
        if not self._buffers:
            *lead, features = self.entries[name]
            return torch.empty(self.batch_size, *lead, 0, features, dtype=self.dtype, device=self.device)
        return self._buffers[name].narrow(-2, 0, self._length)

    def truncate(self, length: int) -> None:
        """Drop the cached positions >= length (a rejected draft, say); 0 empties the cache."""
        if not 0 <= check_int("length", length) <= self._length:
            raise ValueError(f"truncate expects an int length in [0, {self._length}] (the tokens cached), "
                             f"got {length!r}")
        self._length = length

    def check(self, kind: str, batch_size: int, new_tokens: int) -> None:
        """Raise ValueError unless this cache is of ``kind`` and can take ``new_tokens`` more of ``batch_size``
        rows (an attention layer calls it before computing anything)."""
        if kind != self.kind:
            raise ValueError(f"this is a {self.kind} cache, but the layer is {kind}: a cache from another model? "
                             f"Make one with the model's new_cache()")
        if batch_size != self.batch_size:
            raise ValueError(f"the cache was made for batch_size={self.batch_size}, the input has batch {batch_size}")
        if self._length + new_tokens > self.max_len:
            raise ValueError(f"the cache holds {self._length} tokens and {new_tokens} more would make "
                             f"{self._length + new_tokens}, longer than the context max_len={self.max_len}")

    def append(self, **new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Append T new positions of every entry, each [B, *shape[:-1], T, shape[-1]] on the cache's device, and
        return the cached tensors (in the order of ``entries``), each now holding length + T positions.

        The new entries are stored in the cache's dtype; each returned tensor is in the dtype of its new entry
        (a view of the storage when the two agree, else a copy): under bfloat16 autocast a float32 cache
        returns bfloat16 keys, exactly those a forward without the cache computes. Raises TypeError for an
        entry on another device or not floating point, ValueError for shapes that do not fit.
        """
        if set(new) != set(self.entries):
            raise ValueError(f"append expects exactly the entries {sorted(self.entries)}, got {sorted(new)}")
        T = next(iter(new.values())).shape[-2] if next(iter(new.values())).dim() >= 2 else -1
        for name, tensor in new.items():
            *lead, features = self.entries[name]
            expected = [self.batch_size, *lead, T, features]
            if list(tensor.shape) != expected or T < 1:
                raise ValueError(f"cache entry {name!r} expects [B, *{tuple(lead)}, T, {features}] with B = "
                                 f"{self.batch_size} and the same T >= 1 for every entry, got {list(tensor.shape)}")
            if not tensor.is_floating_point() or tensor.device != self.device:
                raise TypeError(f"cache entry {name!r} holds floats on {self.device}, got {tensor.dtype} on "
                                f"{tensor.device}: make the cache after moving the model (new_cache)")
        self.check(self.kind, self.batch_size, T)
        self._reserve(self._length + T)
        for name, tensor in new.items():
            self._buffers[name].narrow(-2, self._length, T).copy_(tensor)  # cast to the cache's dtype
        self._length += T
        return tuple(self[name].to(new[name].dtype) for name in self.entries)

    def _reserve(self, needed: int) -> None:
        """Grow the storage (doubling, at most max_len) so that it holds ``needed`` tokens."""
        if needed <= self.capacity:
            return
        capacity = min(self.max_len, max(needed, 2 * self.capacity, 16))
        grown = {}
        for name, (*lead, features) in self.entries.items():
            grown[name] = torch.empty(self.batch_size, *lead, capacity, features, dtype=self.dtype,
                                      device=self.device)
            if self._buffers:
                grown[name].narrow(-2, 0, self._length).copy_(self[name])
        self._buffers = grown


def _check_input(module: nn.Module, x: torch.Tensor, cache: KVCache | None, kind: str) -> int:
    """Validate x [B, T, dim] and the cache for an attention layer; return the position of x's first token."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3 or x.shape[-1] != module.dim:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(module).__name__} expects a floating-point tensor [B, T, {module.dim}], got {got}")
    B, T, _ = x.shape
    if B == 0 or T == 0:
        raise ValueError(f"{type(module).__name__} got an empty input {list(x.shape)}")
    if cache is None:
        if T > module.max_seq_len:
            raise ValueError(f"T={T} exceeds max_seq_len={module.max_seq_len}")
        return 0
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache (from new_cache()), got {type(cache).__name__}")
    weight = next(module.parameters())  # new_cache takes the weights' dtype and device (autocast leaves them)
    if cache.dtype != weight.dtype or cache.device != weight.device:
        raise TypeError(f"the cache holds {cache.dtype} on {cache.device}, the layer's weights are {weight.dtype} "
                        f"on {weight.device}: make the cache after moving the model (new_cache)")
    cache.check(kind, B, T)
    if cache.length + T > module.max_seq_len:
        raise ValueError(f"the cache holds {cache.length} tokens and {T} more exceed the context "
                         f"max_seq_len={module.max_seq_len}")
    return cache.length


# ------------------------------------------------------------------------------------------------ MHA
class MultiHeadAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on queries and keys, without biases.

    forward(x [B, T, dim], cache: KVCache | None = None) -> [B, T, dim]; positions up to max_seq_len.
    Parameters: qkv (dim -> 3 dim, queries, keys, values of all heads) and out (dim -> dim).
    Cache: keys (after RoPE) and values, cache["k"], cache["v"]: [B, H, L, head_dim]; 2 dim elements per token.
    Raises ValueError when dim is not a positive multiple of n_heads or head_dim = dim / n_heads is odd.
    """

    kind = "mha"

    def __init__(self, dim: int, n_heads: int, max_seq_len: int = 256, rope_base: float = 10000.0) -> None:
        super().__init__()
        check_int("dim", dim)
        check_int("n_heads", n_heads)
        if dim < 1 or n_heads < 1 or dim % n_heads:
            raise ValueError(f"dim must be a positive multiple of n_heads, got dim={dim}, n_heads={n_heads}")
        self.dim, self.n_heads, self.head_dim, self.max_seq_len = dim, n_heads, dim // n_heads, max_seq_len
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        cos, sin = rope_angles(self.head_dim, max_seq_len, rope_base)
        self.register_buffer("cos", cos, persistent=False)  # computed, not learned: not saved with the weights
        self.register_buffer("sin", sin, persistent=False)

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty cache for this layer, in the dtype and on the device of its weights."""
        weight = self.qkv.weight
        return KVCache(self.kind, {"k": (self.n_heads, self.head_dim), "v": (self.n_heads, self.head_dim)},
                       batch_size, self.max_seq_len, weight.dtype, weight.device)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start = _check_input(self, x, cache, self.kind)
        B, T, dim = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, hd]
        cos, sin = self.cos[start:], self.sin[start:]  # positions start .. start + T - 1
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.append(k=k, v=v)  # [B, H, start + T, head_dim]
        y = causal_attention(q, k, v, start)  # [B, H, T, head_dim]
        return self.out(y.transpose(1, 2).reshape(B, T, dim))


# ------------------------------------------------------------------------------------------------ MLA
class MultiHeadLatentAttention(nn.Module):
    """Multi-head Latent Attention exactly as [V3] 2.1.1 eqs. 1-11, with the released model's RMSNorms on the
    compressed latents ([V3] 4.2). For the input h_t of each token (x[:, t]):

        c^Q_t = RMSNorm(W^DQ h_t)                 [d_c']             (6)   w_dq, q_norm
        q^C_t = W^UQ c^Q_t                         [H, d_h]           (7)   w_uq
        q^R_t = RoPE(W^QR c^Q_t)                   [H, d_h^R]         (8)   w_qr   (one per head)
        c^KV_t = RMSNorm(W^DKV h_t)                [d_c]              (1)   w_dkv, kv_norm   -> cached
        k^C_t = W^UK c^KV_t                        [H, d_h]           (2)   w_uk
        k^R_t = RoPE(W^KR h_t)                     [d_h^R]            (3)   w_kr   (ONE, shared by every head) -> cached
        v^C_t = W^UV c^KV_t                        [H, d_v]           (5)   w_uv
        q_{t,i} = [q^C_{t,i}; q^R_{t,i}],  k_{t,i} = [k^C_{t,i}; k^R_t]    (9), (4)
        o_{t,i} = sum_{j<=t} softmax_j(q_{t,i} . k_{j,i} / sqrt(d_h + d_h^R)) v^C_{j,i}   (10)
        u_t = W^O [o_{t,1}; ...; o_{t,H}]                              (11)  w_o

    Sizes (paper / Hugging Face names): d_c' = q_lora_rank, d_c = kv_lora_rank, d_h = qk_nope_head_dim,
    d_h^R = qk_rope_head_dim (even), d_v = v_head_dim. V3: dim 7168, H 128, 1536, 512, 128, 64, 128.
    q_lora_rank = 0 turns the query compression off, as DeepSeek-V2-Lite does (its inference/configs/config_16B.json
    in the DeepSeek-V3 repository) and as the released MLA supports: one matrix W^Q (``w_q``, dim -> H (d_h + d_h^R),
    per head the rows of [q^C_i; q^R_i], the released ``wq`` and Hugging Face's ``q_proj``) takes the place of
    eqs. 6-8, q_{t,i} = [q^C_{t,i}; RoPE(q^R_{t,i})] with [q^C_t; q^R_t] = W^Q h_t; no c^Q, no q_norm.

    forward(x [B, T, dim], cache: KVCache | None = None) -> [B, T, dim]. ``absorb`` picks the form: False (naive)
    up-projects the latents to per-head keys and values; True (absorbed) attends over the latents, with W^UK
    folded into the query, (W^UK_i)^T q^C_{t,i} . c^KV_j = q^C_{t,i} . k^C_{j,i}, and W^UV applied to the
    attention-weighted latent (so it can be folded into W^O). The two give the same output.
    Cache: cache["c_kv"] [B, L, d_c] and cache["k_rope"] [B, L, d_h^R]: d_c + d_h^R elements per token.
    Raises TypeError for a size that is not an int, ValueError for a size < 1 (q_lora_rank < 0) or an odd
    qk_rope_head_dim.
    """

    kind = "mla"

    def __init__(self, dim: int, n_heads: int, q_lora_rank: int, kv_lora_rank: int, qk_nope_head_dim: int,
                 qk_rope_head_dim: int, v_head_dim: int, max_seq_len: int = 256, rope_base: float = 10000.0,
                 absorb: bool = False) -> None:
        super().__init__()
        sizes = dict(dim=dim, n_heads=n_heads, kv_lora_rank=kv_lora_rank, qk_nope_head_dim=qk_nope_head_dim,
                     qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim, max_seq_len=max_seq_len)
        for name, value in sizes.items():
            check_int(name, value, 1)
        check_int("q_lora_rank", q_lora_rank, 0)  # 0: no query compression (DeepSeek-V2-Lite)
        if qk_rope_head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of features: qk_rope_head_dim must be even, got {qk_rope_head_dim}")
        self.dim, self.n_heads, self.max_seq_len, self.absorb = dim, n_heads, max_seq_len, absorb
        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.scale = 1.0 / math.sqrt(qk_nope_head_dim + qk_rope_head_dim)  # (10): d_h + d_h^R, not d_h
        H = n_heads
        if q_lora_rank:
            self.w_dq = nn.Linear(dim, q_lora_rank, bias=False)  # W^DQ
            self.q_norm = RMSNorm(q_lora_rank)
            self.w_uq = nn.Linear(q_lora_rank, H * qk_nope_head_dim, bias=False)  # W^UQ
            self.w_qr = nn.Linear(q_lora_rank, H * qk_rope_head_dim, bias=False)  # W^QR
        else:  # W^Q: per head [q^C_i; q^R_i] straight from h
            self.w_q = nn.Linear(dim, H * (qk_nope_head_dim + qk_rope_head_dim), bias=False)
        self.w_dkv = nn.Linear(dim, kv_lora_rank, bias=False)  # W^DKV
        self.kv_norm = RMSNorm(kv_lora_rank)
        self.w_uk = nn.Linear(kv_lora_rank, H * qk_nope_head_dim, bias=False)  # W^UK
        self.w_uv = nn.Linear(kv_lora_rank, H * v_head_dim, bias=False)  # W^UV
        self.w_kr = nn.Linear(dim, qk_rope_head_dim, bias=False)  # W^KR
        self.w_o = nn.Linear(H * v_head_dim, dim, bias=False)  # W^O
        cos, sin = rope_angles(qk_rope_head_dim, max_seq_len, rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, q_lora_rank={self.q_lora_rank}, kv_lora_rank={self.kv_lora_rank}, "
                f"qk_nope_head_dim={self.qk_nope_head_dim}, qk_rope_head_dim={self.qk_rope_head_dim}, "
                f"v_head_dim={self.v_head_dim}, absorb={self.absorb}")

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty cache for this layer, in the dtype and on the device of its weights."""
        weight = self.w_dkv.weight
        return KVCache(self.kind, {"c_kv": (self.kv_lora_rank,), "k_rope": (self.qk_rope_head_dim,)},
                       batch_size, self.max_seq_len, weight.dtype, weight.device)

    def project(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eqs. 1, 3, 6-8 (or W^Q when q_lora_rank = 0) for tokens at positions start..start+T-1: x [B, T, dim] ->
        (q_nope [B, H, T, d_h], q_rope [B, H, T, d_h^R], c_kv [B, T, d_c], k_rope [B, T, d_h^R])."""
        B, T, _ = x.shape
        H = self.n_heads
        cos, sin = self.cos[start:], self.sin[start:]
        dh, dr = self.qk_nope_head_dim, self.qk_rope_head_dim
        if self.q_lora_rank:
            c_q = self.q_norm(self.w_dq(x))  # [B, T, d_c']
            q_nope = self.w_uq(c_q).view(B, T, H, dh).transpose(1, 2)  # [B, H, T, d_h]
            q_rope = self.w_qr(c_q).view(B, T, H, dr).transpose(1, 2)  # [B, H, T, d_h^R], before RoPE
        else:
            q_nope, q_rope = self.w_q(x).view(B, T, H, dh + dr).transpose(1, 2).split([dh, dr], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin)
        c_kv = self.kv_norm(self.w_dkv(x))  # [B, T, d_c]
        k_rope = apply_rope(self.w_kr(x), cos, sin)  # [B, T, d_h^R]: one key for all heads
        return q_nope, q_rope, c_kv, k_rope

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start = _check_input(self, x, cache, self.kind)
        B, T, _ = x.shape
        q_nope, q_rope, c_kv, k_rope = self.project(x, start)
        if cache is not None:
            c_kv, k_rope = cache.append(c_kv=c_kv, k_rope=k_rope)  # [B, start + T, d_c], [B, start + T, d_h^R]
        attend = self.attend_absorbed if self.absorb else self.attend_naive
        o = attend(q_nope, q_rope, c_kv, k_rope, start)  # [B, H, T, d_v]
        return self.w_o(o.transpose(1, 2).reshape(B, T, self.n_heads * self.v_head_dim))

    def attend_naive(self, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor, k_rope: torch.Tensor,
                     start: int = 0) -> torch.Tensor:
        """Eqs. 2, 4, 5, 9, 10 by up-projecting the latents: q_nope [B, H, T, d_h], q_rope [B, H, T, d_h^R],
        c_kv [B, L, d_c], k_rope [B, L, d_h^R] (L = start + T) -> o [B, H, T, d_v]."""
        B, H, L = c_kv.shape[0], self.n_heads, c_kv.shape[1]
        k_nope = self.w_uk(c_kv).view(B, L, H, self.qk_nope_head_dim).transpose(1, 2)  # k^C: [B, H, L, d_h]
        v = self.w_uv(c_kv).view(B, L, H, self.v_head_dim).transpose(1, 2)  # v^C: [B, H, L, d_v]
        k = torch.cat([k_nope, k_rope[:, None].expand(B, H, L, self.qk_rope_head_dim)], dim=-1)  # [B, H, L, d_h + d_h^R]
        q = torch.cat([q_nope, q_rope], dim=-1)  # [B, H, T, d_h + d_h^R]
        return causal_attention(q, k, v, start, self.scale)

    def attend_absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor, k_rope: torch.Tensor,
                        start: int = 0) -> torch.Tensor:
        """The same as ``attend_naive``, attending over the latents: q^C_i . (W^UK_i c) = ((W^UK_i)^T q^C_i) . c,
        and sum_j a_j (W^UV_i c_j) = W^UV_i (sum_j a_j c_j). Shapes as attend_naive -> o [B, H, T, d_v]."""
        B, H, L = c_kv.shape[0], self.n_heads, c_kv.shape[1]
        w_uk = self.w_uk.weight.view(H, self.qk_nope_head_dim, self.kv_lora_rank)  # W^UK_i: [d_h, d_c] per head
        w_uv = self.w_uv.weight.view(H, self.v_head_dim, self.kv_lora_rank)  # W^UV_i: [d_v, d_c] per head
        q_latent = torch.einsum("bhtd,hdc->bhtc", q_nope, w_uk)  # (W^UK_i)^T q^C_i: [B, H, T, d_c]
        q = torch.cat([q_latent, q_rope], dim=-1)  # [B, H, T, d_c + d_h^R]
        k = torch.cat([c_kv, k_rope], dim=-1)[:, None].expand(B, H, L, self.kv_lora_rank + self.qk_rope_head_dim)
        o_latent = causal_attention(q, k, c_kv[:, None].expand(B, H, L, self.kv_lora_rank), start, self.scale)
        return torch.einsum("bhtc,hvc->bhtv", o_latent, w_uv)  # W^UV_i: [B, H, T, d_v]


# ------------------------------------------------------------------------------------------------ sizes
def kv_cache_elements_per_token(attention: str, n_heads: int = 0, head_dim: int = 0, n_groups: int = 0,
                                kv_lora_rank: int = 0, qk_rope_head_dim: int = 0) -> int:
    """KV-cache elements per token per layer, [V2] Table 1: MHA 2 n_h d_h; GQA 2 n_g d_h; MQA 2 d_h;
    MLA d_c + d_h^R. ``attention`` is "mha", "gqa", "mqa" or "mla"; give the sizes that kind uses (> 0)."""
    needs = {"mha": ("n_heads", "head_dim"), "gqa": ("n_groups", "head_dim"), "mqa": ("head_dim",),
             "mla": ("kv_lora_rank", "qk_rope_head_dim")}
    if attention not in needs:
        raise ValueError(f"attention must be one of {sorted(needs)}, got {attention!r}")
    sizes = dict(n_heads=n_heads, head_dim=head_dim, n_groups=n_groups, kv_lora_rank=kv_lora_rank,
                 qk_rope_head_dim=qk_rope_head_dim)
    missing = [name for name in needs[attention] if not (isinstance(sizes[name], int) and sizes[name] > 0)]
    if missing:
        raise ValueError(f"{attention} needs {', '.join(missing)} > 0 (ints), got {sizes}")
    return {"mha": 2 * n_heads * head_dim, "gqa": 2 * n_groups * head_dim, "mqa": 2 * head_dim,
            "mla": kv_lora_rank + qk_rope_head_dim}[attention]
