"""Train the miniature's judge: a small CNN classifier of the shapes classes, on the real training images.

    python -m miniature.train_classifier --data_path outputs/miniature/data --output_dir outputs/miniature/classifier

Cross-entropy with the same augmentation as the generative models see (short side to 1.125 x size, random
crop). Writes OUTPUT_DIR/classifier.pth ({"model", "config"}; miniature.classifier.load_classifier reads it)
and logs its accuracy on DATA_PATH/val with --eval_every.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli.args import exit_on_error, positive_int, setup_logging
from cli.train_args import parse_training_args, train_config, training_parser
from training.config import TrainConfig
from training.data import ImageFolder, ImageTransform
from training.train import train
from utils.dist import is_rank_zero, local_device

from .classifier import ClassifierConfig, ShapeClassifier, save_classifier

# peak lr 3e-3 at batch 64: the base rate per 256 images is 1.2e-2
RECIPE = TrainConfig(output_dir=Path("outputs/classifier"), lr=1.2e-2, wd=0.01, max_steps=400, batch_size=64,
                     default_global_batch=None, schedule="cosine", warmup_ratio=0.05, clip=1.0, num_workers=0,
                     save_every=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, RECIPE)
    a = p.add_argument_group("model").add_argument
    a("--width", type=positive_int, default=32, help="channels of the first stage (default %(default)s)")
    a("--image_size", type=positive_int, default=16, help="input side; images are resized to it (default %(default)s)")
    return parse_training_args(p, argv)


def main(args: argparse.Namespace) -> None:
    config = train_config(args)
    setup_logging(is_rank_zero(), config.output_dir / "train.log")
    device = local_device(config.device)

    torch.manual_seed(config.seed)
    data = ImageFolder(config.data_path / "train", ImageTransform(args.image_size, hflip=config.hflip),
                       seed=config.seed)
    model = ShapeClassifier(ClassifierConfig(len(data.classes), args.width, args.image_size))

    def loss_step(model: nn.Module, batch: tuple, step: int, total_steps: int):
        images, labels = batch[0].to(device), batch[1].to(device)
        logits = model(images)
        accuracy = (logits.argmax(1) == labels).double().mean()
        return F.cross_entropy(logits, labels), {"acc": accuracy}

    if train(config, model, loss_step, data, role="classifier"):
        save_classifier(model, config.output_dir / "classifier.pth")


if __name__ == "__main__":
    exit_on_error(main, parse_args())
