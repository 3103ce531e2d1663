"""Sampling settings and the published sampler: pure functions on logits with an explicit generator.

`sample_tokens` is the published sampler; `fill_noise_` + `draw_from_noise` draw the same tokens from the same
random stream without a host sync (the fast path's form of it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

PerScale = float | int | Sequence[float] | Sequence[int]
# Guidance and temperature scale the logits (|logit| up to ~1e2): these limits keep the products far inside
# float16's range (6.5e4) for cfg and float32's (3.4e38) for 1 / temperature; 1e-4 is greedy in effect
MAX_CFG, MIN_TEMPERATURE, MAX_TEMPERATURE = 100.0, 1e-4, 1e4


@dataclass
class SamplingConfig:
    """Classifier-free guidance and token filtering. top_k, top_p and temperature may be per-scale lists.

    top_k=0 disables top-k; top_p=1 keeps every token (the published code still runs its filter then).
    greedy takes the argmax instead of drawing (no random numbers are consumed). more_smooth: the published
    Gumbel-softmax smoothing of the next-scale input (`smooth_codes`), for pictures, not for FID; eager path only.
    """
    cfg: float = 1.5
    top_k: PerScale = 900
    top_p: PerScale = 0.96
    temperature: PerScale = 1.0
    greedy: bool = False
    more_smooth: bool = False

    def validate(self, num_scales: int) -> None:
        if not (isinstance(self.cfg, (int, float)) and not isinstance(self.cfg, bool) and math.isfinite(self.cfg)
                and self.cfg >= 0):
            raise ValueError(f"cfg must be a number >= 0 (and finite), got {self.cfg!r}")
        if self.cfg > MAX_CFG:
            raise ValueError(f"cfg must be at most {MAX_CFG:g} (far beyond useful guidance; near 1000 the guided "
                             f"logits overflow float16), got {self.cfg!r}")
        if not isinstance(self.more_smooth, bool):
            raise ValueError(f"more_smooth must be True or False, got {self.more_smooth!r}")
        if self.greedy and self.more_smooth:
            raise ValueError("more_smooth smooths sampled draws with Gumbel noise, greedy draws nothing: choose one")
        for name in ("top_k", "top_p", "temperature"):
            values = self._list(name, num_scales)
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite numbers, got {getattr(self, name)!r}")
            if name == "top_k" and any(int(v) != v or v < 0 for v in values):
                raise ValueError(f"top_k must be integers >= 0 (0 disables it), got {getattr(self, name)!r}")
            if name == "top_p" and any(not 0 < v <= 1 for v in values):
                raise ValueError(f"top_p must be in (0, 1], got {getattr(self, name)!r}")
            if name == "temperature" and any(not v > 0 for v in values):
                raise ValueError(f"temperature must be finite and > 0, got {getattr(self, name)!r}")
            if name == "temperature" and any(not MIN_TEMPERATURE <= v <= MAX_TEMPERATURE for v in values):
                raise ValueError(f"temperature must be in {MIN_TEMPERATURE:g}..{MAX_TEMPERATURE:g} (beyond, logits "
                                 f"/ temperature leaves float32's range), got {getattr(self, name)!r}")

    def _list(self, name: str, num_scales: int) -> list:
        value = getattr(self, name)
        if isinstance(value, (int, float)):
            return [value] * num_scales
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a number or one number per scale, got {value!r}")
        value = list(value)
        if len(value) != num_scales:
            raise ValueError(f"{name} has {len(value)} entries but there are {num_scales} scales")
        return value

    def at(self, k: int, num_scales: int) -> tuple[int, float, float]:
        """(top_k, top_p, temperature) for scale k."""
        return tuple(self._list(n, num_scales)[k] for n in ("top_k", "top_p", "temperature"))

    def guidance(self, k: int, num_scales: int) -> float:
        """The published linear schedule: no guidance on the first scale, `cfg` on the last."""
        return self.cfg * k / (num_scales - 1) if num_scales > 1 else 0.0


def cfg_mix(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t) * cond - t * uncond, the halves stacked as [cond; uncond] along the batch."""
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]


