"""The one scale loop: plain VAR, a drafter, a refiner and every model of a longer chain run through `run_scales`.

A model continues the token-map prefix it is handed (`DecodeState`): its first pass covers the whole prefix plus
its first scale (a refiner's prefill), every later pass one scale against its KV cache. `steps` runs each pass:
`EagerSteps` op by op, `code.fast.FastSteps` compiled and replayed from CUDA graphs; the loop, the hand-off and
the random stream are the same for both.
"""
from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass, field
from typing import Sequence

import torch

from models import VAR, VQVAE

from .sampling import Generators, SamplingConfig, cfg_mix, fill_noise_, sample_tokens, smooth_codes


@dataclass
class TokenEdit:
    """Zero-shot editing: at every scale, tokens where `masks[k]` is False are taken from `tokens[k]`."""
    tokens: list[torch.Tensor]  # (B, p_k^2) source token maps, e.g. VQVAE.img_to_tokens(image)
    masks: list[torch.Tensor]  # (B, p_k^2) bool, True = generate this token

    def apply(self, k: int, idx_Bl: torch.Tensor) -> torch.Tensor:
        return torch.where(self.masks[k], idx_Bl, self.tokens[k])


@dataclass
class DecodeState:
    """Everything that passes from one model to the next: the generated token-map prefix."""
    labels: torch.Tensor  # (B,)
    f_hat: torch.Tensor  # (B, Cvae, H, W) float32, sum of the generated scales
    tokens: list[torch.Tensor] = field(default_factory=list)  # (B, p_k^2) per generated scale
    inputs: list[torch.Tensor] = field(default_factory=list)  # next-scale inputs (B, p_k^2, Cvae), k = 1..
    logits: list[torch.Tensor] | None = None  # raw (2B, p_k^2, V) per scale, when kept for tests
    edit: TokenEdit | None = None  # inpainting / outpainting: tokens fixed outside a mask
    rng_start: list[torch.Tensor] | None = None  # more_smooth: the generators' states before scale 0 (redraw_prefix_)

    @property
    def done(self) -> int:
        return len(self.tokens)


