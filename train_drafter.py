"""Specialised fine-tuning of the drafter (CoDe, section 3.3): VAR-d30 learns the first N scales only.

    torchrun --nproc_per_node=8 train_drafter.py --depth 30 --draft_steps 8 --data_path /data/imagenet \\
        --init var_d30.pth

Cross-entropy against the ground-truth tokens of scales 1..N; the forward pass stops after scale N.
Recipe of the paper: base lr 1e-6, weight decay 0.08, 5% of VAR's 350 epochs (17.5), global batch 1024.
"""
from __future__ import annotations

import argparse
import sys

import torch

from code.losses import drafter_ce
from models import VAR, VQVAE
from utils.dist import DistInfo
from utils.train import Batch, StepFn
from utils.train_args import check_args, training_parser
from utils.train_run import Role, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser("drafter", __doc__, lr=1e-6, wd=0.08, epochs=17.5, depth=30)
    return check_args(p, p.parse_args(argv))


def make_step_fn(args: argparse.Namespace, student: VAR, vae: VQVAE, info: DistInfo,
                 total_steps: int) -> tuple[StepFn, int]:
    """Teacher-forced pass over scales 1..N, cross-entropy on them."""
    N, offsets = args.draft_steps, student.config.offsets

    def step_fn(model: torch.nn.Module, batch: Batch, step: int):
        logits_BlV = model(batch.labels_B, batch.inputs, stop_scale=N)
        ce = drafter_ce(logits_BlV, batch.gt_BL, N, offsets)
        return ce, {"ce": ce.detach()}

    return step_fn, offsets[N]


def main(args: argparse.Namespace) -> int:
    return run(args, Role("drafter", make_step_fn))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
