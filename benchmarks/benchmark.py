"""Latency, throughput and memory of VAR and CoDe at the published settings: eager path vs fast path.

    python benchmarks/benchmark.py                      # every case, batch 64, on the GPU (random weights)
    python benchmarks/benchmark.py --cases var-d30,code-8 --no-eager --out results.md
    python benchmarks/benchmark.py --tiny --device cpu  # smoke run with tiny models: 2 cases, batch 2, 1 repeat
    python benchmarks/benchmark.py --check --cases code-8 --repeats 1   # also: fast vs eager numerics

Weights are random (the speed does not depend on their values): models are built on the meta device and
materialised directly on the target device. The eager path is the published-like configuration (fp32 weights
under --dtype autocast, op by op); the fast path is code.fast (the same weights with the linear layers cast to
--dtype, compiled, CUDA graphs). --dtype is bf16 by default: the precision of the published implementation's H100
measurement that the targets refer to. The scripts default to fp16 on CUDA, as the published scripts do;
--dtype fp16 measures that setting.
Latency is the generation of all token maps for one batch (CFG on), without the VQVAE decoder as in the paper,
and with it; CUDA events, median of --repeats runs after --warmup runs. The matmul floor is the FLOP count of
all linear layers and attention (incl. the CFG-doubled batch) over a measured bf16 matmul rate.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from code import CollaborativeDecoder, FastPath, TokenEdit  # noqa: E402
from models import VAR, VQVAE, VARConfig, VQVAEConfig, cast_linear_weights_  # noqa: E402
from models.meta import on_meta  # noqa: E402
from models.var import derived_buffers  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CASES = ("var-d30", "var-d16", "code-9", "code-8", "code-7", "code-6")
VAR_SAMPLING = dict(cfg=1.5, top_k=900, top_p=0.96)
CODE_SAMPLING = dict(cfg=1.5, top_k=600, top_p=0.96, temperature=[1.1] * 7 + [1.0] * 3)  # CoDe FID sampling
TINY_VAE = dict(ch=32, ch_mult=(1, 2), vocab_size=64, z_channels=8)  # the published 10 scales, 32 px images
TINY_VAR = dict(width=64, heads=2, num_classes=10, vocab_size=64, cvae=8)
TINY_DEPTH = {30: 3, 16: 2}
TINY_DEFAULTS = dict(cases="var-d16,code-8", batch_size=2, warmup=1, repeats=1)  # a smoke run: seconds
DEFAULTS = dict(cases=",".join(CASES), batch_size=64, warmup=2, repeats=5)


# ---- FLOP count -------------------------------------------------------------------------------------
def pass_flops(c: VARConfig, k: int, bg: int, batch: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one pass of a VAR over tokens [bg, offsets[k+1]) for `batch` images.

    CFG doubles the batch everywhere but in word_embed (the two halves share their inputs). Attention counts the
    query-key pairs the block-causal mask allows: a token of scale j sees every token of scales 0..j.
    """
    offs, C, depth = c.offsets, c.width, c.depth
    ed, B2, hidden = offs[k + 1], 2 * batch, round(c.width * c.mlp_ratio)
    n, n_in = ed - bg, ed - max(bg, c.patch_nums[0] ** 2)
    first = next(j for j in range(c.num_scales) if offs[j + 1] > bg)  # the first scale of the pass
    pairs = sum((offs[j + 1] - max(offs[j], bg)) * offs[j + 1] for j in range(first, k + 1))
    per_block = B2 * n * 2 * C * (3 * C + C + 2 * hidden) + B2 * 2 * C * 6 * C + B2 * pairs * 2 * 2 * C
    head = B2 * 2 * C * 2 * C + B2 * (offs[k + 1] - offs[k]) * 2 * C * c.vocab_size
    return batch * n_in * 2 * c.cvae * C + depth * per_block + head


def chain_flops(configs: list[VARConfig], stops: list[int], batch: int) -> int:
    """All passes of a chain: model i runs scales stops[i-1]..stops[i]-1, its first pass a prefill."""
    total, start = 0, 0
    for c, stop in zip(configs, stops):
        for k in range(start, stop):
            total += pass_flops(c, k, 0 if k == start else c.offsets[k], batch)
        start = max(start, stop)
    return total


