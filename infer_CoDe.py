"""Collaborative Decoding: a large drafter generates the first scales, a small refiner the rest.

    python infer_CoDe.py --drafter_depth 30 --refiner_depth 16 --draft_steps 8                  # fine-tuned pair
    python infer_CoDe.py --drafter_depth 30 --refiner_depth 16 --draft_steps 8 --training_free  # plain VARs
    python infer_CoDe.py --image dog.jpg --mask 64,64,192,192 --class_labels 207 207            # inpainting
    python infer_CoDe.py --miniature --device cpu     # the miniature's fine-tuned pair (N=3), offline, seconds

Fine-tuned pairs drafter_<N>.pth / refiner_<N>.pth come from the Hugging Face repo Zigeng/VAR_CoDe (published
for N = 6, 7, 8, 9 with a d30 drafter and a d16 refiner); --training_free uses var_d<depth>.pth from
FoundationVision/var instead. Weights stay float32 and generation runs under torch.autocast(--dtype), as
published; --fast loads the linear weights in --dtype instead and runs the compiled, graph-captured path.

Editing (zero-shot inpainting, outpainting, class-conditional editing): --image is centre-cropped and resized to
the model's resolution; --mask is a PNG the size of the image (non-zero = generate) or a box x0,y0,x1,y1 in the
image's pixels. Tokens outside the mask keep the image's own encoding at every scale; each label gives one edit.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from cli.args import (UsageError, add_sampling_args, autocast, code_temperature, exit_on_error, sampling_config,
                      setup_logging)
from cli.checkpoints import add_code_args, load_code
from cli.demo import add_demo_args, demo_labels, flatten_labels, prepare, save_and_report
from cli.miniature import (DRAFT_STEPS, LARGE_DEPTH, NUM_CLASSES, SMALL_DEPTH, add_miniature_arg,
                           parse_with_miniature)
from cli.timing import timed_generation
from code import CollaborativeDecoder, FastPath, TokenEdit, expand_edit, make_edit
from utils.images import box_to_mask, load_image, load_mask

INT = re.compile(r"[+-]?\d+")
CHECK_SIZE = 16  # --image and --mask are checked at this size before the models (and their size) are known


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_code_args(parser)
    add_sampling_args(parser, cfg=4.0, top_k=600, top_p=0.95, temperature="1.1*7,1.0*3", seed=42)
    add_demo_args(parser, output="output_code.png")
    g = parser.add_argument_group("editing")
    g.add_argument("--image", default=None, help="the image to edit")
    g.add_argument("--mask", default=None, help="where to generate: a PNG path or a box x0,y0,x1,y1 in pixels")
    add_miniature_arg(parser, f"--drafter_depth {LARGE_DEPTH} --refiner_depth {SMALL_DEPTH} --draft_steps "
                              f"{DRAFT_STEPS}, --class_labels 0-{NUM_CLASSES - 1}", ", --upscale 4")
    args = parse_with_miniature(parser, argv, dict(
        drafter_depth=LARGE_DEPTH, refiner_depth=SMALL_DEPTH, draft_steps=DRAFT_STEPS,
        class_labels=[list(range(NUM_CLASSES))], upscale=4))
    if (args.image is None) != (args.mask is None):
        parser.error("--image and --mask go together")
    return flatten_labels(args)


def parse_box(text: str) -> tuple[int, int, int, int] | None:
    """'x0,y0,x1,y1' (spaces allowed) -> the box; None if `text` is an existing file or has no comma (a path)."""
    if Path(text).exists() or "," not in text:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(INT.fullmatch(p) for p in parts):
        raise UsageError(f"--mask {text!r} is neither a mask file nor a box x0,y0,x1,y1 of four integer pixel "
                         "coordinates (e.g. 64,64,192,192)")
    return tuple(int(p) for p in parts)


def edit_inputs(args: argparse.Namespace, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """--image and --mask at `size` x `size`; UsageErrors name the flag."""
    try:
        image, original = load_image(args.image, size)
    except ValueError as e:
        raise UsageError(f"--image {e}") from None
    box = parse_box(args.mask)
    try:
        mask = box_to_mask(box, original, size) if box else load_mask(args.mask, original, size)
    except ValueError as e:
        raise UsageError(f"--mask {e}") from None
    return image, mask


def load_edit(args: argparse.Namespace, decoder: CollaborativeDecoder, batch: int) -> TokenEdit:
    image, mask = edit_inputs(args, decoder.vae.config.image_size)
    return expand_edit(make_edit(decoder.vae, image, mask), batch)


def main(args: argparse.Namespace):
    setup_logging()
    device, dtype, linear_dtype = prepare(args)
    if args.image is not None:
        edit_inputs(args, size=CHECK_SIZE)  # bad files or boxes are reported before the models load
    decoder, files = load_code(args, device, linear_dtype)  # the drafter, then the refiner, and the VQVAE
    sampling = sampling_config(args, decoder.num_scales, code_temperature(decoder.num_scales))
    labels = demo_labels(args, decoder.num_classes, device)
    edit = load_edit(args, decoder, labels.shape[0]) if args.image is not None else None
    with autocast(device, dtype):
        fast = FastPath(decoder, check=args.fast_check, decoder_dtype=dtype) if args.fast else None
        images, timing = timed_generation(
            device, labels.shape[0],
            lambda: decoder.state(labels, seed=args.seed, sampling=sampling, edit=edit, fast=fast),
            lambda state: decoder.decode(state.f_hat, fast))
    save_and_report(args, files, images, timing, device, dtype, fast)
    return images, timing


if __name__ == "__main__":
    exit_on_error(main, parse_args())
