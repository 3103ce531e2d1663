"""Host side of FID sampling: how long the CPU needs per image, and whether the GPU would wait for it.

    python benchmarks/sample_pipeline.py                          # 2,000 images, 256 px, GPU time 0 and 0.22 s/64
    python benchmarks/sample_pipeline.py --images 512 --gpu_s 0.5 --workers 4 --out pipeline.md

A stand-in replaces the GPU: each batch "generates" by sleeping --gpu_s seconds (the GPU's time for a batch,
decoding and uint8 conversion included, as sample_CoDe.py does them on the GPU; the sleeping thread uses no CPU,
as a thread waiting on a CUDA sync) and returns uint8 pixels. Everything after that is the real code of
sample_CoDe.py: the copy to host memory in the main thread (a memcpy stands for the device-to-host copy), then
fid.writer's threads writing PNGs and shards, then the .npz assembled from the shards. The baseline is the published script's
host side, written here from its description: per image `Image.fromarray(x).save(path.png)` in the main thread,
then create_npz_from_sample_folder, which reads every PNG back into one array and np.savez-es it.

Reported per configuration: main-thread host milliseconds per image (work only: conversion and handing over, not
time blocked on a full writer queue), the writers' milliseconds per image (summed over threads), images/s end to
end (generation, writing and the .npz), and the fraction of the generation phase during which the stand-in GPU
waited for the host (wall time not spent in its sleeps, including the final drain of the queue).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fid.samples import Batch, SampleFolder, plan  # noqa: E402
from fid.writer import BatchWriter  # noqa: E402
from utils.images import quantize  # noqa: E402


def natural_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) in [0, 1]: smooth random fields plus a little noise, about as compressible as photos."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.012 * torch.randn(n, 3, size, size, generator=g)).clamp_(0, 1)


@dataclass
class Row:
    name: str
    images: int
    gpu_s: float  # per batch
    main_ms: float  # main-thread host work per image
    worker_ms: float  # writers' work per image (all threads)
    wall_s: float  # end to end, .npz included
    gpu_wait: float  # share of the generation phase the stand-in GPU waited

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s


def published(out: Path, images: torch.Tensor, n: int, batch: int, gpu_s: float) -> Row:
    """The published script's host side: PNGs saved in the main thread, then read back into the .npz."""
    folder = out / "published"
    folder.mkdir()
    start, host, index = time.perf_counter(), 0.0, 0
    for first in range(0, n, batch):
        count = min(batch, n - first)
        time.sleep(gpu_s)
        t = time.perf_counter()
        samples = (images[:count].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
        for sample in samples:
            Image.fromarray(sample).save(folder / f"{index:06d}.png")
            index += 1
        host += time.perf_counter() - t
    generated = time.perf_counter() - start
    t = time.perf_counter()
    arr = np.stack([np.asarray(Image.open(folder / f"{i:06d}.png")).astype(np.uint8) for i in range(n)])
    np.savez(out / f"published_{n}.npz", arr_0=arr)
    host += time.perf_counter() - t
    wall = time.perf_counter() - start
    return Row("published (PNG, then read back)", n, gpu_s, 1000 * host / n, 0.0, wall,
               1 - (gpu_s * -(-n // batch)) / generated)


def ours(out: Path, images: torch.Tensor, n: int, batch: int, gpu_s: float, png: bool, workers: int) -> Row:
    folder = SampleFolder(out / f"ours_{'png' if png else 'nopng'}")
    folder.prepare()
    keys = plan(range(-(-n // 50)), 50)[:n]
    tokens = np.zeros((batch, 680), np.int16)
    on_gpu = quantize(images, "truncate").numpy()  # what the GPU hands over: uint8 (B, H, W, 3)
    start, host = time.perf_counter(), 0.0
    writer = BatchWriter(folder, png, workers)
    with writer:
        for first in range(0, n, batch):
            chunk = keys[first:first + batch]
            time.sleep(gpu_s)
            t = time.perf_counter()
            pixels = on_gpu[:len(chunk)].copy()  # the device-to-host copy
            submitted = Batch(chunk, tokens[:len(chunk)], pixels)
            blocked = writer.blocked_s
            writer.submit(submitted)
            host += time.perf_counter() - t - (writer.blocked_s - blocked)
    generated = time.perf_counter() - start
    t = time.perf_counter()
    folder.assemble(keys, folder.done())
    host += time.perf_counter() - t
    wall = time.perf_counter() - start
    return Row(f"ours, {'PNGs' if png else 'no PNGs'}, {workers} writer threads", n, gpu_s, 1000 * host / n,
               1000 * writer.busy_s / n, wall, 1 - (gpu_s * -(-n // batch)) / generated)


def table(rows: list[Row]) -> str:
    lines = ["| pipeline | GPU s / batch | main-thread ms / image | writers ms / image | images/s end to end | "
             "vs published | GPU waits |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = {r.gpu_s: r for r in rows if r.name.startswith("published")}
    for r in rows:
        ref = base.get(r.gpu_s)
        ratio = f"{ref.wall_s / r.wall_s:.1f}x" if ref is not None else "-"
        lines.append(f"| {r.name} | {r.gpu_s:.2f} | {r.main_ms:.2f} | {r.worker_ms:.2f} | {r.images_per_s:.0f} | "
                     f"{ratio} | {100 * r.gpu_wait:.1f}% |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000, help="images per configuration (default %(default)s)")
    p.add_argument("--size", type=int, default=256, help="image side (default %(default)s)")
    p.add_argument("--batch_size", type=int, default=64, help="images per batch (default %(default)s)")
    p.add_argument("--gpu_s", type=float, nargs="+", default=[0.0, 0.22],
                   help="stand-in GPU seconds per batch, one configuration each (default 0 and 0.22: CoDe N=8 on an "
                        "H100 at 85 images/s)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="writer threads (default: cores)")
    p.add_argument("--skip_published", action="store_true", help="only our pipeline")
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder, removed)")
    p.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    args = p.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.workers < 1 or min(args.gpu_s) < 0:
        p.error("--images, --batch_size and --workers must be >= 1, --gpu_s >= 0")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the stand-in GPU's conversion is host work in the main thread: one core
    images = natural_images(args.batch_size, args.size)
    root = Path(tempfile.mkdtemp(dir=args.dir))
    rows = []
    try:
        for gpu_s in args.gpu_s:
            for run in ([] if args.skip_published else ["published"]) + ["png", "nopng"]:
                out = root / f"{run}_{gpu_s}"
                out.mkdir()
                if run == "published":
                    rows.append(published(out, images, args.images, args.batch_size, gpu_s))
                else:
                    rows.append(ours(out, images, args.images, args.batch_size, gpu_s, run == "png", args.workers))
                shutil.rmtree(out)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.images} images of "
              f"{args.size}x{args.size}, batch {args.batch_size}, torch {torch.__version__}\n\n{table(rows)}\n")
    print(report)
    if args.out:
        args.out.write_text(report)
    return report


if __name__ == "__main__":
    main()
