"""AdamW with VAR's no-decay groups, the batch-scaled learning rate and the warm-up + decay schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

NO_DECAY_NAMES = ("pos_start", "pos_1LC", "lvl_embed", "class_emb", "scale_mul")
WARMUP_START = 0.005  # VAR's wp0: warm-up starts at 0.5% of the peak


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matrices only: no decay on biases and norms (1-D), embeddings and position tables."""
    embeddings = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name in embeddings or any(key in name for key in NO_DECAY_NAMES)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule of VAR: the peak learning rate is base_lr x global_batch / 256."""
    return base_lr * global_batch / 256


@dataclass
class LRSchedule:
    """Linear warm-up from 0.5% of the peak, then cosine or linear decay to `min_ratio` x peak at the last step."""
    peak: float
    total_steps: int
    warmup_steps: int
    kind: str = "linear"  # or "cosine"
    min_ratio: float = 0.01

    def __post_init__(self):
        if self.kind not in ("linear", "cosine"):
            raise ValueError(f"unknown lr schedule {self.kind!r}: use 'linear' or 'cosine'")
        self.warmup_steps = min(self.warmup_steps, self.total_steps - 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * (WARMUP_START + (1 - WARMUP_START) * step / self.warmup_steps)
        done = (step - self.warmup_steps) / max(self.total_steps - 1 - self.warmup_steps, 1)  # 0 -> 1
        rest = 0.5 + 0.5 * math.cos(math.pi * done) if self.kind == "cosine" else 1 - done
        return self.peak * (self.min_ratio + (1 - self.min_ratio) * rest)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