def filter_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """In place, as published: keep logits >= the k-th largest (ties survive), then the nucleus."""
    if top_k > 0:  # k >= V keeps everything, as the published filter does for k = V
        kth = logits_BlV.topk(min(int(top_k), logits_BlV.shape[-1]), dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False  # the most likely token always survives
        logits_BlV.masked_fill_(remove.scatter(-1, sorted_idx, remove), -torch.inf)
    return logits_BlV


def filtered_probs(logits_BlV: torch.Tensor, top_k: int, top_p: float, temperature: float) -> torch.Tensor:
    """The published order: top-k and top-p filter (in place), then the temperature, then the softmax."""
    logits_BlV = filter_top_k_top_p_(logits_BlV, top_k, top_p)
    if temperature != 1:
        logits_BlV = logits_BlV / temperature
    return logits_BlV.softmax(dim=-1)


Generators = torch.Generator | Sequence[torch.Generator] | None


def sample_tokens(logits_BlV: torch.Tensor, top_k: int, top_p: float, temperature: float = 1.0,
                  generator: Generators = None, greedy: bool = False) -> torch.Tensor:
    """(B, l, V) float logits -> (B, l) token ids; one multinomial draw over all B*l rows.

    `generator` may also be one generator per image: each row then draws as if it were generated alone
    (batch 1), so an image depends only on its own generator, whatever batch it is part of.
    """
    if greedy:
        return logits_BlV.argmax(dim=-1)
    B, l, V = logits_BlV.shape
    probs = filtered_probs(logits_BlV, top_k, top_p, temperature)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs.view(-1, V), num_samples=1, replacement=True, generator=generator).view(B, l)
    if len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for a batch of {B}")
    return torch.stack([torch.multinomial(probs[b], 1, replacement=True, generator=g)[:, 0]
                        for b, g in enumerate(generator)])


def fill_noise_(noise_BlV: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Exp(1) noise drawn exactly as torch.multinomial draws it: over all rows from one generator, or, with one
    generator per image (see sample_tokens), each image's rows from its own."""
    if generator is None or isinstance(generator, torch.Generator):
        return noise_BlV.exponential_(generator=generator)
    if len(generator) != noise_BlV.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {noise_BlV.shape[0]}")
    for rows_lV, g in zip(noise_BlV, generator):
        rows_lV.exponential_(generator=g)
    return noise_BlV


def draw_from_noise(logits_2BlV: torch.Tensor, t: float, top_k: int, top_p: float, temperature: float,
                    greedy: bool, noise_BlV: torch.Tensor | None) -> torch.Tensor:
    """The published sampler on CFG-doubled logits -> (B, l) ids, drawing with given Exp(1) noise.

    The same filtered_probs as sample_tokens; its torch.multinomial(probs, 1) computes argmax(probs / q) with
    q = empty_like(probs).exponential_(generator), so noise drawn by fill_noise_ gives the same tokens.
    """
    logits = cfg_mix(logits_2BlV, t)
    if greedy:
        return logits.argmax(dim=-1)
    return filtered_probs(logits, top_k, top_p, temperature).div_(noise_BlV).argmax(dim=-1)


def smooth_codes(logits_2BlV: torch.Tensor, k: int, num_scales: int, sampling: SamplingConfig,
                 generator: Generators, codebook_VC: torch.Tensor) -> torch.Tensor:
    """more_smooth, as published: scale k's code vectors (B, l, Cvae) for the next-scale input are
    softmax((l * (1 + r) + g) / tau) @ codebook, with l the guided logits after the top-k / top-p filter (before
    the temperature), r = k / (K - 1), tau = max(0.27 * (1 - 0.95 r), 0.005) and Gumbel noise g = -log(Exp(1))
    drawn from the generator after the scale's tokens."""
    r = k / (num_scales - 1) if num_scales > 1 else 0.0
    top_k, top_p, _ = sampling.at(k, num_scales)
    filtered = filter_top_k_top_p_(cfg_mix(logits_2BlV, sampling.guidance(k, num_scales)), top_k, top_p)
    gumbels = fill_noise_(torch.empty_like(filtered), generator).log_().neg_()
    tau = max(0.27 * (1 - r * 0.95), 0.005)
    return ((filtered.mul(1 + r) + gumbels) / tau).softmax(dim=-1) @ codebook_VC.to(filtered.dtype)
