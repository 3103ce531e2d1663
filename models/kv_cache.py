"""Static KV cache: allocated once for the scales a model will run, written by position."""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, batch: int, heads: int, length: int, head_dim: int, dtype: torch.dtype, device):
        shape = (batch, heads, length, head_dim)  # (B, H, T, c)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @classmethod
    def over(cls, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """A cache on preallocated (B, H, T, c) tensors, e.g. views of an arena that outlives one generation."""
        if k.shape != v.shape or k.dtype != v.dtype or k.ndim != 4:
            raise ValueError(f"keys {tuple(k.shape)} {k.dtype} and values {tuple(v.shape)} {v.dtype} must match")
        cache = cls.__new__(cls)
        cache.k, cache.v = k, v
        return cache

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def attend_to(self, bg: int, ed: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store keys/values of positions [bg, ed) and return those of [0, ed) to attend to.

        Positions beyond the cache (the last scale a model runs) are never stored: they are joined to the
        cached prefix for this one pass only.
        """
        k, v = k.to(self.k.dtype), v.to(self.v.dtype)
        if ed <= self.length:
            self.k[:, :, bg:ed] = k
            self.v[:, :, bg:ed] = v
            return self.k[:, :, :ed], self.v[:, :, :ed]
        if bg == 0:
            return k, v
        return torch.cat((self.k[:, :, :bg], k), 2), torch.cat((self.v[:, :, :bg], v), 2)
