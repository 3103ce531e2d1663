"""Sample images for FID: --per_class images of every class as PNGs, then one .npz for OpenAI's evaluator.

    python sample_CoDe.py --drafter_depth 30 --refiner_depth 16 --draft_steps 8 --output_path samples/code8
    torchrun --nproc_per_node=8 sample_CoDe.py --draft_steps 8 --output_path samples/code8     # 8 GPUs
    python sample_CoDe.py --training_free --draft_steps 10 --output_path samples/var_d30 --top_k 900 --temperature 1

--draft_steps 10 is the drafter alone (plain VAR of --drafter_depth; add --training_free); --draft_steps 0 the
refiner alone. Defaults are the published FID settings: cfg 1.5, top_k 600, top_p 0.96, temperature 1.1 on the
first seven scales and 1.0 on the last three, fp16 autocast on CUDA.

Determinism. Every image has its own random generator, seeded from (--seed, index) as published (image i of
every class uses stream i with --seed 0; its class is its label), and the sampler draws each image's tokens
from its own generator, so an image's tokens do not depend on the other images of its batch. Each image is
then decoded on its own from its tokens, so its pixels do not depend on them either. Hence the set of images
is the same whatever --batch_size, the number of processes, or the order in which they are made.

Resuming. A PNG is written under a temporary name and renamed, so an existing PNG is complete: rerunning the
same command generates only the missing ones (leftover temporary files are removed) and writes the same .npz.
run.json records the settings that decide the pixels; a rerun with other settings is refused.

Multi-GPU: under torchrun each rank takes every world_size-th image; rank 0 assembles the .npz, in (class,
index) order, after all ranks are done. A missing image at that point is an error that deletes nothing.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cli.args import (UsageError, add_device_args, add_sampling_args, autocast, check_labels, code_temperature,
                      exit_on_error, int_list, positive_int, resolve_device, resolve_dtype, sampling_config,
                      setup_logging, writable_dir)
from cli.checkpoints import add_code_args, load_code
from cli.samples import (SEED_STRIDE, ImageKey, check_settings, image_seed, pending, plan, remove_temp_files, shard,
                         write_npz)
from code import CollaborativeDecoder, FastPath, SamplingConfig
from utils.dist import DistInfo, barrier, cleanup, init_distributed
from utils.images import save_png, to_uint8

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_code_args(parser)
    add_sampling_args(parser, cfg=1.5, top_k=600, top_p=0.96, temperature="1.1*7,1.0*3", seed=0)
    g = parser.add_argument_group("samples")
    g.add_argument("--output_path", default="samples", help="folder for images/, run.json and the .npz")
    g.add_argument("--per_class", type=positive_int, default=50, help="images per class (default 50)")
    g.add_argument("--classes", type=int_list, default=None,
                   help="a subset of classes, e.g. 0-99,207 (default: every class of the model)")
    g.add_argument("--batch_size", type=positive_int, default=64, help="images per forward pass (default 64)")
    g.add_argument("--eager", action="store_true",
                   help="run the reference eager path instead of the fast one (compiled passes replayed from CUDA "
                        "graphs, bf16 weights and decoder on CUDA; uncompiled and identical to eager on the CPU)")
    add_device_args(parser)
    return parser.parse_args(argv)


@torch.no_grad()
def generate_images(decoder: CollaborativeDecoder, keys: list[ImageKey], sampling: SamplingConfig, seed: int,
                    device: torch.device, dtype: torch.dtype, fast: FastPath | None = None) -> np.ndarray:
    """(B, H, W, 3) uint8; each image from its own generator, decoded on its own (see the module docstring)."""
    generators = [torch.Generator(device=device).manual_seed(image_seed(seed, k)) for k in keys]
    labels = torch.tensor([k.cls for k in keys], device=device)
    with autocast(device, dtype):
        state = decoder.state(labels, generator=generators, sampling=sampling, fast=fast or False)
        vae = decoder.vae
        f_hat = [vae.quantize.tokens_to_fhat([t[i:i + 1] for t in state.tokens]) for i in range(len(keys))]
        if fast is not None:
            return to_uint8(fast.decode(torch.cat(f_hat)))  # decode_chunk=1: each image on its own
        return to_uint8(torch.cat([vae.fhat_to_unit(f) for f in f_hat]))


def build_fast_path(decoder: CollaborativeDecoder, device: torch.device, dtype: torch.dtype) -> FastPath:
    """Built inside the run's autocast, so that its decoder copy takes the dtype generation computes in."""
    with autocast(device, dtype):
        return FastPath(decoder, decode_chunk=1)