def matmul_rate(device: torch.device, n: int, repeats: int = 20) -> float:
    """Measured FLOP/s of an n x n x n matmul (bf16 on CUDA, fp32 on the CPU), median of `repeats`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    pairs = [(torch.randn(n, n, device=device, dtype=dtype, generator=g),
              torch.randn(n, n, device=device, dtype=dtype, generator=g)) for _ in range(3)]  # rotate: not the cache
    times = []
    for i in range(repeats + 3):
        a, b = pairs[i % 3]
        with Timer(device) as t:
            a @ b
        if i >= 3:
            times.append(t.seconds)
    return 2 * n ** 3 / statistics.median(times)


# ---- models with random weights ---------------------------------------------------------------------
def materialise_(model: torch.nn.Module, device: torch.device, seed: int) -> torch.nn.Module:
    """Meta -> device with random weights drawn there (std 0.02, norms at 1 / 0), in each tensor's own dtype."""
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_mul_1H11"):
                p.fill_(torch.tensor(4.0).log().item())
            elif isinstance(model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model, torch.nn.GroupNorm):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(0, 0.02, generator=g)
        for name, b in model.named_buffers():
            b.zero_()
    return model.eval().requires_grad_(False)


def random_var(depth: int, device: torch.device, tiny: bool, seed: int) -> VAR:
    with on_meta():
        model = VAR(VARConfig(depth=TINY_DEPTH.get(depth, depth), **(TINY_VAR if tiny else {})))
    materialise_(model, device, seed)
    with torch.no_grad():
        for name, value in derived_buffers(model.config).items():
            model.get_buffer(name).copy_(value)
    return model


def random_vae(device: torch.device, tiny: bool) -> VQVAE:
    with on_meta():
        vae = VQVAE(VQVAEConfig(**(TINY_VAE if tiny else {})))
    return materialise_(vae, device, seed=1)


