"""Timed generation for the demo scripts: latency without and with the VQVAE decoder, images/s, peak memory.

On CUDA the command is run once untimed (warm-up: kernel selection, allocator), then timed with CUDA events;
on a CPU it is timed once with perf_counter. The latency without the decoder is what the paper reports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from models.fast import FastPath
from models.generation import TokenEdit, generate_state
from models.sampling import SamplingConfig
from utils.cli import autocast
from utils.cli_models import Chain

T = TypeVar("T")


@dataclass
class Timing:
    batch: int
    generate_s: float  # token maps and f_hat: every transformer pass, no VQVAE decoder
    decode_s: float  # VQVAE decoder
    peak_memory_mb: float | None  # None on a CPU

    @property
    def total_s(self) -> float:
        return self.generate_s + self.decode_s

    def report(self) -> str:
        mem = "n/a" if self.peak_memory_mb is None else f"{self.peak_memory_mb:.0f} MB"
        return "\n".join([
            f"latency without the VQVAE decoder: {self.generate_s:.3f} s ({self.batch / self.generate_s:.1f} images/s)",
            f"latency with the VQVAE decoder:    {self.total_s:.3f} s ({self.batch / self.total_s:.1f} images/s)",
            f"peak GPU memory: {mem}"])


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    if device.type != "cuda":
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    out = fn()
    end.record()
    torch.cuda.synchronize(device)
    return out, start.elapsed_time(end) / 1000


@torch.no_grad()
def timed_generation(chain: Chain, labels: torch.Tensor, sampling: SamplingConfig, seed: int,
                     device: torch.device, dtype: torch.dtype, edit: TokenEdit | None = None, fast: bool = False
                     ) -> tuple[torch.Tensor, Timing]:
    """Images in [0, 1] as (B, 3, H, W) float32, and their timing. Each run re-seeds, so a warm-up changes nothing.
    fast: the models.fast path (built inside the autocast, so its weights take the compute dtype)."""
    with autocast(device, dtype):
        path = FastPath(chain.vae, chain.models, chain.stops) if fast else None

    def tokens():
        return generate_state(chain.vae, chain.models, chain.stops, labels, seed=seed, sampling=sampling, edit=edit,
                              fast=path or False)

    def decode(f_hat):
        return path.decode(f_hat) if path else chain.vae.fhat_to_unit(f_hat)  # images in [0, 1]

    def run():
        with autocast(device, dtype):
            state, gen_s = timed(tokens, device)
            images, dec_s = timed(lambda: decode(state.f_hat), device)
        return images, gen_s, dec_s

    if device.type == "cuda":
        run()
        torch.cuda.reset_peak_memory_stats(device)
    images, gen_s, dec_s = run()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return images, Timing(labels.shape[0], gen_s, dec_s, peak)
