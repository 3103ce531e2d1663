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
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli.args import exit_on_error, positive_int, setup_logging
from cli.train_args import parse_training_args, train_config, training_parser
from models import VAR, VARConfig, load_vae
from training.config import TrainConfig
from training.data import ImageFolder, ImageTransform
from training.state import export_weights
from training.tokens import make_batch
from training.train import train
from utils.dist import is_rank_zero, local_device

# peak lr 2e-3 at batch 32: the base rate per 256 images is 1.6e-2
RECIPE = TrainConfig(output_dir=Path("outputs/var"), lr=1.6e-2, wd=0.05, max_steps=1000, batch_size=32,
                     default_global_batch=None, schedule="cosine", warmup_ratio=0.05, clip=1.0, num_workers=0,
                     save_every=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, RECIPE)
    a = p.add_argument_group("model").add_argument
    a("--vae", required=True, help="the frozen tokenizer: vqvae.pth written by train_vqvae.py")
    a("--depth", type=positive_int, required=True, help="transformer blocks")
    a("--width", type=positive_int, default=64, help="model width (default %(default)s)")
    a("--heads", type=positive_int, default=4, help="attention heads (default %(default)s)")
    a("--cond_drop", type=float, default=0.1, help="probability of the null class, for CFG (default %(default)g)")
    args = parse_training_args(p, argv)
    if not 0 <= args.cond_drop <= 1 or args.width % max(args.heads, 1):
        p.error("--cond_drop must be in [0, 1] and --width divisible by --heads")
    return args


def main(args: argparse.Namespace) -> None:
    config = train_config(args)
    setup_logging(is_rank_zero(), config.output_dir / "train.log")
    device = local_device(config.device)

    torch.manual_seed(config.seed)
    vae = load_vae(args.vae, device=device).requires_grad_(False)  # the file carries its patch_nums
    data = ImageFolder(config.data_path / "train", ImageTransform(vae.config.image_size, hflip=config.hflip),
                       seed=config.seed, cond_drop=args.cond_drop)
    c, null_class = vae.config, len(data.classes)
    model = VAR(VARConfig(depth=args.depth, width=args.width, heads=args.heads, num_classes=len(data.classes),
                          vocab_size=c.vocab_size, cvae=c.z_channels, patch_nums=c.patch_nums, drop_path_rate=0.0))

    def loss_step(model: nn.Module, batch: tuple, step: int, total_steps: int):
        """Teacher-forced cross-entropy on every token of every scale."""
        b = make_batch(vae, *batch, null_class, device)
        logits_BLV = model(b.labels_B, b.inputs)
        ce = F.cross_entropy(logits_BLV.flatten(0, 1).float(), b.gt_BL.flatten())
        accuracy = (logits_BLV.argmax(-1) == b.gt_BL).double().mean()
        return ce, {"acc": accuracy}

    if train(config, model, loss_step, data, role="var", recipe={"cond_drop": args.cond_drop},
             tokens_per_sample=model.config.seq_len):
        export_weights(model, config.output_dir / f"var_d{args.depth}.pth")


if __name__ == "__main__":
    exit_on_error(main, parse_args())
