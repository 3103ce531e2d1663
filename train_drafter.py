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
from training.args import Defaults, add_finetune_args, check_run_args, finetune_config, run_config, training_parser
from training.config import FinetuneConfig
from training.run import run
from training.var_jobs import Batch, finetune_job

DEFAULTS = Defaults(output_dir="output/drafter", lr=1e-6, wd=0.08, epochs=17.5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, DEFAULTS)
    add_finetune_args(p, "drafter", depth=30)
    args = check_run_args(p, p.parse_args(argv))
    args.finetune = finetune_config(p, args, "drafter")
    return args


def drafter_objective(draft_steps: int):
    """Teacher-forced pass over scales 1..N, cross-entropy on them."""
    def objective(student: VAR, vae: VQVAE, device: torch.device):
        offsets = student.config.offsets

        def step_fn(model: torch.nn.Module, batch: Batch, step: int, total_steps: int):
            logits_BlV = model(batch.labels_B, batch.inputs, stop_scale=draft_steps)
            ce = drafter_ce(logits_BlV, batch.gt_BL, draft_steps, offsets)
            return ce, {"ce": ce.detach()}

        return step_fn, offsets[draft_steps]
    return objective


def main(args: argparse.Namespace) -> int:
    cfg: FinetuneConfig = args.finetune
    return run(run_config(args), lambda config, info, resume: finetune_job(cfg, info, resume,
                                                                           drafter_objective(cfg.draft_steps)))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
