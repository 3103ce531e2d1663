"""Token-pyramid arithmetic derived from `patch_nums`; nothing here is written out by hand."""
from __future__ import annotations

import itertools

import torch

PATCH_NUMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def token_offsets(patch_nums: tuple[int, ...]) -> tuple[int, ...]:
    """Start of every scale in the flattened sequence, plus the total length: (0, 1, 5, ..., L)."""
    return tuple(itertools.accumulate((p * p for p in patch_nums), initial=0))


def scale_ids(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """(L,) int64: the scale index of every token."""
    return torch.cat([torch.full((p * p,), k, dtype=torch.long) for k, p in enumerate(patch_nums)])


def block_causal_bias(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """(1, 1, L, L) float: 0 where a token may attend (same or earlier scale), -inf elsewhere."""
    d = scale_ids(patch_nums)
    return torch.where(d[:, None] >= d[None, :], 0.0, -torch.inf).reshape(1, 1, len(d), len(d))


def check_patch_nums(patch_nums: tuple[int, ...]) -> None:
    if len(patch_nums) < 1 or any(int(p) < 1 for p in patch_nums):
        raise ValueError(f"patch_nums must be positive sizes, got {patch_nums}")
    if list(patch_nums) != sorted(set(patch_nums)):
        raise ValueError(f"patch_nums must be strictly increasing, got {patch_nums}")
