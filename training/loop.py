"""The training step every script shares: accumulation, autocast, scaler, clipping, non-finite checks.

The script's part is a `LossStep(model, batch, step, total_steps) -> (loss, {name: detached tensor})`, `batch`
being a collated (images, labels, drops) micro-batch on the CPU; the loop owns everything else. One optimizer step
reads `grad_accum` micro-batches per rank; each micro-batch loss is a mean over its tokens divided by grad_accum,
and DDP averages over ranks, so a step's gradient is the mean over the global batch whatever the world size.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.dist import DistInfo
from utils.errors import RunError

from .optim import LRSchedule, set_lr
from .state import reseed


class NonFiniteLoss(RunError):
    """The loss or the gradient became NaN or infinite; the run stops before the update is applied."""


LossStep = Callable[[nn.Module, tuple, int, int], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass
class LoopSettings:
    total_steps: int
    grad_accum: int
    clip: float  # max gradient norm; 0 disables clipping (the norm is still logged)
    autocast_dtype: torch.dtype | None  # None: float32
    seed: int
    last_checkpoint: Path  # named when the run stops on a non-finite loss


@dataclass
class Trainer:
    model: nn.Module  # DistributedDataParallel or the bare model
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    schedule: LRSchedule
    loss_step: LossStep
    info: DistInfo
    settings: LoopSettings

    def autocast(self):
        dtype = self.settings.autocast_dtype
        return torch.autocast(self.info.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def train_step(self, step: int, batches: Iterator) -> dict[str, float]:
        """One optimizer step; raises NonFiniteLoss before touching the weights if anything is NaN/inf."""
        s, model, opt = self.settings, self.model, self.optimizer
        lr = self.schedule(step)
        set_lr(opt, lr)
        reseed(s.seed, self.info.rank, step)
        model.train()
        opt.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for i in range(s.grad_accum):
            batch = next(batches)
            last = i == s.grad_accum - 1
            with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
                with self.autocast():
                    loss, parts = self.loss_step(model, batch, step, s.total_steps)
                scaled = loss / s.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0) + v.double() / s.grad_accum
        metrics = reduce_over_ranks(sums, self.info.device)
        if not math.isfinite(metrics["loss"]):
            raise self.diverged(f"the loss is {metrics['loss']}", step, lr)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        norm = float(nn.utils.clip_grad_norm_(model.parameters(), s.clip if s.clip > 0 else math.inf))
        if self.scaler is None and not math.isfinite(norm):
            raise self.diverged(f"the gradient norm is {norm}", step, lr)
        if self.scaler is not None:
            self.scaler.step(opt)  # skips the update when fp16 gradients overflowed
            self.scaler.update()
        else:
            opt.step()
        return {**metrics, "lr": lr, "grad_norm": norm}

    def diverged(self, what: str, step: int, lr: float) -> NonFiniteLoss:
        return NonFiniteLoss(f"{what} in optimizer step {step + 1} (lr {lr:.3g}). Stopping without saving; the last "
                             f"good checkpoint (if any) is {self.settings.last_checkpoint}")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, step: int, extra_passes: int = 0) -> dict[str, float]:
        """Mean losses over the (sharded) validation split, weighted by batch size. `extra_passes` repeat the last
        batch, discarded: a sharded model's passes gather weights from every rank, so all ranks run as many."""
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros((), dtype=torch.float64, device=self.info.device)
        batch = None
        for batch in loader:
            with self.autocast():
                loss, parts = self.loss_step(model, batch, step, self.settings.total_steps)
            n = batch[1].shape[0]
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0) + v.double() * n
            count += n
        for _ in range(extra_passes):
            with self.autocast():
                self.loss_step(model, batch, step, self.settings.total_steps)
        totals = reduce_over_ranks({"count": count, **sums}, self.info.device, mean=False)
        count = max(totals.pop("count"), 1.0)
        return {f"val_{k}": v / count for k, v in totals.items()}


def reduce_over_ranks(values: dict[str, torch.Tensor], device: torch.device, mean: bool = True) -> dict[str, float]:
    """Sum (or average) scalars over ranks in one all-reduce; every rank must pass the same keys."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values.values()])
    if dist.is_initialized():
        dist.all_reduce(t)
        if mean:
            t /= dist.get_world_size()
    return dict(zip(values, t.tolist()))

