"""Sample images for FID: --per_class images of every class, then one .npz for OpenAI's evaluator.

    python sample_CoDe.py --drafter_depth 30 --refiner_depth 16 --draft_steps 8 --output_path samples/code8
    torchrun --nproc_per_node=8 sample_CoDe.py --draft_steps 8 --output_path samples/code8     # 8 GPUs
    python sample_CoDe.py --training_free --draft_steps 10 --output_path samples/var_d30 --top_k 900 --temperature 1
    python sample_CoDe.py --miniature --device cpu                                   # the miniature, offline

--draft_steps 10 is the drafter alone (plain VAR of --drafter_depth; add --training_free); --draft_steps 0 the
refiner alone. Defaults are the published FID settings: cfg 1.5, top_k 600, top_p 0.96, temperature 1.1 on the
first seven scales and 1.0 on the last three, fp16 autocast on CUDA, pixels truncated to uint8 as published
((x * 255).astype(uint8); --rounding nearest rounds instead). --more_smooth (the published smoothing, for
pictures, not FID) needs --eager; each batch's own f_hat is then decoded. Where defaults differ from the published
script: docs/published-defaults.md.

The GPU never waits for the disk: each batch is decoded on the GPU (--decode_chunk images per decoder call),
converted to uint8 there, and handed to --workers threads that write its PNGs (--png, the published default;
--no_png skips them) and a shard of raw pixels, while the next batch is generated. The .npz is assembled from the
shards, without decoding a PNG.

Determinism. Every image has its own random generator, seeded from (--seed, index) as published (image i of
every class uses stream i with --seed 0; its class is its label), and the sampler draws each image's tokens from
its own generator, so an image's tokens do not depend on the other images of its batch, the batch size or the
number of processes. Its pixels depend on them only through the decoder's arithmetic: on a GPU, kernels for other
batch shapes round differently (about 1 pixel in 10^4 one level off); --decode_chunk 1 decodes each image alone,
which makes the pixels batch-independent on the CPU.

Resuming. An interrupted run resumes by rerunning the same command: finished batches (shards) are kept, leftover
temporary files removed, damaged or missing PNGs of finished images rewritten, and the rest generated. run.json
records what decides the pixels (settings, the SHA-256 of every checkpoint, the rounding); a rerun with other
values is refused. Multi-GPU: under torchrun each rank takes every world_size-th image; rank 0 assembles the .npz,
in (class, index) order, after all ranks are done.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cli.args import (UsageError, add_device_args, add_sampling_args, autocast, check_labels, code_temperature,
                      exit_on_error, int_in, int_list, positive_int, published_numerics, resolve_device, resolve_dtype,
                      sampling_config, setup_logging, writable_dir)
from cli.checkpoints import add_code_args, load_code
from cli.miniature import DRAFT_STEPS, LARGE_DEPTH, SMALL_DEPTH, add_miniature_arg, parse_with_miniature
from code import CollaborativeDecoder, FastPath, SamplingConfig
from fid.samples import (CHECKSUMS, MAX_PER_CLASS, MAX_SEED, Batch, ImageKey, SampleFolder, checkpoint_identity,
                         image_seed, plan, rank_keys)
from fid.writer import BatchWriter
from utils.dist import DistInfo, barrier, cleanup, init_distributed
from utils.images import ROUNDING, quantize
from utils.lock import FolderLock

log = logging.getLogger(__name__)
SEED_WHY = f" (image i of --seed s uses generator seed s * {MAX_PER_CLASS} + i, which must fit in 32 bits)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_code_args(parser)
    add_sampling_args(parser, cfg=1.5, top_k=600, top_p=0.96, temperature="1.1*7,1.0*3", seed=0, max_seed=MAX_SEED,
                      seed_why=SEED_WHY)
    g = parser.add_argument_group("samples")
    g.add_argument("--output_path", default="samples", help="folder for run.json, shards/, images/ and the .npz")
    g.add_argument("--per_class", type=int_in(1, MAX_PER_CLASS, SEED_WHY), default=50,
                   help=f"images per class, at most {MAX_PER_CLASS} (default 50)")
    g.add_argument("--classes", type=int_list, default=None,
                   help="a subset of classes, e.g. 0-99,207 (default: every class of the model)")
    g.add_argument("--batch_size", type=positive_int, default=64, help="images per forward pass (default 64)")
    g.add_argument("--decode_chunk", type=positive_int, default=16,
                   help="images per VQVAE decoder call: bounds the decoder's memory (default 16; 1 decodes each "
                        "image alone)")
    g.add_argument("--rounding", choices=ROUNDING, default="truncate",
                   help="uint8 conversion: truncate as the published script, or round to nearest (default truncate)")
    g.add_argument("--png", dest="png", action="store_true", default=True,
                   help="also write one PNG per image into images/ (the default, as published)")
    g.add_argument("--no_png", dest="png", action="store_false", help="write no PNGs: shards and the .npz only")
    g.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                   help="threads writing PNGs and shards while the next batch is generated (default: the CPU "
                        "cores, at most 8)")
    g.add_argument("--eager", action="store_true",
                   help="run the reference eager path instead of the fast one (linear weights and VQVAE decoder in "
                        "--dtype, compiled passes replayed from CUDA graphs on CUDA; uncompiled and identical to "
                        "eager on the CPU)")
    g.add_argument("--no_fast_check", dest="fast_check", action="store_false",
                   help="skip the fast path's check against the eager path (default: on the first batch of every "
                        "new shape and every 200 batches, before the batch is written; recorded in run.json)")
    add_device_args(parser)
    add_miniature_arg(parser, f"--drafter_depth {LARGE_DEPTH} --refiner_depth {SMALL_DEPTH} --draft_steps "
                              f"{DRAFT_STEPS}", ", --output_path samples/miniature")
    return parse_with_miniature(parser, argv, dict(drafter_depth=LARGE_DEPTH, refiner_depth=SMALL_DEPTH,
                                                   draft_steps=DRAFT_STEPS, output_path="samples/miniature"))


@torch.no_grad()
def generate_batch(decoder: CollaborativeDecoder, keys: list[ImageKey], sampling: SamplingConfig, args,
                   device: torch.device, dtype: torch.dtype, fast: FastPath | None = None) -> Batch:
    """Token maps and uint8 pixels of `keys`, each image from its own generator (see the module docstring)."""
    generators = [torch.Generator(device=device).manual_seed(image_seed(args.seed, k)) for k in keys]
    labels = torch.tensor([k.cls for k in keys], device=device)
    with autocast(device, dtype):
        state = decoder.state(labels, generator=generators, sampling=sampling, fast=fast)
        # f_hat again from the tokens, chunk by chunk: a chunk's pixels then depend on its images alone (the
        # batch's own f_hat went through phi's convolutions with the whole batch); more_smooth's is not the tokens'
        c = args.decode_chunk
        f_hat = state.f_hat if sampling.more_smooth else torch.cat(
            [decoder.vae.quantize.tokens_to_fhat([t[i:i + c] for t in state.tokens]) for i in range(0, len(keys), c)])
        pixels = quantize(decoder.decode(f_hat, fast, c), args.rounding)
    tokens = torch.cat(state.tokens, 1).to(torch.int16 if decoder.vae.vocab_size <= 2**15 else torch.int32)
    return Batch(keys, tokens.cpu().numpy(), pixels.cpu().numpy())


def build_fast_path(decoder: CollaborativeDecoder, device: torch.device, dtype: torch.dtype, decode_chunk: int,
                    check: bool) -> FastPath:
    """Built inside the run's autocast; its decoder copy in the dtype generation computes in (fp32 too)."""
    with autocast(device, dtype):
        return FastPath(decoder, decode_chunk=decode_chunk, check=check, decoder_dtype=dtype)


