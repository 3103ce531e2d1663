"""The fast path checks itself where it runs: on the first batch of every new shape or sampling setting, and every
`recheck_every` batches after that, it is compared with the eager path before anything it generated is used.

Both paths are teacher-forced on the same token maps: the batch's own tokens and labels, rolled by one image (by one
position for a single image), so that every compiled step or CUDA graph is replayed on inputs it was not captured
with (a static buffer that replays never refresh is right on the capture call only). Compared, per pass:
- **logits**: the raw logits of both CFG halves, eager on the first `check_rows` images; the largest per-image
  relative RMS difference. Teacher forcing keeps one near-tie flip from changing every later scale.
- **tokens**: the fraction of the pass's draws that the reference sampler (`draw_from_noise`, eager) draws from the
  pass's own logits and noise: the CFG mix, filters and draw inside the graph.
- **pixels**: the fast VQVAE decoder against the VQVAE itself on one chunk of the same f_hat (RMS in [0, 1]).
Bounds follow from the precision: float32 kernels that only reorder sums stay within 1e-4, bf16 / fp16 / TF32
rounding within a few percent, while a wrong buffer, cache view or scale moves logits by tens of percent or more.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .fast import FastPath, FastPathError
from .loop import DecodeState, EagerSteps, TokenEdit, compute_dtype, run_chain
from .sampling import SamplingConfig, draw_from_noise


CHECK_SEED = 2**31 - 1


class FastPathMismatch(FastPathError):
    """The fast path computed something the eager path does not; nothing it generated in that batch was used."""


@dataclass(frozen=True)
class Bounds:
    logits: float  # largest per-image relative RMS difference of the raw logits
    tokens: float  # smallest fraction of draws the reference sampler agrees with
    pixels: float  # largest per-image RMS difference of the decoded images in [0, 1]

    @staticmethod
    def of(dtype: torch.dtype) -> float:
        """Relative error budget of computing in `dtype` rather than float32 (of TF32 when dtype is TF32)."""
        return {torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 2e-2}.get(dtype, 5e-2)

    @classmethod
    def for_path(cls, compute: torch.dtype, decoder: torch.dtype, tf32: bool, compiled: bool) -> "Bounds":
        def budget(dtype):
            return 1e-2 if tf32 and dtype == torch.float32 else cls.of(dtype)
        exact = compute in (torch.float32, torch.float64) and not tf32 and not compiled
        return cls(logits=budget(compute), tokens=1.0 if exact else 0.99, pixels=budget(decoder))


@dataclass
class PassCheck:
    model: int  # index in the chain
    depth: int
    scale: int
    prefill: bool
    logits: float
    tokens: float


@dataclass
class CheckReport:
    batch: int  # images in the checked batch
    images: int  # images compared with the eager path
    dtype: str
    bounds: Bounds
    passes: list[PassCheck] = field(default_factory=list)
    pixels: float = 0.0

    def failures(self) -> list[str]:
        out = []
        for p in self.passes:
            where = (f"model {p.model} of the chain (depth {p.depth}) at scale {p.scale}"
                     f"{' (its prefill pass)' if p.prefill else ''}")
            if not p.logits <= self.bounds.logits:  # NaN fails too
                out.append(f"{where}: logits differ by {p.logits:.3g} (relative RMS; bound {self.bounds.logits:g} "
                           f"in {self.dtype})")
            if not p.tokens >= self.bounds.tokens:
                out.append(f"{where}: the draw agrees with the reference sampler on {p.tokens:.1%} of the tokens "
                           f"(bound {self.bounds.tokens:.1%})")
        if not self.pixels <= self.bounds.pixels:
            out.append(f"the VQVAE decoder: pixels differ by {self.pixels:.3g} (RMS in [0, 1]; bound "
                       f"{self.bounds.pixels:g})")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


class Recorder:
    """The fast path's steps, keeping each pass's raw draw and noise (run_scales replaces the draw by the forced
    tokens after the step)."""

    def __init__(self, steps):
        self.steps, self.passes = steps, []

    def setup_cache(self, *args) -> None:
        self.steps.setup_cache(*args)

    def free_cache(self, model) -> None:
        self.steps.free_cache(model)

    def __call__(self, model, cond_BD, inputs, k, bg, sampling, generator, keep_logits):
        idx, logits = self.steps(model, cond_BD, inputs, k, bg, sampling, generator, True)
        noise = self.steps.last_noise
        self.passes.append((model, k, bg, idx, logits, None if noise is None else noise.clone()))
        return idx, logits


def forced(decoder, labels: torch.Tensor, tokens: list[torch.Tensor], sampling: SamplingConfig, steps) -> DecodeState:
    """The chain teacher-forced on `tokens`: every pass runs, and its draw is replaced by the given token map."""
    masks = [torch.zeros_like(t, dtype=torch.bool) for t in tokens]
    state = DecodeState(labels, decoder.vae.quantize.zeros_fhat(labels.shape[0]), logits=[],
                        edit=TokenEdit(tokens, masks))
    # draws are replaced, so any stream will do; not one a run is likely to have used (a stale noise buffer would
    # then hold the very noise the check draws)
    generator = torch.Generator(device=labels.device).manual_seed(CHECK_SEED)
    return run_chain(decoder.vae, decoder.models, decoder.stops, state, sampling, generator, steps)


def relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over images (dim 0) of rms(a - b) / rms(b)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return ((a - b).pow(2).mean(1).sqrt() / b.pow(2).mean(1).sqrt().clamp_min(1e-12)).max().item()


def rolled(state: DecodeState) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Labels and token maps the batch's steps have not seen: shifted by one image (one position for one image)."""
    if state.labels.shape[0] > 1:
        return state.labels.roll(1, 0), [t.roll(1, 0) for t in state.tokens]
    return state.labels, [t.roll(1, 1) for t in state.tokens]


