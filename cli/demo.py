"""What infer_original.py and infer_CoDe.py share around the generation call: labels, output and the report."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from code import FastPath
from utils.images import save_grid

from .args import (add_device_args, check_labels, int_list, positive_int, published_numerics, resolve_device,
                   resolve_dtype, writable_dir)
from .timing import Timing

# the published demo's labels: two images each of eight classes
DEMO_LABELS = [992, 992, 483, 483, 970, 970, 609, 609, 978, 978, 985, 985, 963, 963, 949, 949]


def add_demo_args(parser: argparse.ArgumentParser, output: str) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--class_labels", type=int_list, nargs="+", default=None,
                   help="class ids, space or comma separated, ranges included: 0-9,207 (default: the published demo's 16 labels)")
    g.add_argument("--batch_size", type=positive_int, default=None,
                   help="number of images, cycling through the labels (default: one per label)")
    g.add_argument("--output", default=output, help=f"the PNG grid, 8 images per row (default {output})")
    g.add_argument("--upscale", type=positive_int, default=1,
                   help="enlarge the grid this many times, nearest neighbour (default 1; 4 with --miniature)")
    g.add_argument("--fast", action="store_true",
                   help="the fast path: linear weights and the VQVAE decoder copy in --dtype (fp16 on CUDA by "
                        "default), passes compiled and replayed from CUDA graphs (CUDA; the first call compiles and "
                        "checks the path against the eager path, the timed call replays)")
    g.add_argument("--no_fast_check", dest="fast_check", action="store_false",
                   help="with --fast: skip the fast path's check against the eager path on the first call")
    add_device_args(parser)


def flatten_labels(args: argparse.Namespace) -> argparse.Namespace:
    args.class_labels = DEMO_LABELS if args.class_labels is None else [c for part in args.class_labels for c in part]
    return args


def prepare(args: argparse.Namespace) -> tuple[torch.device, torch.dtype, torch.dtype | None]:
    """Device, compute dtype and the dtype to load linear weights in (the fast path's, when reduced), with the
    output folder checked before anything slow happens."""
    device = resolve_device(args.device)
    writable_dir(Path(args.output).resolve().parent)
    dtype = resolve_dtype(args.dtype, device)
    args.tf32_on = published_numerics(device, args.tf32)
    return device, dtype, dtype if args.fast and dtype != torch.float32 else None


def demo_labels(args: argparse.Namespace, num_classes: int, device: torch.device) -> torch.Tensor:
    check_labels(args.class_labels, num_classes, "--class_labels")
    n = args.batch_size or len(args.class_labels)
    return torch.tensor([args.class_labels[i % len(args.class_labels)] for i in range(n)], device=device)


def save_and_report(args: argparse.Namespace, files: dict[str, Path], images: torch.Tensor, timing: Timing,
                    device: torch.device, dtype: torch.dtype, fast: FastPath | None = None) -> None:
    save_grid(images, args.output, upscale=args.upscale)
    precision = str(dtype).removeprefix("torch.") + (", TF32" if args.tf32_on else "")
    models = [p.name for role, p in files.items() if role != "vae"]
    print(f"{' -> '.join(models)}: {images.shape[0]} images of {images.shape[-1]}x"
          f"{images.shape[-2]}, {device} {precision}{', fast path' if args.fast else ''}")
    for report in fast.reports if fast is not None else []:
        worst = max(report.passes, key=lambda p: p.logits)
        print(f"fast path checked against the eager path on {report.images} images: logits within "
              f"{worst.logits:.2g} (bound {report.bounds.logits:g}, scale {worst.scale}), draws "
              f"{min(p.tokens for p in report.passes):.1%} equal, pixels within {report.pixels:.2g} "
              f"(bound {report.bounds.pixels:g})")
    print(timing.report())
    print(f"saved {args.output}")
