"""The collaborative decoder: a VQVAE and a chain of VARs that split the scales between them.

A large drafter generates the coarse scales, a small refiner the fine ones; any number of models can be chained
(d30 -> d20 -> d16): model i generates the scales up to its boundary, and the next one takes over the token-map
prefix with one block-causal prefill pass (`code.loop.run_scales`). Plain VAR is the one-model case, so one
model in every role reproduces plain VAR exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from models import VAR, VQVAE, check_compatible

from .fast import FastPath
from .fast_check import after_generation
from .loop import DecodeState, TokenEdit, make_generator, resolve_labels, run_chain
from .sampling import Generators, SamplingConfig


def chain_stops(draft_steps: int | Sequence[int], num_models: int, num_scales: int) -> list[int]:
    """Scale boundaries of a chain: [N1, N2, ..., K] from the draft steps of all models but the last."""
    steps = list(draft_steps) if isinstance(draft_steps, (list, tuple)) else [draft_steps]
    if len(steps) != num_models - 1:
        raise ValueError(f"draft_steps needs {num_models - 1} boundaries for {num_models} models, got {steps}")
    for n in steps:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= num_scales:
            raise ValueError(f"draft_steps must be integers in 0..{num_scales} (0: refiner alone, {num_scales}: "
                             f"drafter alone), got {n!r}")
    if steps != sorted(steps):
        raise ValueError(f"draft_steps of a chain must not decrease, got {steps}")
    return steps + [num_scales]


@dataclass(eq=False)
class CollaborativeDecoder:
    """A VQVAE plus a chain of VARs; model i generates scales stops[i-1] .. stops[i]-1 (stops derived from
    `draft_steps`: one boundary per model but the last; none for plain VAR).

    decoder(labels, ...) returns images; decoder.state(labels, ...) the token maps without decoding. For repeated
    fast generation hold a `code.FastPath(decoder)` and pass it as fast=path: its compiled steps, CUDA graphs and
    KV arena live as long as you keep it; fast=True builds one for a single call.
    """
    vae: VQVAE
    models: list[VAR]
    draft_steps: int | Sequence[int] = ()
    stops: list[int] = field(init=False)

    def __post_init__(self):
        self.models = list(self.models)
        if not self.models:
            raise ValueError("a collaborative decoder needs at least one VAR")
        self.stops = chain_stops(self.draft_steps, len(self.models), self.num_scales)
        check_compatible(self.vae, self.models)

    @property
    def num_scales(self) -> int:
        return self.vae.quantize.num_scales

    @property
    def num_classes(self) -> int:
        return self.models[0].config.num_classes

    @property
    def device(self) -> torch.device:
        return self.models[0].head.weight.device

    def active(self) -> list[tuple[VAR, int, int]]:
        """(model, first scale, stop) of every model that generates at least one scale."""
        starts = [0] + self.stops[:-1]
        return [(m, a, b) for m, a, b in zip(self.models, starts, self.stops) if a < b]

    def fast_path(self, fast: bool | FastPath | None) -> FastPath | None:
        """What `fast=` means in every call: False or None the eager path (returns None), True a new FastPath, or the
        given FastPath (checked against this chain)."""
        if fast is False or fast is None:
            return None
        if fast is True:
            return FastPath(self)
        if isinstance(fast, FastPath):
            if not fast.serves(self):
                raise ValueError("this FastPath was built for another decoder (VQVAE, models or draft steps differ)")
            return fast
        raise ValueError(f"fast must be True, False or a code.FastPath, got {fast!r}")

    @torch.no_grad()
    def state(self, labels=None, *, batch_size: int | None = None, seed: int | None = None,
              generator: Generators = None, sampling: SamplingConfig | None = None, edit: TokenEdit | None = None,
              keep_logits: bool = False, fast: bool | FastPath | None = False, **sampling_kwargs) -> DecodeState:
        """The K token maps and f_hat of `labels` (see __call__ for the arguments), without decoding."""
        if sampling is not None and sampling_kwargs:
            raise ValueError(f"pass either sampling= or {', '.join(sampling_kwargs)}, not both")
        sampling = sampling or SamplingConfig(**sampling_kwargs)
        sampling.validate(self.num_scales)
        path = self.fast_path(fast)
        device = self.device
        generator = make_generator(seed, generator, device)
        labels = resolve_labels(labels, batch_size, self.num_classes, device, generator)
        state = DecodeState(labels, self.vae.quantize.zeros_fhat(labels.shape[0]),
                            logits=[] if keep_logits else None, edit=edit)
        run_chain(self.vae, self.models, self.stops, state, sampling, generator, path.steps if path else None)
        if path is not None:
            after_generation(self, path, state, sampling)
        return state

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor, fast: bool | FastPath | None = False, chunk: int | None = None
               ) -> torch.Tensor:
        """f_hat -> images in [0, 1] as (B, 3, H, W) float32, `chunk` images per decoder call (all at once by
        default; a FastPath decodes with its bf16 decoder copy, in its own chunks)."""
        path = self.fast_path(fast)
        if path is not None:
            return path.decode(f_hat)
        return torch.cat([self.vae.fhat_to_unit(f) for f in f_hat.split(chunk or f_hat.shape[0])])

    @torch.no_grad()
    def __call__(self, labels=None, *, return_tokens: bool = False, fast: bool | FastPath | None = False, **kwargs):
        """Images in [0, 1] as (B, 3, H, W) float32; with return_tokens, also the K token maps (B, p, p).

        labels: class ids (an int, a list or a tensor), or None with batch_size to draw them. Sampling: cfg (linear
        schedule t = cfg * k / (K - 1)), top_k, top_p, temperature (scalars or one value per scale; temperature
        applies after filtering), greedy, or sampling=SamplingConfig(...). Randomness: seed, or generator (one
        torch.Generator, or one per image so that each image is independent of its batch). edit: a TokenEdit
        (tokens kept from a source outside a mask). keep_logits: keep every scale's raw logits in the state.
        fast: True, or a FastPath built from this decoder (False or None: the eager path).
        """
        path = self.fast_path(fast)
        state = self.state(labels, fast=path, **kwargs)
        images = self.decode(state.f_hat, path)
        if not return_tokens:
            return images
        return images, [t.view(t.shape[0], p, p) for t, p in zip(state.tokens, self.vae.patch_nums)]


@torch.no_grad()
def collaborative_generate(drafter: VAR, refiner: VAR, vae: VQVAE, labels=None, draft_steps: int = 8, **kwargs):
    """CoDe with two models: the drafter generates scales 1..draft_steps, the refiner the rest."""
    return CollaborativeDecoder(vae, [drafter, refiner], draft_steps)(labels, **kwargs)


@torch.no_grad()
def var_generate(var: VAR, vae: VQVAE, labels=None, **kwargs):
    """Plain VAR: one model generates every scale (the one-model chain)."""
    return CollaborativeDecoder(vae, [var])(labels, **kwargs)
