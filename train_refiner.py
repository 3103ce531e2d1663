"""Specialised fine-tuning of the refiner (CoDe, section 3.3): VAR-d16 distilled from a large VAR.

    torchrun --nproc_per_node=8 train_refiner.py --depth 16 --teacher_depth 30 --draft_steps 8 \\
        --data_path /data/imagenet

Distillation only: per token, KL(teacher || student) = sum_v p_teacher (log p_teacher - log p_refiner),
the teacher (the pre-trained VAR-d30 by default) run teacher-forced on the same ground-truth inputs under
no_grad. Scales 1..N weigh lambda, falling linearly from 1 at the first step to 0 at the last; scales
N+1..K weigh 1. Recipe of the paper: base lr 1e-5, no weight decay, 25% of VAR's 200 epochs (50).
With --kd_weight 0 --ce_weight 1 no teacher is read: the same run on plain cross-entropy (a control).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cli.args import exit_on_error, setup_logging
from cli.train_args import (add_distill_args, add_finetune_args, check_distill_args, check_finetune_args,
                            load_student, parse_training_args, train_config, training_parser)
from models import VAR, VQVAE, load_var
from training.config import TrainConfig
from training.data import ImageFolder, ImageTransform
from training.losses import RefinerLoss, kd_lambda
from training.state import export_weights
from training.tokens import check_classes, fits, make_batch
from training.train import train
from utils.dist import is_rank_zero, local_device
from utils.hub import var_file

RECIPE = TrainConfig(output_dir=Path("output/refiner"), lr=1e-5, wd=0.0, epochs=50.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, RECIPE)
    add_finetune_args(p, "refiner", depth=16)
    add_distill_args(p)
    args = parse_training_args(p, argv)
    check_finetune_args(p, args)
    check_distill_args(p, args)
    return args


def load_teacher(args: argparse.Namespace, refiner: VAR, vae: VQVAE, device: torch.device) -> VAR:
    teacher_file = args.teacher or var_file(args.teacher_depth)
    teacher = load_var(teacher_file, depth=args.teacher_depth, device=device, ckpt_dir=args.ckpt_dir)
    fits(vae, [refiner, teacher], f"the teacher ({teacher_file})")
    return teacher.eval().requires_grad_(False)


def main(args: argparse.Namespace) -> None:
    config = train_config(args)
    setup_logging(is_rank_zero(), config.output_dir / "train.log")
    device, n = local_device(config.device), args.draft_steps

    torch.manual_seed(config.seed)
    refiner, vae = load_student(args, "refiner", device)
    teacher = load_teacher(args, refiner, vae, device) if args.kd_weight else None
    loss_fn = RefinerLoss(n, refiner.config.offsets, args.kd_temperature, args.ce_weight, args.kd_weight)
    null_class = refiner.config.num_classes

    def loss_step(model: torch.nn.Module, batch: tuple, step: int, total_steps: int):
        """KD against the frozen teacher on every scale, the drafted ones weighted by the lambda schedule (with
        --kd_weight 0: cross-entropy alone, no teacher)."""
        b = make_batch(vae, *batch, null_class, device)
        lam = kd_lambda(step, total_steps)
        with torch.no_grad():
            teacher_BLV = teacher(b.labels_B, b.inputs) if teacher is not None else None
        loss, parts = loss_fn(model(b.labels_B, b.inputs), teacher_BLV, b.gt_BL, lam)
        return loss, {**parts, "lambda": torch.tensor(lam, dtype=torch.float64)}

    data = ImageFolder(config.data_path / "train", ImageTransform(vae.config.image_size, hflip=config.hflip),
                       seed=config.seed, cond_drop=args.cond_drop)
    check_classes(data, refiner)
    recipe = {"draft_steps": n, "drop_path": args.drop_path, "cond_drop": args.cond_drop,
              "teacher_depth": args.teacher_depth, "kd_temperature": args.kd_temperature, "ce_weight": args.ce_weight,
              "kd_weight": args.kd_weight}
    if train(config, refiner, loss_step, data, role="refiner", recipe=recipe, tokens_per_sample=refiner.config.seq_len):
        export_weights(refiner, config.output_dir / f"refiner_{n}.pth")


if __name__ == "__main__":
    exit_on_error(main, parse_args())