def settings(args: argparse.Namespace, decoder: CollaborativeDecoder, checkpoints: list[dict],
             sampling: SamplingConfig, dtype: torch.dtype) -> dict:
    """What decides the pixels of an image (not which images, nor the batch size or the number of GPUs)."""
    return dict(seed=args.seed, cfg=sampling.cfg, top_k=sampling.top_k, top_p=sampling.top_p,
                temperature=sampling.temperature, more_smooth=sampling.more_smooth, stops=decoder.stops, checkpoints=checkpoints, dtype=str(dtype),
                fast=not args.eager, rounding=args.rounding, tf32=args.tf32_on)


def prepare_folder(args, folder: SampleFolder, decoder: CollaborativeDecoder, files: dict[str, Path],
                   sampling: SamplingConfig, dtype: torch.dtype) -> None:
    """Rank 0: clean up after a kill, check or record the settings, drop damaged shards."""
    if stale := folder.prepare():
        log.info(f"removed {len(stale)} temporary files an interrupted run left: "
                 f"{', '.join(p.name for p in stale[:5])}{' ...' if len(stale) > 5 else ''}")
    checkpoints = checkpoint_identity(list(files), list(files.values()), folder.root / CHECKSUMS)
    done = folder.done(remove_damaged=True)
    folder.check_settings(settings(args, decoder, checkpoints, sampling, dtype), binding=bool(done))


