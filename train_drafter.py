"""Specialised fine-tuning of the drafter (CoDe, section 3.3): VAR-d30 learns the first N scales only.

    torchrun --nproc_per_node=8 train_drafter.py --depth 30 --draft_steps 8 --data_path /data/imagenet \\
        --init var_d30.pth

Cross-entropy against the ground-truth tokens of scales 1..N; the forward pass stops after scale N.
Recipe of the paper: base lr 1e-6, weight decay 0.08, 5% of VAR's 350 epochs (17.5), global batch 1024.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cli.args import exit_on_error, setup_logging
from cli.train_args import (add_finetune_args, check_finetune_args, load_student, parse_training_args, train_config,
                            training_parser)
from training.config import TrainConfig
from training.data import ImageFolder, ImageTransform
from training.losses import drafter_ce
from training.state import export_weights
from training.tokens import check_classes, make_batch
from training.train import train
from utils.dist import is_rank_zero, local_device

RECIPE = TrainConfig(output_dir=Path("output/drafter"), lr=1e-6, wd=0.08, epochs=17.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, RECIPE)
    add_finetune_args(p, "drafter", depth=30)
    args = parse_training_args(p, argv)
    check_finetune_args(p, args)
    return args


def main(args: argparse.Namespace) -> None:
    config = train_config(args)
    setup_logging(is_rank_zero(), config.output_dir / "train.log")
    device, n = local_device(config.device), args.draft_steps

    torch.manual_seed(config.seed)
    drafter, vae = load_student(args, "drafter", device)
    offsets, null_class = drafter.config.offsets, drafter.config.num_classes

    def loss_step(model: torch.nn.Module, batch: tuple, step: int, total_steps: int):
        """Teacher-forced pass over scales 1..N, cross-entropy on them."""
        b = make_batch(vae, *batch, null_class, device)
        ce = drafter_ce(model(b.labels_B, b.inputs, stop_scale=n), b.gt_BL, n, offsets)
        return ce, {"ce": ce.detach()}

    data = ImageFolder(config.data_path / "train", ImageTransform(vae.config.image_size, hflip=config.hflip),
                       seed=config.seed, cond_drop=args.cond_drop)
    check_classes(data, drafter)
    recipe = {"draft_steps": n, "drop_path": args.drop_path, "cond_drop": args.cond_drop}
    if train(config, drafter, loss_step, data, role="drafter", recipe=recipe, tokens_per_sample=offsets[n]):
        export_weights(drafter, config.output_dir / f"drafter_{n}.pth")


if __name__ == "__main__":
    exit_on_error(main, parse_args())
