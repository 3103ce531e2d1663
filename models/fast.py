"""The fast path: the same generation loop (`run_scales`), each pass compiled and replayed from a CUDA graph.

`generate(..., fast=True)` (and everything that forwards to it: `VAR.generate`, `CollaborativeDecoder`) runs
through here. What changes against the eager path, and why:

- **Weights** (CUDA): every `nn.Linear` of the VARs is cast to bf16 *in place*, once, and generation runs under
  bf16 autocast. Autocast would round the fp32 weights to the same bf16 values at every pass; doing it once
  saves reading 8 GB and writing 4 GB per pass of a d30. Embeddings, positions and the attention's scale stay
  float32, so the residual stream stays float32 as in the published fp32-weights-under-autocast setting.
- **KV caches**: one arena per chain, sized for the model that needs the most; each model's cache is a view of
  it. A drafter's cache is dead before the refiner's prefill writes over it, so a chain needs its largest cache,
  not the sum, and the addresses never change, which CUDA graphs need. `run_scales` still decides what is cached.
- **One fixed-shape step per pass** (model, scale, prefill or not, sampling settings): blocks and head compiled
  with `torch.compile(dynamic=False)` (one compiled block serves every block of a width), then the whole pass
  (embedding, blocks, head, CFG mix, top-k, top-p, temperature, draw) captured in one CUDA graph with static
  input buffers (class condition, next-scale input, sampling noise) and replayed: no kernel-launch gaps, no
  host syncs.
- **Sampling**: `torch.multinomial(p, 1, replacement=True)` is argmax(p / q) with q ~ Exp(1) drawn by
  `empty_like(p).exponential_(generator)` (ATen's own method for one sample). The fast path draws q into a static
  buffer with the same generator before each replay, so the random stream is the eager path's, draw for draw,
  and the graph holds no generator state.
- **VQVAE decoder**: a bf16, channels_last copy (the VQVAE itself is untouched), compiled, run in chunks of
  images to bound its activation memory.

In float32 (the CPU tests) the fast path gives exactly the eager path's tokens at the same seed; on a GPU in
bf16 they agree within bf16 rounding (a different kernel may flip a near-tie). Shapes are static per pass, so
a new batch size or new sampling settings capture new graphs (seconds); the first call compiles (minutes for
the published models, on the GPU host).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .generation import cache_length, scale_logits
from .kv_cache import KVCache
from .sampling import cfg_mix, filter_top_k_top_p_
from .var import VAR
from .vqvae import VQVAE

# Every (width, scale, prefill, sampling settings) is a static specialisation of the same compiled code; the
# default limit of 8 per code object would silently fall back to eager after the eighth.
RECOMPILE_LIMIT = 512


def cast_linear_weights_(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """In place: every nn.Linear's weight and bias to `dtype`; everything else keeps its dtype (see module doc)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.to(dtype)
    return module


def fill_noise_(noise_BlV: torch.Tensor, generator) -> torch.Tensor:
    """Exp(1) noise drawn exactly as torch.multinomial draws it: over all rows from one generator, or, with one
    generator per image (see models.sampling.sample_tokens), each image's rows from its own."""
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

    Same filter as models.sampling.sample_tokens; its torch.multinomial(probs, 1) computes argmax(probs / q)
    with q = empty_like(probs).exponential_(generator), so noise drawn by fill_noise_ gives the same tokens.
    """
    logits = cfg_mix(logits_2BlV, t)
    if greedy:
        return logits.argmax(dim=-1)
    logits = filter_top_k_top_p_(logits, top_k, top_p)
    if temperature != 1:
        logits = logits / temperature
    return logits.softmax(dim=-1).div_(noise_BlV).argmax(dim=-1)


def cache_numel(model: VAR, batch: int, length: int) -> int:
    """Elements of a model's keys and values for `length` positions."""
    c = model.config
    return 2 * c.depth * batch * length * c.width


def compile_settings(enabled: bool):
    """Dynamo's limits raised for the duration of our calls only, not for the rest of the process."""
    if not enabled:
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, accumulated_recompile_limit=8 * RECOMPILE_LIMIT)


