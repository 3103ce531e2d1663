"""Plain VAR: generate a grid of class-conditional images and report latency, images/s and peak memory.

    python infer_original.py --model_depth 30
    python infer_original.py --model_ckpt my_var.pth --vae_ckpt vae.pth --class_labels 1 2 3 --device cpu
    python infer_original.py --miniature --device cpu      # the miniature's depth-6 VAR, offline, seconds

Weights are var_d<depth>.pth and vae_ch160v4096z32.pth from the Hugging Face repo FoundationVision/var (or
--ckpt_dir, or explicit paths). Weights stay float32 and generation runs under torch.autocast(--dtype), as
published; --fast loads the linear weights in --dtype instead and runs the compiled, graph-captured path.
"""
from __future__ import annotations

import argparse

from cli.args import add_sampling_args, autocast, exit_on_error, sampling_config, setup_logging
from cli.checkpoints import add_var_args, load_plain
from cli.demo import add_demo_args, demo_labels, flatten_labels, prepare, save_and_report
from cli.miniature import LARGE_DEPTH, NUM_CLASSES, add_miniature_arg, parse_with_miniature
from cli.timing import timed_generation
from code import FastPath


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_var_args(parser)
    add_sampling_args(parser, cfg=4.0, top_k=900, top_p=0.95, temperature="1.0", seed=42)  # the published demo
    add_demo_args(parser, output="output_original.png")
    add_miniature_arg(parser, f"--model_depth {LARGE_DEPTH}, --class_labels 0-{NUM_CLASSES - 1}", ", --upscale 4")
    return flatten_labels(parse_with_miniature(parser, argv, dict(
        model_depth=LARGE_DEPTH, class_labels=[list(range(NUM_CLASSES))], upscale=4)))


def main(args: argparse.Namespace):
    setup_logging()
    device, dtype, linear_dtype = prepare(args)
    decoder, files = load_plain(args, device, linear_dtype)  # a CollaborativeDecoder of one model
    sampling = sampling_config(args, decoder.num_scales, default_temperature=1.0)
    labels = demo_labels(args, decoder.num_classes, device)
    with autocast(device, dtype):
        fast = FastPath(decoder, check=args.fast_check, decoder_dtype=dtype) if args.fast else None
        images, timing = timed_generation(
            device, labels.shape[0],
            lambda: decoder.state(labels, seed=args.seed, sampling=sampling, fast=fast),
            lambda state: decoder.decode(state.f_hat, fast))
    save_and_report(args, files, images, timing, device, dtype, fast)
    return images, timing


if __name__ == "__main__":
    exit_on_error(main, parse_args())