@torch.no_grad()
def check_fast_path(decoder, path: FastPath, state: DecodeState, sampling: SamplingConfig) -> CheckReport:
    """Compare the fast path with the eager path on the batch of `state` (see the module docstring)."""
    labels, tokens = rolled(state)
    B, m = labels.shape[0], min(labels.shape[0], path.check_rows)
    recorder = Recorder(path.steps)
    fast = forced(decoder, labels, tokens, sampling, recorder)
    eager = forced(decoder, labels[:m], [t[:m] for t in tokens], sampling, EagerSteps())
    device = fast.f_hat.device
    tf32 = device.type == "cuda" and torch.get_float32_matmul_precision() != "highest"
    dtype = compute_dtype(decoder.models[0], device)
    report = CheckReport(B, m, str(dtype).removeprefix("torch."),
                         Bounds.for_path(dtype, path.decoder.dtype, tf32, path.steps.compile))
    starts = [0, *decoder.stops[:-1]]
    owner = {k: i for i, (a, b) in enumerate(zip(starts, decoder.stops)) for k in range(a, b)}
    rows = torch.cat([torch.arange(m), B + torch.arange(m)]).to(device)
    for (model, k, bg, idx, logits, noise), ref in zip(recorder.passes, eager.logits):
        K = model.config.num_scales
        top_k, top_p, temperature = sampling.at(k, K)
        drawn = draw_from_noise(logits.clone(), sampling.guidance(k, K), top_k, top_p, temperature, sampling.greedy,
                                noise)
        both = lambda x: x.view(2, -1, *x.shape[1:]).transpose(0, 1)  # noqa: E731  (2B, ...) -> (B, 2, ...)
        report.passes.append(PassCheck(
            model=owner[k], depth=model.config.depth, scale=k, prefill=bg < model.config.offsets[k],
            logits=relative_rms(both(logits[rows]), both(ref)), tokens=(drawn == idx).float().mean().item()))
    n = min(B, path.decoder.chunk)
    report.pixels = rms_difference(path.decode(fast.f_hat[:n]), decoder.vae.fhat_to_unit(fast.f_hat[:n]))
    return report


def rms_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over images of rms(a - b)."""
    return (a.double() - b.double()).flatten(1).pow(2).mean(1).sqrt().max().item()


def after_generation(decoder, path: FastPath, state: DecodeState, sampling: SamplingConfig) -> None:
    """Check `path` on this batch when it ran a step not yet checked, or `recheck_every` batches after the last
    check; raise FastPathMismatch, naming the pass, before the caller uses the batch."""
    if not path.check:
        return
    path.batches_since_check += 1
    steps = list(path.steps._steps.values())
    new = any(not step.checked for step in steps)  # built (compiled, captured) since the last check
    if not new and not (path.recheck_every and path.batches_since_check >= path.recheck_every):
        return
    report = check_fast_path(decoder, path, state, sampling)
    path.reports.append(report)
    if not report.passed:
        problems = report.failures()
        raise FastPathMismatch(
            f"the fast path's check against the eager path failed on a batch of {report.batch}: {problems[0]}"
            f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}. Nothing from this batch was kept; "
            "use the eager path (--eager in sample_CoDe.py, no --fast in the inference scripts, fast=False in "
            "Python)")
    for step in steps:
        step.checked = True
    path.batches_since_check = 0
