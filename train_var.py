"""Train a class-conditional VAR from scratch on the token maps of a frozen VQVAE (the miniature's VARs).

    python train_var.py --data_path outputs/miniature/data --vae outputs/miniature/ckpt/vqvae.pth \\
        --depth 6 --width 64 --output_dir outputs/miniature/runs/var_d6

VAR's pre-training objective: teacher-forced cross-entropy on every token of every scale in one block-causal
pass, labels replaced by the null class with probability --cond_drop (for classifier-free guidance). The
images are tokenized on the fly, as train_drafter.py / train_refiner.py do. Writes OUTPUT_DIR/var_d<depth>.pth,
a plain state dict that models.load_var, train_drafter.py --init and train_refiner.py --teacher read.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F

from models import VAR, VARConfig, load_vae
from training.args import Defaults, check_run_args, positive_int, run_config, training_parser
from training.config import RunConfig
from training.data import scan_image_folder
from training.run import Job, run
from training.state import export_weights
from training.var_jobs import Batch, token_batches
from utils.dist import DistInfo

# peak lr 2e-3 at batch 32: the base rate per 256 images is 1.6e-2
DEFAULTS = Defaults(output_dir="outputs/var", lr=1.6e-2, wd=0.05, max_steps=1000, batch_size=32, global_batch=None,
                    schedule="cosine", warmup_ratio=0.05, clip=1.0, num_workers=0, save_every=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, DEFAULTS)
    a = p.add_argument_group("model").add_argument
    a("--vae", required=True, help="the frozen tokenizer: vqvae.pth written by train_vqvae.py")
    a("--depth", type=positive_int, required=True, help="transformer blocks")
    a("--width", type=positive_int, default=64, help="model width (default %(default)s)")
    a("--heads", type=positive_int, default=4, help="attention heads (default %(default)s)")
    a("--cond_drop", type=float, default=0.1, help="probability of the null class, for CFG (default %(default)g)")
    args = check_run_args(p, p.parse_args(argv))
    if not 0 <= args.cond_drop <= 1 or args.width % max(args.heads, 1):
        p.error("--cond_drop must be in [0, 1] and --width divisible by --heads")
    return args


def step_fn(model: nn.Module, batch: Batch, step: int, total_steps: int):
    logits_BLV = model(batch.labels_B, batch.inputs)
    ce = F.cross_entropy(logits_BLV.flatten(0, 1).float(), batch.gt_BL.flatten())
    accuracy = (logits_BLV.argmax(-1) == batch.gt_BL).double().mean()
    return ce, {"acc": accuracy}


def make_job(args: argparse.Namespace, config: RunConfig, info: DistInfo) -> Job:
    vae = load_vae(args.vae, device=info.device).requires_grad_(False)  # the file carries its patch_nums
    classes, _ = scan_image_folder(config.data_path / "train")
    c = vae.config
    model = VAR(VARConfig(depth=args.depth, width=args.width, heads=args.heads, num_classes=len(classes),
                          vocab_size=c.vocab_size, cvae=c.z_channels, patch_nums=c.patch_nums, drop_path_rate=0.0))

    def export(var: VAR, out: Path) -> Path:
        export_weights(var, out / f"var_d{args.depth}.pth")
        return out / f"var_d{args.depth}.pth"

    return Job("var", model, step_fn, token_batches(vae, len(classes), info.device), export, c.image_size,
               cond_drop=args.cond_drop, tokens_per_sample=model.config.seq_len, num_classes=len(classes),
               recipe={"cond_drop": args.cond_drop})


def main(args: argparse.Namespace) -> int:
    return run(run_config(args), lambda config, info, resume: make_job(args, config, info))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
