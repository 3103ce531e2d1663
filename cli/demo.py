"""What infer_original.py and infer_CoDe.py share around the generation call: labels, output and the report."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from code import FastPath
from utils.images import image_format, save_grid

from .args import (UsageError, add_device_args, check_labels, int_in, int_list, published_numerics, resolve_device,
                   resolve_dtype, writable_dir)
from .timing import Timing

MAX_BATCH = 2**16  # far beyond any GPU's memory at VAR's sizes; checked before the labels are laid out
# the published demo's labels: two images each of eight classes
DEMO_LABELS = [992, 992, 483, 483, 970, 970, 609, 609, 978, 978, 985, 985, 963, 963, 949, 949]


def add_demo_args(parser: argparse.ArgumentParser, output: str) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--class_labels", type=int_list, nargs="+", default=None,
                   help="class ids, space or comma separated, ranges included: 0-9,207 (default: the published demo's 16 labels)")
    g.add_argument("--batch_size", type=int_in(1, MAX_BATCH, " (images in one batch)"), default=None,
                   help="number of images, cycling through the labels (default: one per label)")
    g.add_argument("--output", default=output,
                   help=f"the image grid, 8 images per row; .png, .jpg, .webp, ... by its suffix (default {output})")
    g.add_argument("--upscale", type=int_in(1, 64, " (times the grid is enlarged)"), default=1,
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
    if args.fast and args.more_smooth:
        raise UsageError("--more_smooth runs on the eager path only: leave out --fast")
    device = resolve_device(args.device)
    check_output(args.output)
    writable_dir(Path(args.output).resolve().parent)
    dtype = resolve_dtype(args.dtype, device)
    args.tf32_on = published_numerics(device, args.tf32)
    return device, dtype, dtype if args.fast and dtype != torch.float32 else None


def check_output(text: str) -> None:
    """--output must name an image file of a type we can write, not a folder."""
    if not text or text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise UsageError(f"--output {text!r} is {'empty' if not text else 'a folder'}: give an image file name, "
                         f"e.g. {Path(text or '.') / 'grid.png'}")
    if image_format(text) is None:
        raise UsageError(f"--output {text}: {Path(text).suffix or 'no suffix'} is not an image type this script "
                         "can write; end the name with .png (or .jpg, .webp, .bmp, .tif)")


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
