"""The KV cache of incremental decoding, and its size per token for each kind of attention ([V2] Table 1).

- ``KVCache``: one layer's cache; ``.length`` tokens, ``.nbytes`` bytes, ``.truncate(length)`` to roll back.
  MHA caches keys and values (2 n_h d_h elements per token per layer), MLA the latent c^KV and the one shared
  RoPE key k^R (d_c + d_h^R).
- ``kv_cache_elements_per_token``: [V2] Table 1 for MHA, GQA, MQA and MLA.
"""

from __future__ import annotations

import math

import torch

from course_lib.attention import arguments
from course_lib.core.validation import boundary


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
    ``new_cache(batch_size)``. Raises TypeError for a dtype that is not floating point or a size that is not an
    int, ValueError for an empty kind or entries or a size < 1.
    """

    def __init__(self, kind: str, entries: dict[str, tuple[int, ...]], batch_size: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        arguments.kv_cache(kind, entries, batch_size, max_len, dtype)
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
        """The cached tensor ``name``, [B, *shape[:-1], length, shape[-1]] (a view of the storage). Raises KeyError
        for a name the cache does not hold."""
        if name not in self.entries:
            raise KeyError(f"this {self.kind} cache holds {sorted(self.entries)}, not {name!r}")
        if not self._buffers:
            *lead, features = self.entries[name]
            return torch.empty(self.batch_size, *lead, 0, features, dtype=self.dtype, device=self.device)
        return self._buffers[name].narrow(-2, 0, self._length)

    @boundary(arguments.kv_cache_truncate)
    def truncate(self, length: int) -> None:
        """Drop the cached positions >= length (a rejected draft, say); 0 empties the cache. Raises TypeError for
        a length that is not an int, ValueError for one outside [0, self.length]."""
        self._length = length

    @boundary(arguments.kv_cache_append)
    def append(self, **new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Append T new positions of every entry, each [B, *shape[:-1], T, shape[-1]] on the cache's device, and
        return the cached tensors (in the order of ``entries``), each now holding length + T positions.

        The new entries are stored in the cache's dtype; each returned tensor is in the dtype of its new entry
        (a view of the storage when the two agree, else a copy): under bfloat16 autocast a float32 cache
        returns bfloat16 keys, exactly those a forward without the cache computes. Raises TypeError for an
        entry on another device or not floating point, ValueError for shapes that do not fit or a cache that
        would grow past max_len.
        """
        T = next(iter(new.values())).shape[-2]
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


@boundary(arguments.kv_cache_elements_per_token)
def kv_cache_elements_per_token(attention: str, n_heads: int = 0, head_dim: int = 0, n_groups: int = 0,
                                kv_lora_rank: int = 0, qk_rope_head_dim: int = 0) -> int:
    """KV-cache elements per token per layer, [V2] Table 1: MHA 2 n_h d_h; GQA 2 n_g d_h; MQA 2 d_h;
    MLA d_c + d_h^R. ``attention`` is "mha", "gqa", "mqa" or "mla"; give the sizes that kind uses (> 0), else
    ValueError."""
    return {"mha": 2 * n_heads * head_dim, "gqa": 2 * n_groups * head_dim, "mqa": 2 * head_dim,
            "mla": kv_lora_rank + qk_rope_head_dim}[attention]