def precision(models: Sequence[VAR], device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to the models' linear-weight dtype when it is reduced (models.cast_linear_weights_, or
    load_var(linear_dtype=...)): mixed-dtype ops need it, eager and fast paths alike. Its cast cache stays off
    (CUDA graphs must not capture casts the cache would free after the first call). Full-precision weights leave
    any autocast of the caller in charge, as published."""
    reduced = {m.head.weight.dtype for m in models} - {torch.float32, torch.float64}
    if not reduced:
        return contextlib.nullcontext()
    if len(reduced) > 1:
        raise ValueError(f"the models' linear weights mix {', '.join(sorted(map(str, reduced)))}: cast them to one "
                         "dtype")
    dtype, kind = reduced.pop(), device.type
    if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) != dtype:
        raise ValueError(f"the models' linear weights are {dtype} but autocast asks for "
                         f"{torch.get_autocast_dtype(kind)}: every op would cast them again; load them in the "
                         "autocast's dtype, or drop the autocast")
    return torch.autocast(kind, dtype=dtype, cache_enabled=False)


def compute_dtype(model: VAR, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return model.head.weight.dtype


def cache_length(offsets: Sequence[int], start: int, stop: int) -> int:
    """Cache positions a model needs to generate scales start..stop-1: all but the last scale it runs."""
    return offsets[stop - 1] if stop - 1 > start else 0


def scale_logits(model: VAR, cond_BD: torch.Tensor, inputs: torch.Tensor | None, k: int, bg: int,
                 blocks=None, head=None) -> torch.Tensor:
    """Raw logits (2B, p_k^2, V) of scale k from the pass over tokens [bg, offsets[k+1]); bg < offsets[k] only
    in a prefill. `blocks` / `head` replace model.blocks / model.logits (the fast path's compiled versions)."""
    offs = model.config.offsets
    x = model.embed(cond_BD, inputs, bg, offs[k + 1])
    h = model.hidden(x, cond_BD, bg, offs[k + 1], blocks)[:, offs[k] - bg:]
    return (head or model.logits)(h, cond_BD)


class EagerSteps:
    """The reference per-scale step, op by op; each model allocates its cache when it starts and frees it after.

    `run_scales(..., steps=...)` accepts any object with these three methods: code.fast.FastSteps runs the
    same step compiled and captured in CUDA graphs, while the loop, the hand-off and the random stream stay here.
    """

    def setup_cache(self, model: VAR, batch: int, length: int, dtype: torch.dtype, device) -> None:
        model.setup_cache(batch, length, dtype, device)

    def free_cache(self, model: VAR) -> None:
        model.free_cache()

    def __call__(self, model: VAR, cond_BD: torch.Tensor, inputs: torch.Tensor | None, k: int, bg: int,
                 sampling: SamplingConfig, generator, keep_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token ids (B, p_k^2), raw logits (2B, p_k^2, V) or None) of scale k."""
        K = model.config.num_scales
        logits = scale_logits(model, cond_BD, inputs, k, bg)
        top_k, top_p, temperature = sampling.at(k, K)
        idx = sample_tokens(cfg_mix(logits, sampling.guidance(k, K)), top_k, top_p, temperature,
                            generator, sampling.greedy)
        return idx, logits


@torch.no_grad()
def run_scales(model: VAR, vae: VQVAE, state: DecodeState, stop: int, sampling: SamplingConfig,
               generator: Generators = None, steps=None) -> DecodeState:
    """Generate scales state.done .. stop-1 with `model`, continuing the prefix in `state`.

    The first pass covers the whole prefix plus the first new scale (for a refiner: its prefill, one
    block-causal pass); every later pass is one scale against the KV cache. The cache holds only the
    scales whose keys are read again (the last scale this model runs is never stored), and it is freed
    before returning, so the next model in a chain allocates into the memory this one gave back.
    `steps` runs each pass (default EagerSteps(); code.fast.FastSteps for the compiled path).
    """
    c, start = model.config, state.done
    offs, B = c.offsets, state.labels.shape[0]
    if start >= stop:
        return state
    steps = steps or EagerSteps()
    if sampling.more_smooth:
        if not isinstance(steps, EagerSteps):
            raise ValueError("more_smooth runs on the eager path only: use fast=False (--eager in sample_CoDe.py, "
                             "no --fast in the inference scripts)")
        redraw_prefix_(state, generator, model)
    device, was_training = state.f_hat.device, model.training
    model.eval()  # generation never drops paths, whatever mode the caller left the model in
    cond_BD = model.class_emb(torch.cat((state.labels, torch.full_like(state.labels, c.num_classes))))
    steps.setup_cache(model, 2 * B, cache_length(offs, start, stop), compute_dtype(model, device), device)
    try:
        bg, inputs = 0, torch.cat(state.inputs[:start], 1) if start else None
        for k in range(start, stop):
            idx, logits = steps(model, cond_BD, inputs, k, bg, sampling, generator,
                                state.logits is not None or sampling.more_smooth)
            if state.logits is not None:
                state.logits.append(logits)
            codes = smooth_codes(logits, k, c.num_scales, sampling, generator, vae.quantize.embedding.weight) \
                if sampling.more_smooth else None
            if state.edit is not None:
                idx = state.edit.apply(k, idx)
                if codes is not None:  # the kept tokens enter as their codebook entries
                    codes = torch.where(state.edit.masks[k].unsqueeze(-1), codes, vae.quantize.embedding(idx))
            state.tokens.append(idx)
            inputs = vae.quantize.next_input(k, state.f_hat, idx, codes)
            if inputs is not None:
                state.inputs.append(inputs)
            bg = offs[k + 1]
    finally:
        steps.free_cache(model)
        model.train(was_training)
    return state


def redraw_prefix_(state: DecodeState, generator: Generators, model: VAR) -> None:
    """more_smooth's random stream, as published: the first model records the generators' states; a model that
    continues a prefix (a refiner) restarts from them and draws once per scale of the prefix, as the published
    refiner re-seeds and re-draws the drafted tokens. Its stream thus skips the drafter's Gumbel draws (so CoDe
    with one model in both roles is not plain VAR here, as published). No generator: one continuous stream."""
    if generator is None:
        return
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if state.done == 0:
        state.rng_start = [g.get_state() for g in gens]
        return
    if state.rng_start is None or len(state.rng_start) != len(gens):
        raise ValueError("more_smooth continues a prefix from the generators' states before its first scale: "
                         "generate the prefix with more_smooth and the same generators (one run_chain)")
    for g, saved in zip(gens, state.rng_start):
        g.set_state(saved)
    c = model.config
    for p in c.patch_nums[:state.done]:
        fill_noise_(state.f_hat.new_empty(state.labels.shape[0], p * p, c.vocab_size, dtype=torch.float32), generator)


def run_chain(vae: VQVAE, models: Sequence[VAR], stops: Sequence[int], state: DecodeState, sampling: SamplingConfig,
              generator: Generators = None, steps=None) -> DecodeState:
    """Each model of a chain generates its scales (model i up to stops[i]), continuing the prefix in `state`."""
    with precision(models, state.f_hat.device):
        for model, stop in zip(models, stops):
            run_scales(model, vae, state, stop, sampling, generator, steps)
    return state


def resolve_labels(labels, batch_size: int | None, num_classes: int, device, generator) -> torch.Tensor:
    """Labels as a (B,) int64 tensor; an int repeats, None draws uniformly (as published)."""
    if labels is None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError("labels=None draws the classes from one generator; with one generator per image, "
                             "pass the labels")
        if batch_size is None:
            raise ValueError("labels=None needs batch_size to know how many random classes to draw")
        uniform = torch.full((1, num_classes), 1.0 / num_classes, device=device)
        return torch.multinomial(uniform, batch_size, replacement=True, generator=generator).view(batch_size)
    if isinstance(labels, int) and not isinstance(labels, bool):
        labels = [labels] * (batch_size or 1)
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"labels must be integer class ids (an int, a list or a tensor), got {labels!r}") from None
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D list of class ids, got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integer class ids, got {labels.dtype} values {labels[:4].tolist()}")
    if batch_size is not None and labels.numel() != batch_size:
        raise ValueError(f"got {labels.numel()} labels for batch_size={batch_size}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must be class ids in 0..{num_classes - 1}, got {lo if lo < 0 else hi}")
    return labels.to(device=device, dtype=torch.long)


MAX_SEED = 2**32 - 1  # torch's CPU generator keeps a seed's low 32 bits, CUDA's 64: larger seeds would differ


def make_generator(seed: int | None, generator: Generators, device) -> Generators:
    """seed -> a new generator on `device`; or `generator` (one torch.Generator, or a list of one per image)."""
    if generator is not None:
        if seed is not None:
            raise ValueError("pass either seed or generator, not both")
        gens = [generator] if isinstance(generator, torch.Generator) else generator
        if isinstance(gens, (str, bytes)) or not isinstance(gens, Sequence) or not gens or \
                not all(isinstance(g, torch.Generator) for g in gens):
            raise ValueError(f"generator must be a torch.Generator or a list of one per image, got {generator!r}")
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an integer in 0..{MAX_SEED} (torch's CPU generator keeps 32 bits), "
                         f"got {seed!r}")
    return torch.Generator(device=device).manual_seed(int(seed))
