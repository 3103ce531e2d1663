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
from models.generation import check_compatible
from utils.dist import DistInfo
from utils.hub import var_file
from utils.train import Batch, StepFn
from utils.train_args import check_args, positive_int, training_parser
from utils.train_run import Role, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser("refiner", __doc__, lr=1e-5, wd=0.0, epochs=50.0, depth=16)
    p.add_argument("--teacher_depth", type=positive_int, default=30, help="depth of the teacher (default %(default)s)")
    p.add_argument("--teacher", default=None, help="teacher weights: a path or a published name "
                                                   "(default var_d{teacher_depth}.pth from Hugging Face)")
    p.add_argument("--kd_temperature", type=float, default=1.0,
                   help="softmax temperature T of both distributions in KL(teacher || student); the KL is "
                        "multiplied by T^2 (default %(default)g)")
    p.add_argument("--ce_weight", type=float, default=0.0,
                   help="weight of a cross-entropy term against the ground-truth tokens, with the same per-scale "
                        "weights as the KL (default %(default)g: distillation only, as in the paper)")
    args = check_args(p, p.parse_args(argv))
    if args.kd_temperature <= 0 or args.ce_weight < 0:
        p.error("--kd_temperature must be > 0 and --ce_weight >= 0")
    return args


def load_teacher(args: argparse.Namespace, student: VAR, vae: VQVAE, device: torch.device) -> VAR:
    teacher = load_var(args.teacher or var_file(args.teacher_depth), depth=args.teacher_depth, device=device,
                       ckpt_dir=args.ckpt_dir)
    check_compatible(vae, [student, teacher])
    return teacher.eval().requires_grad_(False)


def make_step_fn(args: argparse.Namespace, student: VAR, vae: VQVAE, info: DistInfo,
                 total_steps: int) -> tuple[StepFn, int]:
    """KD against the frozen teacher on every scale, the drafted ones weighted by the lambda schedule."""
    teacher = load_teacher(args, student, vae, info.device)
    loss_fn = RefinerLoss(args.draft_steps, student.config.offsets, args.kd_temperature, args.ce_weight)

    def step_fn(model: torch.nn.Module, batch: Batch, step: int):
        lam = kd_lambda(step, total_steps)
        with torch.no_grad():
            teacher_BLV = teacher(batch.labels_B, batch.inputs)
        loss, parts = loss_fn(model(batch.labels_B, batch.inputs), teacher_BLV, batch.gt_BL, lam)
        return loss, {**parts, "lambda": torch.tensor(lam, dtype=torch.float64)}

    return step_fn, student.config.seq_len


def main(args: argparse.Namespace) -> int:
    return run(args, Role("refiner", make_step_fn))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
