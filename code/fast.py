"""The fast path: the same scale loop (`code.loop.run_scales`), each pass compiled and replayed from a CUDA graph.

`FastPath(decoder)` holds everything the fast path builds for one chain: the KV arena, the compiled steps, the
CUDA graphs and a copy of the VQVAE decoder. Pass it as `decoder(labels, fast=path)`; it lives as long as the
caller keeps it, and it never changes the models it was given. What differs from the eager path, and why:

- **Weights**: whatever the models hold. Load them with `load_var(..., linear_dtype=torch.bfloat16)` (or
  `models.cast_linear_weights_`) for speed: both paths then generate under bf16 autocast (`code.loop.precision`)
  and compute what fp32 weights under bf16 autocast compute, without re-reading 8 GB of fp32 weights per pass.
- **KV caches**: one arena per chain, sized for the model that needs the most; each model's cache is a view of
  it. A drafter's cache is dead before the refiner's prefill writes over it, so a chain needs its largest cache,
  not the sum, and the addresses never change, which CUDA graphs need. `run_scales` still decides what is cached.
- **One fixed-shape step per pass** (model, scale, prefill or not, sampling settings): blocks and head compiled
  with `torch.compile(dynamic=False)` (one compiled block serves every block of a width), then the whole pass
  (embedding, blocks, head, CFG mix, top-k, top-p, temperature, draw) captured in one CUDA graph with static
  input buffers (class condition, next-scale input, sampling noise) and replayed: no launch gaps, no host syncs.
- **Sampling**: the draw is argmax(p / q) with q ~ Exp(1) drawn from the caller's generator before each replay,
  which is how torch.multinomial draws one sample (code.sampling.draw_from_noise), so the random stream is the
  eager path's, draw for draw, and the graph holds no generator state.
- **VQVAE decoder**: a bf16, channels_last copy (the VQVAE itself is untouched), compiled, run in chunks of
  images to bound its activation memory.

In float32 (the CPU tests) the fast path gives exactly the eager path's tokens at the same seed; on a GPU in
bf16 they agree within kernel rounding (a different kernel may flip a near-tie). Shapes are static per pass, so
a new batch size or new sampling settings capture new graphs (seconds); the first call compiles (minutes for
the published models). A step that fails to compile or capture raises FastPathError, which names the pass.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn

from models import VAR, VQVAE
from models.kv_cache import KVCache
from utils.errors import RunError

from .loop import cache_length, scale_logits
from .sampling import draw_from_noise, fill_noise_

# Every (width, scale, prefill, sampling settings) is a static specialisation of the same compiled code; the
# default limit of 8 per code object would silently fall back to eager after the eighth.
RECOMPILE_LIMIT = 512
AUTO = "auto"


class FastPathError(RunError):
    """Compiling or capturing a pass failed on this machine; the eager path (fast=False, --eager) still works."""


def dynamo_limits(limit: int = RECOMPILE_LIMIT) -> contextlib.AbstractContextManager:
    """Dynamo's recompile limits raised for the duration of our calls only. torch 2.7 renamed cache_size_limit to
    recompile_limit (and accumulated_cache_size_limit to accumulated_recompile_limit): set whichever exists."""
    config = torch._dynamo.config
    names = {("recompile_limit", "cache_size_limit"): limit,
             ("accumulated_recompile_limit", "accumulated_cache_size_limit"): 8 * limit}
    values = {}
    for candidates, value in names.items():
        name = next((n for n in candidates if hasattr(config, n)), None)
        if name is not None:
            values[name] = value
    return config.patch(**values)


def compile_settings(enabled: bool) -> contextlib.AbstractContextManager:
    return dynamo_limits() if enabled else contextlib.nullcontext()


def cache_numel(model: VAR, batch: int, length: int) -> int:
    """Elements of a model's keys and values for `length` positions."""
    c = model.config
    return 2 * c.depth * batch * length * c.width


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError: not a compile problem,
    the eager path would need the memory too."""
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in str(e) or "out of memory" in str(e).lower()))


def failure(what: str, e: BaseException) -> FastPathError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return FastPathError(f"the fast path failed to compile or capture {what}: {type(e).__name__}: {first[:300]}. "
                         "Use the eager path instead (--eager in sample_CoDe.py, no --fast in the inference scripts, "
                         "fast=False in Python)")


class StaticStep:
    """One pass with static inputs (condition, next-scale input, noise) and outputs; replayed from a CUDA graph
    when `pool` is given, else run as is (the same code on the CPU, where the tests check it)."""

    def __init__(self, fn: Callable, cond_BD: torch.Tensor, inputs: torch.Tensor | None, noise: torch.Tensor | None,
                 pool=None):
        self.fn, self.noise = fn, noise
        self.cond = cond_BD.clone()
        self.inputs = None if inputs is None else inputs.clone()
        self.graph = self.out = None
        self.checked = False  # passed code.fast_check's comparison with the eager path
        if pool is not None:
            self._capture(pool)

    def _run(self):
        return self.fn(self.cond, self.inputs, self.noise)

    def _capture(self, pool) -> None:
        # Warm up on a side stream first (twice, as the CUDA-graph docs do): compilation, kernel selection and
        # library workspaces cannot happen during capture. Each run writes the keys/values the replay will write.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):  # one pool for all steps: they never run concurrently
            self.out = self._run()

    def __call__(self, cond_BD: torch.Tensor, inputs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids, raw logits); the logits may be a static buffer that the next pass overwrites."""
        self.cond.copy_(cond_BD)
        if self.inputs is not None:
            self.inputs.copy_(inputs)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        idx, logits = self.out  # the graph's own buffers: the next replay overwrites them
        return idx.clone(), logits