def write_images(images: Path, keys: list[ImageKey], pixels: np.ndarray) -> None:
    for key, image in zip(keys, pixels):
        save_png(image, images / key.filename)


def settings(args: argparse.Namespace, decoder: CollaborativeDecoder, files: list[Path], sampling: SamplingConfig,
             dtype: torch.dtype) -> dict:
    """What decides the pixels of an image (not which images, nor the batch size or the number of GPUs)."""
    return dict(seed=args.seed, cfg=sampling.cfg, top_k=sampling.top_k, top_p=sampling.top_p,
                temperature=sampling.temperature, stops=decoder.stops, checkpoints=[p.name for p in files],
                dtype=str(dtype), fast=not args.eager)


def sample(args: argparse.Namespace, dist: DistInfo, device: torch.device) -> Path | None:
    if args.seed >= SEED_STRIDE:
        raise UsageError(f"--seed must be below 2**32 (each seed owns 2**32 image streams), got {args.seed}")
    dtype = resolve_dtype(args.dtype, device)
    folder = Path(args.output_path)
    images = folder / "images"
    if dist.is_main:
        writable_dir(images)
    linear_dtype = None if args.eager or dtype == torch.float32 else dtype  # the fast path's weights
    decoder, files = load_code(args, device, linear_dtype)
    sampling = sampling_config(args, decoder.num_scales, code_temperature(decoder.num_scales))
    classes = sorted(set(args.classes if args.classes is not None else range(decoder.num_classes)))
    check_labels(classes, decoder.num_classes, "--classes")
    keys = plan(classes, args.per_class)
    if dist.is_main:
        check_settings(folder, settings(args, decoder, files, sampling, dtype))
        if removed := remove_temp_files(images):
            log.info(f"removed {removed} temporary files left by an interrupted run")
    barrier()
    fast = None if args.eager else build_fast_path(decoder, device, dtype)
    todo = pending(shard(keys, dist.rank, dist.world_size), images)
    log.info(f"{len(keys)} images in all; rank 0 of {dist.world_size} has {len(todo)} still to generate")
    start = time.perf_counter()
    with tqdm(total=len(todo), unit="img", disable=not dist.is_main, desc="sampling") as bar:
        for i in range(0, len(todo), args.batch_size):
            batch = todo[i:i + args.batch_size]
            write_images(images, batch, generate_images(decoder, batch, sampling, args.seed, device, dtype, fast))
            bar.update(len(batch))
    barrier()
    if not dist.is_main:
        return None
    out, shape = write_npz(images, keys, folder)
    took = time.perf_counter() - start
    print(f"saved {out} ({shape[0]} images of {shape[2]}x{shape[1]}); sampling took {took:.1f} s "
          f"({len(todo) / max(took, 1e-9):.2f} images/s on rank 0)")
    return out


def main(args: argparse.Namespace) -> Path | None:
    """Returns the .npz path on rank 0, None on the other ranks."""
    device = resolve_device(args.device)
    dist = init_distributed(device.type)
    setup_logging(dist.is_main)
    try:
        return sample(args, dist, dist.device if dist.world_size > 1 else device)
    finally:
        cleanup()


if __name__ == "__main__":
    exit_on_error(main, parse_args())
