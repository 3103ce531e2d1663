"""Train the multi-scale residual VQVAE (the tokenizer VAR never released) from scratch on an image folder.

    python train_vqvae.py --data_path outputs/miniature/data --output_dir outputs/miniature/vqvae
    torchrun --nproc_per_node=8 train_vqvae.py --data_path /data/imagenet --ch 160 --ch_mult 1,1,2,2,4 \\
        --vocab_size 4096 --z_channels 32 --patch_nums 1,2,3,4,5,6,8,10,13,16

Objective: L1 + L2 reconstruction of images in [-1, 1], plus the quantiser's loss (codebook and beta x
commitment on the running sum f_hat after every scale); gradients reach the encoder through a straight-through
estimator (MultiScaleQuantizer.forward). The codebook is learned by that loss. The log reports, per scale, the
fraction of the codebook one batch uses (use0, use1, ...); the export, the fraction in use over the last ~100
steps. Writes OUTPUT_DIR/vqvae.pth: {"model": state dict, "config": VQVAEConfig}; models.load_vae reads it,
patch_nums included.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli.args import exit_on_error, setup_logging
from cli.train_args import parse_training_args, train_config, training_parser
from models import VQVAE, VQVAEConfig
from training.config import TrainConfig
from training.data import ImageFolder, ImageTransform
from training.log import log
from training.train import train
from utils.checkpoint import atomic_save
from utils.dist import is_rank_zero, local_device

# peak lr 2e-3 at batch 32: the base rate per 256 images is 1.6e-2
RECIPE = TrainConfig(output_dir=Path("outputs/vqvae"), lr=1.6e-2, wd=0.0, max_steps=1500, batch_size=32,
                     default_global_batch=None, schedule="cosine", warmup_ratio=0.05, clip=1.0, num_workers=0,
                     save_every=0)


def int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, RECIPE)
    a = p.add_argument_group("model (miniature defaults: 16x16 images -> an 8x8 latent in 6 scales)").add_argument
    a("--ch", type=int, default=32, help="base width, a multiple of 32 (default %(default)s)")
    a("--ch_mult", type=int_tuple, default=(1, 1), help="width multipliers per level; 2^(levels-1) downsampling")
    a("--num_res_blocks", type=int, default=1, help="res blocks per encoder level (default %(default)s)")
    a("--vocab_size", type=int, default=256, help="codebook size (default %(default)s)")
    a("--z_channels", type=int, default=8, help="latent channels, Cvae (default %(default)s)")
    a("--patch_nums", type=int_tuple, default=(1, 2, 3, 4, 6, 8), help="token-map sides; the last is the latent's")
    a("--beta", type=float, default=0.25, help="commitment weight (default %(default)g)")
    args = parse_training_args(p, argv)
    try:
        args.config = VQVAEConfig(vocab_size=args.vocab_size, z_channels=args.z_channels, ch=args.ch,
                                  ch_mult=args.ch_mult, num_res_blocks=args.num_res_blocks,
                                  patch_nums=args.patch_nums, beta=args.beta)
    except ValueError as e:
        p.error(str(e))
    return args


def new_vqvae(config: VQVAEConfig) -> VQVAE:
    """A fresh VQVAE; codes start near 0, inside the encoder's range: every code is some vector's nearest."""
    vae = VQVAE(config)
    nn.init.uniform_(vae.quantize.embedding.weight, -1 / config.vocab_size, 1 / config.vocab_size)
    return vae


def codes_in_use(vae: VQVAE, threshold: float = 0.01) -> list[float]:
    """Per scale, the fraction of codes hit on average at least `threshold` times per batch recently (EMA)."""
    return (vae.quantize.ema_vocab_hit_SV > threshold).float().mean(1).tolist()


def main(args: argparse.Namespace) -> None:
    config = train_config(args)
    setup_logging(is_rank_zero(), config.output_dir / "train.log")
    device = local_device(config.device)

    torch.manual_seed(config.seed)
    vae = new_vqvae(args.config)

    def loss_step(model: nn.Module, batch: tuple, step: int, total_steps: int):
        """L1 + L2 reconstruction plus the quantiser's loss; the per-scale codebook use of the batch."""
        images = batch[0].to(device)
        recon, q = model(images)
        l1, l2 = F.l1_loss(recon, images), F.mse_loss(recon, images)
        parts = {"l1": l1.detach(), "mse": l2.detach(), "vq": q.loss.detach()}
        parts.update({f"use{k}": u for k, u in enumerate(q.usage)})
        return l1 + l2 + q.loss, parts

    data = ImageFolder(config.data_path / "train", ImageTransform(args.config.image_size, hflip=config.hflip),
                       seed=config.seed)
    if train(config, vae, loss_step, data, role="vqvae"):
        path = config.output_dir / "vqvae.pth"
        log.info("codebook in use per scale (recent batches): %s", " ".join(f"{u:.0%}" for u in codes_in_use(vae)))
        atomic_save({"model": {k: v.detach().float() for k, v in vae.state_dict().items()},
                     "config": vae.config.to_dict()}, path)
        log.info("exported %s", path)


if __name__ == "__main__":
    exit_on_error(main, parse_args())
