"""Collaborative decoding: a large drafter generates the coarse scales, a small refiner the fine ones.

Any number of models can be chained (d30 -> d20 -> d16): model i generates the scales up to its boundary,
and the next one takes over the token-map prefix with one block-causal prefill pass. It is the same loop
as plain VAR (`models.generation`), so one model in every role reproduces plain VAR exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from models.generation import generate, generate_state
from models.var import VAR
from models.vqvae import VQVAE


def chain_stops(draft_steps: int | Sequence[int], num_models: int, num_scales: int) -> list[int]:
    """Scale boundaries of a chain: [N1, N2, ..., K] from the draft steps of all models but the last."""
    steps = list(draft_steps) if isinstance(draft_steps, (list, tuple)) else [draft_steps]
    if len(steps) != num_models - 1:
        raise ValueError(f"draft_steps needs {num_models - 1} boundaries for {num_models} models, got {steps}")
    for n in steps:
        if not isinstance(n, int) or not 0 <= n <= num_scales:
            raise ValueError(f"draft_steps must be integers in 0..{num_scales} (0: refiner alone, {num_scales}: "
                             f"drafter alone), got {n!r}")
    if steps != sorted(steps):
        raise ValueError(f"draft_steps of a chain must not decrease, got {steps}")
    return steps + [num_scales]


@dataclass
class CollaborativeDecoder:
    """A VQVAE plus a chain of VARs that split the scales between them at `draft_steps`."""
    vae: VQVAE
    models: Sequence[VAR]
    draft_steps: int | Sequence[int]

    def __post_init__(self):
        self.stops = chain_stops(self.draft_steps, len(self.models), self.vae.quantize.num_scales)

    @torch.no_grad()
    def __call__(self, labels=None, **kwargs):
        """Images in [0, 1]; same arguments as `models.generation.generate` (cfg, top_k, seed, ...)."""
        return generate(self.vae, self.models, self.stops, labels, **kwargs)

    @torch.no_grad()
    def state(self, labels=None, **kwargs):
        """The raw DecodeState (token maps, f_hat) without decoding to pixels."""
        return generate_state(self.vae, self.models, self.stops, labels, **kwargs)


@torch.no_grad()
def collaborative_generate(drafter: VAR, refiner: VAR, vae: VQVAE, labels=None, draft_steps: int = 8, **kwargs):
    """CoDe with two models: the drafter generates scales 1..draft_steps, the refiner the rest."""
    return CollaborativeDecoder(vae, [drafter, refiner], draft_steps)(labels, **kwargs)
