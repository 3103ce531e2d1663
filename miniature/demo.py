"""Offline demo: a grid of samples from the miniature's checkpoints shipped in miniature/checkpoints/ (CPU, seconds).

    python -m miniature.demo                                 # fine-tuned CoDe N=3: the d6 drafter, then the d2 refiner
    python -m miniature.demo --training_free --draft_steps 2 # the plain d6 and d2 VARs collaborating
    python -m miniature.demo --draft_steps 6                 # the large VAR alone (N = K); 0: the small one

One column per class (disc, ring, square, frame, triangle, star, plus, bar, crescent, half disc), --per_class
rows; the shipped classifier says how many samples show their requested class. No network is used. The same
models also run through infer_CoDe.py: --drafter_ckpt miniature/checkpoints/drafter_3.pth --refiner_ckpt
miniature/checkpoints/refiner_3.pth --vae_ckpt miniature/checkpoints/vqvae.pth --draft_steps 3 --class_labels 0-9.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cli.args import UsageError, exit_on_error, non_negative_int, positive_int, sampling_config, writable_dir
from code import CollaborativeDecoder
from models import load_vae, load_var
from utils.images import save_grid

from .classifier import load_classifier
from .evaluate import timed_images
from .files import SHIPPED, MiniatureFiles, add_sampling_args
from .metrics import accuracy, classify


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_dir", default=str(SHIPPED), help="the miniature's checkpoints (default: the shipped ones)")
    p.add_argument("--draft_steps", type=non_negative_int, default=3,
                   help="N: scales the large model drafts (default 3; K: large alone, 0: small alone)")
    p.add_argument("--training_free", action="store_true", help="plain var_d6 / var_d2 instead of drafter_N / refiner_N")
    p.add_argument("--per_class", type=positive_int, default=8, help="rows: images per class (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--upscale", type=positive_int, default=4, help="grid magnification, nearest (default %(default)s)")
    p.add_argument("--output", default="outputs/demo_miniature.png", help="the PNG grid (default %(default)s)")
    add_sampling_args(p)
    return p.parse_args(argv)


def chain_files(files: MiniatureFiles, n: int, K: int, training_free: bool) -> tuple[list[Path], list[int]]:
    """The checkpoints that generate scales and the draft steps between them, for N = draft steps."""
    if n > K:
        raise UsageError(f"--draft_steps {n} exceeds the {K} scales of the models")
    if n in (0, K):
        return [files.small if n == 0 else files.large], []
    pair = [files.large, files.small] if training_free else [files.drafter(n), files.refiner(n)]
    missing = [p for p in pair if not p.is_file()]
    if missing:
        have = sorted(int(p.stem.split("_")[1]) for p in files.root.glob("drafter_*.pth"))
        raise UsageError(f"no fine-tuned pair for N={n} in {files.root} ({missing[0].name} is missing; fine-tuned N "
                         f"available: {have or 'none'}): pick one of those or add --training_free")
    return pair, [n]


def main(args: argparse.Namespace) -> float:
    """Writes the grid; returns the classifier's accuracy on it."""
    writable_dir(Path(args.output).resolve().parent)
    files = MiniatureFiles(Path(args.ckpt_dir))
    vae, clf = load_vae(files.vqvae), load_classifier(files.classifier)
    K, num_classes = vae.quantize.num_scales, clf.config.num_classes
    paths, draft_steps = chain_files(files, args.draft_steps, K, args.training_free)
    decoder = CollaborativeDecoder(vae, [load_var(p) for p in paths], draft_steps)
    labels = torch.arange(num_classes).repeat(args.per_class)
    sampling = sampling_config(args, K, args.temperature)
    images, timing = timed_images(decoder, labels, sampling, args.seed)
    save_grid(images, args.output, nrow=num_classes, padding=1, upscale=args.upscale)
    acc = accuracy(classify(clf, images)[0], labels)
    print(f"{' -> '.join(p.name for p in paths)} (scales {decoder.stops}): {labels.shape[0]} images of "
          f"{images.shape[-1]}x{images.shape[-2]}; the classifier names the requested class for {acc:.0%}")
    print(timing.report())
    print(f"saved {args.output}")
    return acc


if __name__ == "__main__":
    exit_on_error(main, parse_args())