def sample(args: argparse.Namespace, dist: DistInfo, device: torch.device) -> Path | None:
    if args.more_smooth and not args.eager:
        raise UsageError("--more_smooth runs on the eager path only: add --eager (the published FID samples do not "
                         "use it)")
    dtype = resolve_dtype(args.dtype, device)
    args.tf32_on = published_numerics(device, args.tf32)
    folder = SampleFolder(args.output_path)
    if dist.is_main:
        writable_dir(folder.root)
    linear_dtype = None if args.eager or dtype == torch.float32 else dtype  # the fast path's weights
    decoder, files = load_code(args, device, linear_dtype)
    sampling = sampling_config(args, decoder.num_scales, code_temperature(decoder.num_scales))
    classes = sorted(set(args.classes if args.classes is not None else range(decoder.num_classes)))
    check_labels(classes, decoder.num_classes, "--classes")
    keys = plan(classes, args.per_class)
    with FolderLock(folder.root, "--output_path", active=dist.is_main):  # two runs in one folder would mix
        if dist.is_main:
            prepare_folder(args, folder, decoder, files, sampling, dtype)
        barrier()
        return generate(args, dist, device, folder, decoder, keys, sampling, dtype)


def generate(args: argparse.Namespace, dist: DistInfo, device: torch.device, folder: SampleFolder,
             decoder: CollaborativeDecoder, keys: list[ImageKey], sampling: SamplingConfig, dtype: torch.dtype
             ) -> Path | None:
    done = folder.done()
    todo = [k for k in rank_keys(keys, dist.rank, dist.world_size) if k not in done]
    fast = None if args.eager else build_fast_path(decoder, device, dtype, args.decode_chunk, args.fast_check)
    if dist.is_main and (args.eager or not args.fast_check):
        folder.record_fast_check([{"skipped": "--eager" if args.eager else "--no_fast_check"}])
    log.info(f"{len(keys)} images in all; rank 0 of {dist.world_size} has {len(todo)} still to generate")
    start = time.perf_counter()
    with BatchWriter(folder, args.png, args.workers) as writer, \
            tqdm(total=len(todo), unit="img", disable=not dist.is_main, desc="sampling") as bar:
        for i in range(0, len(todo), args.batch_size):
            batch = todo[i:i + args.batch_size]
            checks = len(fast.reports) if fast is not None else 0
            try:
                done = generate_batch(decoder, batch, sampling, args, device, dtype, fast)  # checked, if due
            finally:  # a failed check is recorded too, and nothing of its batch is written
                if dist.is_main and fast is not None and len(fast.reports) > checks:
                    folder.record_fast_check([r.as_dict() for r in fast.reports[checks:]])
            writer.submit(done)
            bar.update(len(batch))
    barrier()
    if not dist.is_main:
        return None
    return finish(args, folder, keys, len(todo), time.perf_counter() - start, device)


def finish(args, folder: SampleFolder, keys: list[ImageKey], generated: int, took: float,
           device: torch.device) -> Path:
    done = folder.done()
    if args.png and (repaired := folder.repair_pngs(keys, done)):
        log.info(f"rewrote {len(repaired)} missing or damaged PNGs from their shards: "
                 f"{', '.join(p.name for p in repaired[:5])}{' ...' if len(repaired) > 5 else ''}")
    out, shape = folder.assemble(keys, done)
    memory = f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB" \
        if device.type == "cuda" else ""
    print(f"saved {out} ({shape[0]} images of {shape[2]}x{shape[1]}{', PNGs in ' + str(folder.images) if args.png else ''}"
          f"); generated {generated} in {took:.1f} s ({generated / max(took, 1e-9):.2f} images/s on rank 0){memory}")
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
