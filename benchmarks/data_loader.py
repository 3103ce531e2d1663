"""Training data loader speed: milliseconds per image for one data-loading worker, on ImageNet-sized JPEGs.

    python benchmarks/data_loader.py                       # 120 JPEGs of 500x375 at quality 90, 256 px crops
    python benchmarks/data_loader.py --module utils.data --root /path/to/an/older/checkout   # another version

The benchmark writes --images smooth-plus-noise JPEGs (the size and quality of ImageNet's), then reads them
through the dataset as a worker does (`dataset[(index, epoch)]`: decode, Lanczos resize of the short side to
1.125 x size, random crop, flip, scaling to [-1, 1]), first once to warm the page cache, then --passes timed
passes; it reports the median pass as ms/image and images/s, and where the time goes (decode, resize, the rest).
--module / --root load ImageFolder and ImageTransform from another module or checkout, so that two versions are
measured by the same script on the same files.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_jpegs(root: Path, n: int, size: tuple[int, int], quality: int, seed: int = 0) -> None:
    """n JPEGs of size (w, h) in 4 class folders: a smooth random field plus pixel noise, like a photo's content."""
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        noisy = np.clip(np.asarray(coarse, np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        folder = root / f"n{i % 4:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(folder / f"{i:06d}.JPEG", quality=quality)


def timed_pass(data, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        data[(i, 0)]
    return (time.perf_counter() - start) / n


def breakdown(paths: list[str], size: int) -> dict[str, float]:
    """ms per image of the steps the transform takes, measured apart with PIL (the same calls)."""
    times = {"decode": 0.0, "resize": 0.0}
    short = round(1.125 * size)
    for p in paths:
        t = time.perf_counter()
        with Image.open(p) as im:
            img = im.convert("RGB")
        times["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        w, h = img.size
        img.resize((short, int(short * w / h)) if w <= h else (int(short * w / h), short), Image.LANCZOS)
        times["resize"] += time.perf_counter() - t
    return {k: 1000 * v / len(paths) for k, v in times.items()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=120, help="JPEGs to write and read (default %(default)s)")
    p.add_argument("--width", type=int, default=500, help="JPEG width (default %(default)s)")
    p.add_argument("--height", type=int, default=375, help="JPEG height (default %(default)s)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default %(default)s)")
    p.add_argument("--size", type=int, default=256, help="training crop (default %(default)s)")
    p.add_argument("--passes", type=int, default=3, help="timed passes after a warm-up pass (default %(default)s)")
    p.add_argument("--module", default="training.data", help="where ImageFolder and ImageTransform live")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                   help="the checkout to import --module from (default: this one)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker process
    sys.path.insert(0, str(args.root))
    data_module = importlib.import_module(args.module)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, args.images, (args.width, args.height), args.quality)
        data = data_module.ImageFolder(root, data_module.ImageTransform(args.size, train=True, hflip=True), seed=0)
        timed_pass(data, args.images)  # warm-up: page cache, first-call costs
        per_image = statistics.median(timed_pass(data, args.images) for _ in range(args.passes))
        parts = breakdown([p for p, _ in data.samples], args.size)
    result = {"module": f"{args.root.name}:{args.module}", "ms_per_image": 1000 * per_image,
              "images_per_s": 1 / per_image, **{f"{k}_ms": v for k, v in parts.items()}}
    print(f"{result['module']}: {result['ms_per_image']:.2f} ms/image ({result['images_per_s']:.0f} images/s per "
          f"worker); of which PIL decode {parts['decode']:.2f} ms, Lanczos resize {parts['resize']:.2f} ms "
          f"({args.images} JPEGs {args.width}x{args.height} q{args.quality}, crops of {args.size}, median of "
          f"{args.passes} passes)")
    return result


if __name__ == "__main__":
    main()