# ---- timing -----------------------------------------------------------------------------------------
class Timer:
    """CUDA events on the GPU (the work is asynchronous), a synchronised host clock elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


@dataclass
class Result:
    case: str
    path: str
    latency: float  # s, generation without the decoder (median)
    decode: float  # s, the VQVAE decoder alone (median)
    first_call: float  # s, the first call (compilation and graph capture for the fast path)
    peak_gen: float | None  # bytes allocated at most during generation
    reserved_gen: float | None  # bytes reserved at most during generation: with the CUDA graphs' private pool
    peak_all: float | None  # bytes allocated at most, generation then decoding
    floor: float  # s, matmul FLOPs / measured matmul rate


def measure(case: str, path: str, generate, decode, device, warmup: int, repeats: int, floor: float) -> Result:
    with Timer(device) as first:
        decode(generate().f_hat)
    for _ in range(warmup - 1):
        decode(generate().f_hat)
    gen, dec = [], []
    for _ in range(repeats):
        with Timer(device) as t:
            state = generate()
        with Timer(device) as d:
            decode(state.f_hat)
        gen.append(t.seconds)
        dec.append(d.seconds)
    peak_gen = reserved_gen = peak_all = None
    if device.type == "cuda":
        # A graph replay allocates nothing: its temporaries sit in the graph's private pool, which counts as
        # reserved, not allocated. Released cache blocks first, so that reserved = live tensors + graph pools.
        del state
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        state = generate()
        torch.cuda.synchronize()
        peak_gen, reserved_gen = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
        decode(state.f_hat)
        torch.cuda.synchronize()
        peak_all = torch.cuda.max_memory_allocated()
    return Result(case, path, statistics.median(gen), statistics.median(dec), first.seconds, peak_gen, reserved_gen,
                  peak_all, floor)


# ---- cases ------------------------------------------------------------------------------------------
def case_chain(case: str) -> tuple[list[int], list[int], dict]:
    """(depths, draft steps, sampling) of a published configuration."""
    if case.startswith("var-d"):
        return [int(case[5:])], [], VAR_SAMPLING
    n = int(case.split("-")[1])
    return [30, 16], [n], CODE_SAMPLING


def check_fast(case: str, decoder: CollaborativeDecoder, labels, sampling, ref, fast: FastPath) -> str:
    """A Markdown row: fast vs eager logits with the eager tokens forced at every scale (so that each scale sees
    the same inputs: the error is numerics alone), and the share of equal tokens in a free run at the same seed."""
    forced = TokenEdit(ref.tokens, [torch.zeros_like(t, dtype=torch.bool) for t in ref.tokens])
    got = decoder.state(labels, seed=0, keep_logits=True, edit=forced, fast=fast, **sampling)
    errors = [((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(got.logits, ref.logits)]
    free = decoder.state(labels, seed=0, fast=fast, **sampling)
    same = sum(int((a == b).sum()) for a, b in zip(free.tokens, ref.tokens)) / sum(t.numel() for t in ref.tokens)
    return f"| {case} | {max(errors):.2e} | {errors[0]:.2e} | {same:.4f} |"


def run_case(case: str, vae: VQVAE, args, device: torch.device, rate: float) -> tuple[list[Result], list[str]]:
    depths, draft_steps, sampling = case_chain(case)
    models = [random_var(d, device, args.tiny, seed=10 + i) for i, d in enumerate(depths)]
    decoder = CollaborativeDecoder(vae, models, draft_steps)
    floor = chain_flops([m.config for m in models], decoder.stops, args.batch_size) / rate
    labels = torch.randint(0, models[0].config.num_classes, (args.batch_size,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    dtype = DTYPES[args.dtype]
    autocast = torch.autocast("cuda", dtype) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    results = []
    if args.eager:  # published-like: fp32 weights, autocast, op by op
        def eager_generate():
            with autocast:
                return decoder.state(labels, seed=0, **sampling)

        def eager_decode(f_hat):
            with autocast:
                return vae.fhat_to_unit(f_hat)
        results.append(measure(case, "eager", eager_generate, eager_decode, device, args.warmup, args.repeats, floor))
    ref = None
    if args.check:
        with autocast:
            ref = decoder.state(labels, seed=0, keep_logits=True, **sampling)
    if device.type == "cuda":  # the fast path's weights: the same values, linear layers in --dtype (a visible step)
        for m in models:
            cast_linear_weights_(m, dtype)
    with autocast:
        fast = FastPath(decoder, compile=args.compile, cuda_graphs=args.graphs, decode_chunk=args.decode_chunk)
    checks = [check_fast(case, decoder, labels, sampling, ref, fast)] if args.check else []
    results.append(measure(case, "fast", lambda: decoder.state(labels, seed=0, fast=fast, **sampling), fast.decode,
                           device, args.warmup, args.repeats, floor))
    del fast, models, decoder
    if device.type == "cuda":  # the next case's memory numbers start from what this one leaves
        gc.collect()
        torch.cuda.empty_cache()
    return results, checks


# ---- report -----------------------------------------------------------------------------------------
def table(results: list[Result], batch: int) -> str:
    eager = {r.case: r for r in results if r.path == "eager"}
    gb = lambda b: "n/a" if b is None else f"{b / 1e9:.2f}"  # noqa: E731
    lines = ["| case | path | latency (s) | + decoder (s) | decoder (s) | images/s | peak GB | reserved GB | "
             "peak GB + dec | first call (s) | speed-up vs eager | x matmul floor | floor (s) | 50k images (min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ref = eager.get(r.case)
        vs_eager = f"{ref.latency / r.latency:.2f}x" if ref is not None and r.path != "eager" else "-"
        total = r.latency + r.decode
        lines.append(f"| {r.case} | {r.path} | {r.latency:.4f} | {total:.4f} | {r.decode:.4f} | "
                     f"{batch / r.latency:.1f} | {gb(r.peak_gen)} | {gb(r.reserved_gen)} | {gb(r.peak_all)} | "
                     f"{r.first_call:.1f} | "
                     f"{vs_eager} | {r.latency / r.floor:.2f} | {r.floor:.4f} | {50000 / batch * total / 60:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per batch, CFG doubles it inside (default 64; 2 with --tiny)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default when present) or cpu (only with --tiny)")
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {','.join(CASES)} (default: all; "
                                                 f"{TINY_DEFAULTS['cases']} with --tiny)")
    p.add_argument("--no-eager", dest="eager", action="store_false", help="skip the slow eager baseline")
    p.add_argument("--tiny", action="store_true", help="tiny models (depth 3 / 2, width 64) for a smoke run; "
                                                         "its defaults: 2 cases, batch 2, 1 warm-up, 1 repeat")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs first; the first compiles and captures (default 2; 1 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs; the median is reported (default 5; 1 with "
                                                             "--tiny)")
    p.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                   help="fast path without torch.compile (default: compile on CUDA)")
    p.add_argument("--no-graphs", dest="graphs", action="store_false", default=None,
                   help="fast path without CUDA graphs (default: graphs on CUDA)")
    p.add_argument("--decode_chunk", type=int, default=16, help="images per VQVAE decoder call in the fast path")
    p.add_argument("--matmul_size", type=int, default=0, help="n of the n^3 matmul timed for the floor "
                   "(default 8192 on CUDA, 256 on the CPU)")
    p.add_argument("--check", action="store_true", help="also compare the fast path's logits and tokens with the "
                   "eager path's at the same seed (within bf16 rounding on a GPU, identical in fp32 on the CPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="autocast and the fast path's linear weights on CUDA (default bf16, as the published "
                        "implementation's H100 measurement; the scripts' default is fp16)")
    p.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    args = p.parse_args(argv)
    for name, value in (TINY_DEFAULTS if args.tiny else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in args.cases if c not in CASES]
    if bad or not args.cases:
        p.error(f"unknown case(s) {bad}; choose from {','.join(CASES)}")
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 1:
        p.error("--batch_size, --repeats and --warmup must be >= 1")
    if torch.device(args.device).type == "cpu" and not args.tiny:
        p.error("the published models on the CPU would take hours: use --tiny for a CPU smoke run")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 work outside autocast (f_hat, phi) as on the published runs
    rate = matmul_rate(device, args.matmul_size or (8192 if device.type == "cuda" else 256))
    vae = random_vae(device, args.tiny)
    results, checks = [], []
    for case in tqdm(args.cases, desc="cases", unit="case"):
        case_results, case_checks = run_case(case, vae, args, device, rate)
        results, checks = results + case_results, checks + case_checks
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = "\n".join([
        f"{name}, torch {torch.__version__}, {args.dtype if device.type == 'cuda' else 'fp32'}, batch "
        f"{args.batch_size} (CFG: {2 * args.batch_size} rows), "
        f"{'tiny models, ' if args.tiny else ''}random weights; fast path: compile="
        f"{args.compile if args.compile is not None else device.type == 'cuda'}, CUDA graphs="
        f"{args.graphs if args.graphs is not None else device.type == 'cuda'}; "
        f"measured matmul rate {rate / 1e12:.3g} TFLOP/s; median of {args.repeats} after {args.warmup} warm-up "
        "(first call = compile + capture for the fast path). Latency and images/s exclude the decoder; peak GB: "
        "torch.cuda.max_memory_allocated during generation; reserved GB: max_memory_reserved after emptying the "
        "cache (includes the CUDA graphs' pool, which allocated GB cannot see); 50k images: extrapolated from "
        "latency + decoder.",
        "", table(results, args.batch_size), ""])
    if checks:
        report += "\n".join(["", "Fast vs eager (eager: the weights above under autocast): relative logits error "
                              "||fast - eager|| / ||eager|| per scale with the eager tokens forced on both, and the "
                              "share of equal tokens in a free run at the same seed.", "",
                              "| case | max logits error | scale-0 logits error | tokens equal |", "|---|---|---|---|",
                              *checks, ""])
    print(report)
    if args.out:
        args.out.write_text(report)
    return report


if __name__ == "__main__":
    main()