class StaticStep:
    """One pass with static inputs (condition, next-scale input, noise) and outputs; replayed from a CUDA graph
    when `pool` is given, else run as is (the same code on the CPU, where the tests check it)."""

    def __init__(self, fn: Callable, cond_BD: torch.Tensor, inputs: torch.Tensor | None, noise: torch.Tensor | None,
                 pool=None):
        self.fn, self.noise = fn, noise
        self.cond = cond_BD.clone()
        self.inputs = None if inputs is None else inputs.clone()
        self.graph = self.out = None
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

    def __call__(self, cond_BD: torch.Tensor, inputs: torch.Tensor | None):
        self.cond.copy_(cond_BD)
        if self.inputs is not None:
            self.inputs.copy_(inputs)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        idx, logits = self.out  # the graph's own buffers: the next replay overwrites them
        return idx.clone(), None if logits is None else logits.clone()


class FastSteps:
    """The `steps` of run_scales for one chain: a KV arena, a noise buffer and one StaticStep per pass.

    Buffers are for one batch size at a time: another batch size frees them (and the graphs) and starts again.
    """

    def __init__(self, models: Sequence[VAR], stops: Sequence[int], compile: bool = False, cuda_graphs: bool = False,
                 compile_options: dict | None = None):
        self.models, self.stops = list(models), list(stops)
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self.compile_options = {"dynamic": False, "fullgraph": True, **(compile_options or {})}
        self._parts: dict[int, tuple] = {}  # id(model) -> (compiled blocks, compiled head) or (None, None)
        self._sampler = self._compile(draw_from_noise)
        self.reset()

    def reset(self) -> None:
        """Free the arena, noise buffer and captured steps."""
        self.arena = self.noise = self._for = None  # _for: (batch, dtype, device) the buffers serve
        self._caches: dict[tuple, list[KVCache]] = {}
        self._steps: dict[tuple, StaticStep] = {}
        self._pool = None

    def roles(self) -> list[tuple[VAR, int, int]]:
        """(model, first scale, stop) of every model that runs."""
        starts = [0] + self.stops[:-1]
        return [(m, a, b) for m, a, b in zip(self.models, starts, self.stops) if a < b]

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
            l = c.patch_nums[k] ** 2
            noise = fill_noise_(self._noise(cond_BD.shape[0] // 2, l, c.vocab_size), generator)
        key = (id(model), model.cache_length, k, bg, draw, keep_logits)
        with compile_settings(self.compile):
            step = self._steps.get(key)
            if step is None:
                step = self._steps[key] = self._build(model, k, bg, draw, keep_logits, cond_BD, inputs, noise)
            return step(cond_BD, inputs)

    # ---- buffers --------------------------------------------------------------------------------------
    def _allocate(self, batch: int, dtype: torch.dtype, device: torch.device, at_least: int) -> None:
        self.reset()  # the old buffers' addresses are baked into the old graphs: drop both
        plan = [cache_numel(m, batch, cache_length(m.config.offsets, a, b)) for m, a, b in self.roles()]
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

    def _noise(self, B: int, l: int, V: int) -> torch.Tensor:
        """A (B, l, V) float32 view of one buffer sized for the largest scale of the chain."""
        if self.noise is None:
            most = max(m.config.patch_nums[b - 1] ** 2 * m.config.vocab_size for m, _, b in self.roles())
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

    def _build(self, model: VAR, k: int, bg: int, draw: tuple, keep_logits: bool, cond_BD, inputs, noise) -> StaticStep:
        blocks, head = self._compiled(model)
        sampler = self._sampler

        def step(cond_BD, inputs, noise):
            logits = scale_logits(model, cond_BD, inputs, k, bg, blocks, head)
            return sampler(logits, *draw, noise), (logits if keep_logits else None)

        return StaticStep(step, cond_BD, inputs, noise, self._pool)


class FastDecoder(nn.Module):
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
        self._images = torch.compile(self.images, **options) if compile else self.images

    def images(self, f_hat: torch.Tensor) -> torch.Tensor:
        # to [0, 1] in float32, as generate does: in bf16 the map would cost precision that 8-bit images keep
        return self.decoder(self.post_quant_conv(f_hat)).float().clamp_(-1, 1).add_(1).mul_(0.5)

    @torch.no_grad()
    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 1], as models.generation.generate returns them."""
        with compile_settings(self._images is not self.images):
            out = [self._images(f.to(self.dtype).contiguous(memory_format=self.memory_format))
                   for f in f_hat.split(self.chunk)]
        return torch.cat(out).contiguous()


AUTO = "auto"


class FastPath:
    """The fast machinery for one chain (vae, models, stops): pass it as `generate(..., fast=path)`, or use
    `fast=True`, which keeps the FastPath of the last chain it ran (see fast_path).

    compile / cuda_graphs: default on CUDA, off elsewhere (CUDA graphs need CUDA; on the CPU the same steps run
    uncompiled, which is what the tests check against the eager path). weights_dtype: the dtype every nn.Linear
    of the models is cast to, in place (default on CUDA: the dtype of the autocast active when the FastPath is
    built, else bf16; unchanged elsewhere). decoder_dtype: the decoder copy's dtype (same default on CUDA, the
    VQVAE's elsewhere). decode_chunk: images per decoder call (1 decodes each image on its own). compile_options: extra torch.compile arguments
    (e.g. {"mode": "max-autotune-no-cudagraphs"}, or {"backend": "aot_eager"} to check tracing without codegen).
    """

    def __init__(self, vae: VQVAE, models: Sequence[VAR], stops: Sequence[int], *, compile: bool | None = None,
                 cuda_graphs: bool | None = None, weights_dtype=AUTO, decoder_dtype=AUTO, decode_chunk: int = 16,
                 compile_options: dict | None = None):
        self.vae, self.models, self.stops = vae, list(models), list(stops)
        self.device = models[0].head.weight.device
        cuda = self.device.type == "cuda"
        compile = cuda if compile is None else compile
        cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
        if cuda_graphs and not cuda:
            raise ValueError(f"CUDA graphs need the models on a CUDA device, not {self.device}")
        half = (torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16) \
            if cuda else None
        weights_dtype = half if weights_dtype == AUTO else weights_dtype
        if weights_dtype is not None:
            for m in self.models:
                cast_linear_weights_(m, weights_dtype)
        decoder_dtype = half if decoder_dtype == AUTO else decoder_dtype
        self.steps = FastSteps(self.models, self.stops, compile, cuda_graphs, compile_options)
        self.decoder = FastDecoder(vae, decoder_dtype, channels_last=cuda, compile=compile, chunk=decode_chunk,
                                   compile_options=compile_options)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.models[0].head.weight.dtype

    def context(self):
        """Autocast to the weights' dtype when they are reduced precision (mixed-dtype ops need it). Its cast cache
        stays off: CUDA graphs must not capture casts that the cache would free after the first call. Weights in
        full precision leave any autocast of the caller in charge, as on the eager path."""
        dtype, kind = self.compute_dtype, self.device.type
        if dtype in (torch.float32, torch.float64):
            return contextlib.nullcontext()
        if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) != dtype:
            raise ValueError(f"the fast path's linear weights are {dtype} but autocast asks for "
                             f"{torch.get_autocast_dtype(kind)}: every op would cast them again; build the FastPath "
                             "under that autocast (or with weights_dtype=...) so that both agree")
        return torch.autocast(kind, dtype=dtype, cache_enabled=False)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(f_hat)

    def serves(self, vae: VQVAE, models: Sequence[VAR], stops: Sequence[int]) -> bool:
        return vae is self.vae and len(models) == len(self.models) and \
            all(a is b for a, b in zip(models, self.models)) and list(stops) == self.stops

    def check_chain(self, vae: VQVAE, models: Sequence[VAR], stops: Sequence[int]) -> FastPath:
        if not self.serves(vae, models, stops):
            raise ValueError("this FastPath was built for another chain (VQVAE, models or draft steps differ)")
        return self

    def __call__(self, labels=None, **kwargs):
        """Images in [0, 1]; same arguments as models.generation.generate."""
        from .generation import generate
        return generate(self.vae, self.models, self.stops, labels, fast=self, **kwargs)


_LAST: list[FastPath] = []


def fast_path(vae: VQVAE, models: Sequence[VAR], stops: Sequence[int]) -> FastPath:
    """The FastPath for fast=True: the one of the last chain is kept, so repeated calls replay its graphs; a
    different chain frees it (its arena and graphs) before building its own."""
    if _LAST and _LAST[0].serves(vae, models, stops):
        return _LAST[0]
    release()
    _LAST.append(FastPath(vae, models, stops))
    return _LAST[0]


def release() -> None:
    """Free the FastPath kept by fast=True (KV arena, graphs, decoder copy)."""
    _LAST.clear()
