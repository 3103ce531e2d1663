"""Timing for the demo scripts: latency without and with the VQVAE decoder, images/s, peak memory.

On CUDA the command is run once untimed (warm-up: compilation, kernel selection, allocator), then timed with CUDA
events; on a CPU it is timed once with perf_counter. The latency without the decoder is what the paper reports.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

T = TypeVar("T")
S = TypeVar("S")


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


def timed_generation(device: torch.device, batch: int, tokens: Callable[[], S],
                     decode: Callable[[S], torch.Tensor]) -> tuple[torch.Tensor, Timing]:
    """decode(tokens()) with each part timed; `tokens` must re-seed, so that the warm-up changes nothing."""
    def run():
        state, gen_s = timed(tokens, device)
        images, dec_s = timed(lambda: decode(state), device)
        return images, gen_s, dec_s

    if device.type == "cuda":
        run()
        torch.cuda.reset_peak_memory_stats(device)
    images, gen_s, dec_s = run()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return images, Timing(batch, gen_s, dec_s, peak)
