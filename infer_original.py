"""Plain VAR: generate a grid of class-conditional images and report latency, images/s and peak memory.

    python infer_original.py --model_depth 30
    python infer_original.py --model_ckpt my_var.pth --vae_ckpt vae.pth --class_labels 1 2 3 --device cpu

Weights are var_d<depth>.pth and vae_ch160v4096z32.pth from the Hugging Face repo FoundationVision/var (or
--ckpt_dir, or explicit paths). Weights stay float32; generation runs under torch.autocast(--dtype) as published.
"""
from __future__ import annotations

import argparse

from utils.cli import add_sampling_args, exit_on_error, sampling_config, setup_logging
from utils.cli_models import add_var_args, load_plain
from utils.demo import add_demo_args, demo_labels, flatten_labels, prepare, run_demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_var_args(parser)
    add_sampling_args(parser, cfg=1.5, top_k=900, top_p=0.96, temperature="1.0", seed=42)
    add_demo_args(parser, output="output_original.png")
    return flatten_labels(parser.parse_args(argv))


def main(args: argparse.Namespace):
    setup_logging()
    device, dtype = prepare(args)
    chain = load_plain(args, device)
    sampling = sampling_config(args, chain.num_scales, default_temperature=1.0)
    return run_demo(args, chain, sampling, demo_labels(args, chain, device), device, dtype)


if __name__ == "__main__":
    exit_on_error(main, parse_args())
