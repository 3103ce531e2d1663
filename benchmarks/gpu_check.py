"""GPU acceptance: the fast path at the published model sizes (random weights), checked and timed, in minutes.

    python benchmarks/gpu_check.py                          # one CUDA GPU: VAR-d30, CoDe N=8 and N=6 at batch 64
    python benchmarks/gpu_check.py --dtype bf16             # the precision of the published H100 measurement
    python benchmarks/gpu_check.py --tiny --device cpu      # the same script on tiny models (the test suite runs it)

For each case: the fast path is built as the scripts build it (linear weights in --dtype, the VQVAE decoder copy in
--dtype, compiled steps captured in CUDA graphs), its first call compiles, captures and runs the run-time check
against the eager path (code.fast_check), a second call replays every graph on new inputs and is checked again,
then --repeats timed calls (check off) give the latency without the VQVAE decoder and the peak memory. The table
sets them beside the published implementation's H100 numbers (bf16 autocast) and the targets. Exit status 1 when a
check fails; missed targets are reported, not failed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark import (DTYPES, case_chain, chain_flops, matmul_rate, measure, random_vae,  # noqa: E402
                                  random_var)
from code import CollaborativeDecoder, FastPath, FastPathMismatch  # noqa: E402
from models import cast_linear_weights_  # noqa: E402

# case -> (published latency s, published peak GB, target latency s, target peak GB or None); H100, batch 64
TARGETS = {"var-d30": (0.983, 39.2, 0.40, None), "code-8": (0.633, 21.0, 0.22, 12.0), "code-6": (0.437, 19.9, 0.15, None)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--batch_size", type=int, default=64, help="images per batch (default 64, as the targets)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16",
                   help="linear weights and autocast (default fp16, the scripts' default on CUDA, as published)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls after the two checked ones (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models (a smoke run of the script, e.g. on the CPU)")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not args.cases or any(c not in TARGETS for c in args.cases):
        p.error(f"--cases: choose from {','.join(TARGETS)}")
    if args.batch_size < 1 or args.repeats < 1:
        p.error("--batch_size and --repeats must be >= 1")
    if torch.device(args.device).type == "cpu" and not args.tiny:
        p.error("the published models on the CPU would take hours: use --tiny --device cpu")
    return args


def check_line(case: str, reports) -> tuple[str, bool]:
    passed = all(r.passed for r in reports)
    worst = max((p for r in reports for p in r.passes), key=lambda p: p.logits)
    r = reports[0]
    text = (f"{case}: {len(reports)} checks {'passed' if passed else 'FAILED'}; logits within {worst.logits:.3g} "
            f"(bound {r.bounds.logits:g}; worst: model {worst.model}, scale {worst.scale}), draws "
            f"{min(p.tokens for rep in reports for p in rep.passes):.2%} equal (bound {r.bounds.tokens:.0%}), pixels "
            f"within {max(rep.pixels for rep in reports):.3g} (bound {r.bounds.pixels:g})")
    return "\n".join([text, *(f"  {line}" for rep in reports for line in rep.failures())]), passed


def run_case(case: str, vae, args, device: torch.device, dtype: torch.dtype, rate: float):
    depths, draft_steps, sampling = case_chain(case)
    models = [random_var(d, device, args.tiny, seed=10 + i) for i, d in enumerate(depths)]
    for m in models:
        if device.type == "cuda":
            cast_linear_weights_(m, dtype)  # as the scripts load them for the fast path
    decoder = CollaborativeDecoder(vae, models, draft_steps)
    labels = torch.randint(0, models[0].config.num_classes, (args.batch_size,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    autocast = torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")
    with autocast:
        path = FastPath(decoder, recheck_every=1)
    start = time.perf_counter()
    try:
        for seed in (0, 1):  # the first compiles, captures and is checked; the second replays new inputs, checked
            with autocast:
                decoder.state(labels, seed=seed, fast=path, **sampling)
    except FastPathMismatch:
        return None, check_line(case, path.reports), 0.0  # the failed report is the last one
    first_s = time.perf_counter() - start
    line = check_line(case, path.reports)
    path.check = False

    def generate():
        with autocast:
            return decoder.state(labels, seed=2, fast=path, **sampling)

    floor = chain_flops([m.config for m in models], decoder.stops, args.batch_size) / rate
    result = measure(case, "fast", generate, path.decode, device, 1, args.repeats, floor)
    return result, line, first_s


def row(case: str, r, first_s: float, batch: int) -> str:
    pub_s, pub_gb, target_s, target_gb = TARGETS[case]
    gb = "n/a" if r.reserved_gen is None else f"{r.reserved_gen / 1e9:.1f}"
    return (f"| {case} | {r.latency:.3f} | {pub_s:.3f} | {pub_s / r.latency:.2f}x | {target_s:.2f} | "
            f"{'yes' if r.latency <= target_s else 'no'} | {gb} | {pub_gb:.1f} | "
            f"{'-' if target_gb is None else f'{target_gb:.0f}'} | {batch / r.latency:.0f} | {first_s:.0f} |")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, as the scripts set it
        torch.backends.cudnn.allow_tf32 = True
    dtype = DTYPES[args.dtype]
    rate = matmul_rate(device, 8192 if device.type == "cuda" else 256)
    vae = random_vae(device, args.tiny)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    precision = f"{args.dtype} linear weights and autocast" if device.type == "cuda" else "float32"
    print(f"{name}, torch {torch.__version__}, {precision}, batch {args.batch_size}"
          f"{', tiny models' if args.tiny else ''}, random weights", flush=True)
    rows, ok = [], True
    for case in args.cases:
        result, (line, passed), first_s = run_case(case, vae, args, device, dtype, rate)
        print(line, flush=True)
        if result is not None:
            rows.append(row(case, result, first_s, args.batch_size))
        ok &= passed
    print("\n".join([
        "", "Latency: generation of all token maps, without the VQVAE decoder (median of the timed calls). "
        "Published: the reference implementation on one H100 under bf16 autocast. Peak GB: max_memory_reserved "
        "during generation (with the CUDA graphs' pool).", "",
        "| case | latency (s) | published (s) | speed-up | target (s) | met | peak GB | published GB | target GB | "
        "images/s | first 2 calls (s) |", "|---|---|---|---|---|---|---|---|---|---|---|", *rows]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
