"""Specialised fine-tuning of the refiner (CoDe, section 3.3): VAR-d16 distilled from a large VAR.

    torchrun --nproc_per_node=8 train_refiner.py --depth 16 --teacher_depth 30 --draft_steps 8 \\
        --data_path /data/imagenet

Distillation only: per token, KL(teacher || student) = sum_v p_teacher (log p_teacher - log p_refiner),
the teacher (the pre-trained VAR-d30 by default) run teacher-forced on the same ground-truth inputs under
no_grad. Scales 1..N weigh lambda, falling linearly from 1 at the first step to 0 at the last; scales
N+1..K weigh 1. Recipe of the paper: base lr 1e-5, no weight decay, 25% of VAR's 200 epochs (50).
"""
from __future__ import annotations

import argparse
import sys

import torch

from code.losses import RefinerLoss, kd_lambda
from models import VAR, VQVAE, load_var
from training.args import (Defaults, add_distill_args, add_finetune_args, check_run_args, distill_config,
                           finetune_config, run_config, training_parser)
from training.config import DistillConfig, FinetuneConfig
from training.run import run
from training.var_jobs import Batch, finetune_job, fits
from utils.hub import var_file

DEFAULTS = Defaults(output_dir="output/refiner", lr=1e-5, wd=0.0, epochs=50.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, DEFAULTS)
    add_finetune_args(p, "refiner", depth=16)
    add_distill_args(p)
    args = check_run_args(p, p.parse_args(argv))
    args.finetune, args.distill = finetune_config(p, args, "refiner"), distill_config(p, args)
    return args


def load_teacher(cfg: DistillConfig, student: VAR, vae: VQVAE, device: torch.device, ckpt_dir: str | None) -> VAR:
    source = cfg.teacher or var_file(cfg.teacher_depth)
    teacher = load_var(source, depth=cfg.teacher_depth, device=device, ckpt_dir=ckpt_dir)
    fits(vae, [student, teacher], f"the teacher ({source})")
    return teacher.eval().requires_grad_(False)


def refiner_objective(finetune: FinetuneConfig, distill: DistillConfig):
    """KD against the frozen teacher on every scale, the drafted ones weighted by the lambda schedule (with
    --kd_weight 0: cross-entropy alone, no teacher)."""
    def objective(student: VAR, vae: VQVAE, device: torch.device):
        teacher = load_teacher(distill, student, vae, device, finetune.ckpt_dir) if distill.kd_weight else None
        loss_fn = RefinerLoss(finetune.draft_steps, student.config.offsets, distill.kd_temperature, distill.ce_weight,
                              distill.kd_weight)

        def step_fn(model: torch.nn.Module, batch: Batch, step: int, total_steps: int):
            lam = kd_lambda(step, total_steps)
            with torch.no_grad():
                teacher_BLV = teacher(batch.labels_B, batch.inputs) if teacher is not None else None
            loss, parts = loss_fn(model(batch.labels_B, batch.inputs), teacher_BLV, batch.gt_BL, lam)
            return loss, {**parts, "lambda": torch.tensor(lam, dtype=torch.float64)}

        return step_fn, student.config.seq_len
    return objective


def main(args: argparse.Namespace) -> int:
    finetune, distill = args.finetune, args.distill
    return run(run_config(args), lambda config, info, resume: finetune_job(
        finetune, info, resume, refiner_objective(finetune, distill), distill.recipe()))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