class FastSteps:
    """The `steps` of run_scales for one chain: a KV arena, a noise buffer and one StaticStep per pass.

    `roles`: (model, first scale, stop) of every model that generates. Buffers are for one batch size at a
    time: another batch size frees them (and the graphs) and starts again.
    """

    def __init__(self, roles: Sequence[tuple[VAR, int, int]], compile: bool = False, cuda_graphs: bool = False,
                 compile_options: dict | None = None):
        self.roles = list(roles)
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self.compile_options = {"dynamic": False, "fullgraph": True, **(compile_options or {})}
        self._parts: dict[int, tuple] = {}  # id(model) -> (compiled blocks, compiled head) or (None, None)
        self._sampler = self._compile(draw_from_noise)
        self.reset()

    def reset(self) -> None:
        """Free the arena, noise buffer and captured steps."""
        self.arena = self.noise = self.logits = self.last_noise = None
        self._for = None  # (batch, dtype, device) the buffers serve
        self._caches: dict[tuple, list[KVCache]] = {}
        self._steps: dict[tuple, StaticStep] = {}
        self._pool = None

    # ---- the EagerSteps interface -------------------------------------------------------------------
    def setup_cache(self, model: VAR, batch: int, length: int, dtype: torch.dtype, device) -> None:
        device = torch.device(device)
        need = cache_numel(model, batch, length)
        if self._for != (batch, dtype, device) or need > self.arena.numel():
            self._allocate(batch, dtype, device, need)
        key = (id(model), length)
        if key not in self._caches:
            self._caches[key] = self._views(model, batch, length)
        for block, cache in zip(model.blocks, self._caches[key]):
            block.attn.kv_cache = cache

    def free_cache(self, model: VAR) -> None:
        model.free_cache()  # the arena stays: the next model of the chain reuses it

    def __call__(self, model: VAR, cond_BD: torch.Tensor, inputs: torch.Tensor | None, k: int, bg: int, sampling,
                 generator, keep_logits: bool):
        c = model.config
        top_k, top_p, temperature = sampling.at(k, c.num_scales)
        draw = (float(sampling.guidance(k, c.num_scales)), int(top_k), float(top_p), float(temperature),
                bool(sampling.greedy))
        noise = None
        if not sampling.greedy:
            noise = fill_noise_(self._noise(cond_BD.shape[0] // 2, c.patch_nums[k] ** 2, c.vocab_size), generator)
        self.last_noise = noise
        key = (id(model), model.cache_length, k, bg, draw)
        with compile_settings(self.compile):
            step = self._steps.get(key)
            if step is None:
                what = f"the pass of the depth-{c.depth} VAR at scale {k}{' (prefill)' if bg < c.offsets[k] else ''}"
                try:
                    step = self._build(model, k, bg, draw, cond_BD, inputs, noise)
                    out = step(cond_BD, inputs)
                except Exception as e:
                    if is_out_of_memory(e):
                        raise
                    raise failure(what, e) from e
                self._steps[key] = step
            else:
                out = step(cond_BD, inputs)
        idx, logits = out
        return idx, logits.clone() if keep_logits else None

    # ---- buffers --------------------------------------------------------------------------------------
    def _allocate(self, batch: int, dtype: torch.dtype, device: torch.device, at_least: int) -> None:
        self.reset()  # the old buffers' addresses are baked into the old graphs: drop both
        plan = [cache_numel(m, batch, cache_length(m.config.offsets, a, b)) for m, a, b in self.roles]
        self.arena = torch.empty(max(plan + [at_least]), dtype=dtype, device=device)
        self._for = (batch, dtype, device)
        if self.cuda_graphs:
            self._pool = torch.cuda.graph_pool_handle()

    def _views(self, model: VAR, batch: int, length: int) -> list[KVCache]:
        c = model.config
        shape = (batch, c.heads, length, c.width // c.heads)
        n = batch * length * c.width
        kv = self.arena[: 2 * c.depth * n].view(c.depth, 2, *shape)
        return [KVCache.over(kv[i, 0], kv[i, 1]) for i in range(c.depth)]

    def _logits(self, B2: int, l: int, V: int) -> torch.Tensor | None:
        """With CUDA graphs: a (2B, l, V) view of one float32 buffer sized for the largest scale of the chain, where
        every graph leaves its logits (graphs keep their outputs; one shared buffer bounds what that costs)."""
        if not self.cuda_graphs:
            return None
        if self.logits is None:
            most = max(m.config.patch_nums[b - 1] ** 2 * m.config.vocab_size for m, _, b in self.roles)
            dtype = torch.promote_types(self.arena.dtype, torch.float32)  # as VAR.logits computes them
            self.logits = torch.empty(B2 * most, dtype=dtype, device=self.arena.device)
        return self.logits[: B2 * l * V].view(B2, l, V)

    def _noise(self, B: int, l: int, V: int) -> torch.Tensor:
        """A (B, l, V) float32 view of one buffer sized for the largest scale of the chain."""
        if self.noise is None:
            most = max(m.config.patch_nums[b - 1] ** 2 * m.config.vocab_size for m, _, b in self.roles)
            self.noise = torch.empty(B * most, dtype=torch.float32, device=self.arena.device)
        return self.noise[: B * l * V].view(B, l, V)

    # ---- steps ----------------------------------------------------------------------------------------
    def _compile(self, fn: Callable) -> Callable:
        return torch.compile(fn, **self.compile_options) if self.compile else fn

    def _compiled(self, model: VAR) -> tuple:
        """Regional compilation: every block of a model (of any model of the same width) shares one compiled
        code per pass shape, so compile time does not grow with depth."""
        if id(model) not in self._parts:
            self._parts[id(model)] = (None, None) if not self.compile else (
                [self._compile(b) for b in model.blocks], self._compile(model.logits))
        return self._parts[id(model)]

    def _build(self, model: VAR, k: int, bg: int, draw: tuple, cond_BD, inputs, noise) -> StaticStep:
        blocks, head = self._compiled(model)
        sampler = self._sampler
        out = self._logits(cond_BD.shape[0], model.config.patch_nums[k] ** 2, model.config.vocab_size)

        def step(cond_BD, inputs, noise):
            logits = scale_logits(model, cond_BD, inputs, k, bg, blocks, head)
            idx = sampler(logits, *draw, noise)
            if out is None:
                return idx, logits
            return idx, out.copy_(logits)  # one static buffer for every pass's logits: the run-time check reads it

        return StaticStep(step, cond_BD, inputs, noise, self._pool)


class FastVAEDecoder(nn.Module):
    """VQVAE f_hat -> images in [0, 1]: a copy of post_quant_conv + decoder in `dtype`, channels_last, compiled,
    run `chunk` images at a time (the 256x256 activations of 64 images would take several GB at once)."""

    def __init__(self, vae: VQVAE, dtype: torch.dtype | None = None, channels_last: bool = False,
                 compile: bool = False, chunk: int = 16, compile_options: dict | None = None):
        super().__init__()
        self.post_quant_conv = copy.deepcopy(vae.post_quant_conv)
        self.decoder = copy.deepcopy(vae.decoder)
        self.dtype = dtype or vae.post_quant_conv.weight.dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.chunk = chunk
        self.to(dtype=self.dtype, memory_format=self.memory_format)
        self.requires_grad_(False)
        options = {"dynamic": False, **(compile_options or {})}
        self.compiled = compile
        self._images = torch.compile(self.images, **options) if compile else self.images
        self._ran: set[tuple] = set()  # input shapes already run (compiled) once

    def images(self, f_hat: torch.Tensor) -> torch.Tensor:
        # to [0, 1] in float32, as VQVAE.fhat_to_unit does: in bf16 the map would cost precision 8-bit images keep
        return self.decoder(self.post_quant_conv(f_hat)).float().clamp_(-1, 1).add_(1).mul_(0.5)

    def _chunk(self, f: torch.Tensor) -> torch.Tensor:
        f = f.to(self.dtype).contiguous(memory_format=self.memory_format)
        if tuple(f.shape) in self._ran:
            return self._images(f)
        try:
            out = self._images(f)
        except Exception as e:
            if is_out_of_memory(e):
                raise
            raise failure(f"the VQVAE decoder for {f.shape[0]} images", e) from e
        self._ran.add(tuple(f.shape))
        return out

    @torch.no_grad()
    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 1], as CollaborativeDecoder.decode returns them."""
        with compile_settings(self.compiled):
            out = [self._chunk(f) for f in f_hat.split(self.chunk)]
        return torch.cat(out).contiguous()


class FastPath:
    """The fast machinery for one chain; build it from a CollaborativeDecoder and pass it as fast=path.

    compile / cuda_graphs: default on CUDA, off elsewhere (CUDA graphs need CUDA; on the CPU the same steps run
    uncompiled, which is what the tests check against the eager path). decoder_dtype: the VQVAE decoder copy's
    dtype (default on CUDA: the dtype of an active autocast, else bf16; the VQVAE's elsewhere). decode_chunk:
    images per decoder call. compile_options: extra torch.compile arguments (e.g. {"mode":
    "max-autotune-no-cudagraphs"}, or {"backend": "aot_eager"} to check tracing without code generation).
    check: compare the path with the eager path (code.fast_check) on the first batch that runs a new step (a new
    batch size or sampling setting) and every `recheck_every` batches (0: never again), on `check_rows` images;
    a difference beyond the precision's bound raises FastPathMismatch before the batch is returned. Costs one
    teacher-forced fast pass and an eager pass of `check_rows` images per check; the results are in `reports`.
    """

    def __init__(self, decoder, *, compile: bool | None = None, cuda_graphs: bool | None = None,
                 decoder_dtype=AUTO, decode_chunk: int = 16, compile_options: dict | None = None,
                 check: bool = True, recheck_every: int = 200, check_rows: int = 8):
        if recheck_every < 0 or check_rows < 1:
            raise ValueError(f"recheck_every must be >= 0 (0: only new steps) and check_rows >= 1, got "
                             f"{recheck_every} and {check_rows}")
        self.vae, self.models, self.stops = decoder.vae, list(decoder.models), list(decoder.stops)
        self.check, self.recheck_every, self.check_rows = check, recheck_every, check_rows
        self.reports: list = []  # code.fast_check.CheckReport of every check, in order
        self.batches_since_check = 0
        self.device = decoder.device
        cuda = self.device.type == "cuda"
        compile = cuda if compile is None else compile
        cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
        if cuda_graphs and not cuda:
            raise ValueError(f"CUDA graphs need the models on a CUDA device, not {self.device}")
        if decoder_dtype == AUTO:
            decoder_dtype = (torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda")
                             else torch.bfloat16) if cuda else None
        self.steps = FastSteps(decoder.active(), compile, cuda_graphs, compile_options)
        self.decoder = FastVAEDecoder(decoder.vae, decoder_dtype, channels_last=cuda, compile=compile,
                                      chunk=decode_chunk, compile_options=compile_options)

    def serves(self, decoder) -> bool:
        """Built for this chain: the same VQVAE, the same model objects, the same scale boundaries."""
        return decoder.vae is self.vae and len(decoder.models) == len(self.models) and \
            all(a is b for a, b in zip(decoder.models, self.models)) and list(decoder.stops) == self.stops

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(f_hat)
