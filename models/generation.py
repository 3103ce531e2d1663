"""The one generation loop: plain VAR, a drafter, a refiner and longer chains all run through `run_scales`."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .sampling import Generators, SamplingConfig, cfg_mix, sample_tokens
from .var import VAR
from .vqvae import VQVAE


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

    @property
    def done(self) -> int:
        return len(self.tokens)


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

    `run_scales(..., steps=...)` accepts any object with these three methods: models.fast.FastSteps runs the
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
    `steps` runs each pass (default EagerSteps(); models.fast.FastSteps for the compiled path).
    """
    c, start = model.config, state.done
    offs, B = c.offsets, state.labels.shape[0]
    if start >= stop:
        return state
    steps = steps or EagerSteps()
    device, was_training = state.f_hat.device, model.training
    model.eval()  # generation never drops paths, whatever mode the caller left the model in
    cond_BD = model.class_emb(torch.cat((state.labels, torch.full_like(state.labels, c.num_classes))))
    steps.setup_cache(model, 2 * B, cache_length(offs, start, stop), compute_dtype(model, device), device)
    try:
        bg, inputs = 0, torch.cat(state.inputs[:start], 1) if start else None
        for k in range(start, stop):
            idx, logits = steps(model, cond_BD, inputs, k, bg, sampling, generator, state.logits is not None)
            if state.logits is not None:
                state.logits.append(logits)
            if state.edit is not None:
                idx = state.edit.apply(k, idx)
            state.tokens.append(idx)
            inputs = vae.quantize.next_input(k, state.f_hat, idx)
            if inputs is not None:
                state.inputs.append(inputs)
            bg = offs[k + 1]
    finally:
        steps.free_cache(model)
        model.train(was_training)
    return state


def check_compatible(vae: VQVAE, models: Sequence[VAR]) -> None:
    """Every model of a chain must speak the VQVAE's token language."""
    for i, m in enumerate(models):
        c = m.config
        for what, mine, theirs in (("patch_nums", c.patch_nums, vae.patch_nums), ("vocab_size", c.vocab_size, vae.vocab_size),
                                   ("latent channels (Cvae)", c.cvae, vae.Cvae)):
            if mine != theirs:
                raise ValueError(f"model {i} (depth {c.depth}) has {what}={mine} but the VQVAE has {theirs}: "
                                 "all models in a collaborative chain must share one tokenizer")
        if c.num_classes != models[0].config.num_classes:
            raise ValueError(f"model {i} has {c.num_classes} classes but model 0 has {models[0].config.num_classes}")


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
    if isinstance(labels, int):
        labels = [labels] * (batch_size or 1)
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.numel() == 0 or labels.is_floating_point():
        raise ValueError(f"labels must be a non-empty 1-D list of class ids, got shape {tuple(labels.shape)}")
    if batch_size is not None and labels.numel() != batch_size:
        raise ValueError(f"got {labels.numel()} labels for batch_size={batch_size}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must be class ids in 0..{num_classes - 1}, got {lo if lo < 0 else hi}")
    return labels.to(device=device, dtype=torch.long)


def make_generator(seed: int | None, generator: Generators, device) -> Generators:
    if generator is not None:
        return generator
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def fast_path_for(fast, vae: VQVAE, models: Sequence[VAR], stops: Sequence[int]):
    """None for the eager path; the FastPath to use for fast=True (kept across calls) or the one given."""
    if fast is False or fast is None:
        return None
    from .fast import FastPath, fast_path  # the fast path is optional machinery on top of this loop
    if isinstance(fast, FastPath):
        return fast.check_chain(vae, models, stops)
    if fast is True:
        return fast_path(vae, models, stops)
    raise ValueError(f"fast must be True, False or a models.fast.FastPath, got {fast!r}")


def check_stops(stops: Sequence[int], num_scales: int) -> None:
    if not stops or list(stops) != sorted(stops) or stops[0] < 0 or stops[-1] != num_scales:
        raise ValueError(f"scale boundaries {list(stops)} must be non-decreasing in 0..{num_scales} "
                         f"and end at {num_scales}")


@torch.no_grad()
def generate_state(vae: VQVAE, models: Sequence[VAR], stops: Sequence[int], labels=None, *, batch_size: int | None = None,
                   seed: int | None = None, generator: Generators = None, keep_logits: bool = False,
                   edit: TokenEdit | None = None, sampling: SamplingConfig | None = None, fast=False,
                   **sampling_kwargs) -> DecodeState:
    """Model i generates scales stops[i-1] .. stops[i]-1 (stops[-1] == K); one random stream throughout.

    fast: True (or a models.fast.FastPath) runs every pass compiled and, on CUDA, replayed from CUDA graphs;
    same tokens as the eager path in float32 (see models/fast.py for what it changes on the models).
    """
    sampling = sampling or SamplingConfig(**sampling_kwargs)
    K = vae.quantize.num_scales
    check_compatible(vae, models)
    check_stops(stops, K)
    sampling.validate(K)
    path = fast_path_for(fast, vae, models, stops)
    device = models[0].head.weight.device
    generator = make_generator(seed, generator, device)
    labels = resolve_labels(labels, batch_size, models[0].config.num_classes, device, generator)
    state = DecodeState(labels, vae.quantize.zeros_fhat(labels.shape[0]),
                        logits=[] if keep_logits else None, edit=edit)
    with path.context() if path else contextlib.nullcontext():
        for model, stop in zip(models, stops):
            run_scales(model, vae, state, stop, sampling, generator, path.steps if path else None)
    return state


@torch.no_grad()
def generate(vae: VQVAE, models: Sequence[VAR], stops: Sequence[int], labels=None, *, return_tokens: bool = False,
             fast=False, **kwargs):
    """Images in [0, 1] as (B, 3, H, W) float32; with return_tokens, also the K token maps (B, p, p).

    Arguments: labels (int, list or tensor of class ids; None draws them), batch_size, cfg, top_k, top_p,
    temperature (scalars or per-scale lists), greedy, seed or generator, sampling (a SamplingConfig),
    edit (a TokenEdit: keep the source's tokens outside a mask), keep_logits, fast (see generate_state; it also
    decodes with the VQVAE decoder in bf16 / channels_last on CUDA).
    """
    state = generate_state(vae, models, stops, labels, fast=fast, **kwargs)  # checks the chain first
    path = fast_path_for(fast, vae, models, stops)  # the FastPath generate_state used (kept, or the one given)
    images = path.decode(state.f_hat) if path else vae.fhat_to_unit(state.f_hat)
    if not return_tokens:
        return images
    return images, [t.view(t.shape[0], p, p) for t, p in zip(state.tokens, vae.patch_nums)]
