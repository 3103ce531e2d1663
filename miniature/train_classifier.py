"""Train the miniature's judge: a small CNN classifier of the shapes classes, on the real training images.

    python -m miniature.train_classifier --data_path outputs/miniature/data --output_dir outputs/miniature/classifier

Cross-entropy with the same augmentation as the generative models see (short side to 1.125 x size, random
crop). Writes OUTPUT_DIR/classifier.pth ({"model", "config"}; miniature.classifier.load_classifier reads it)
and logs its accuracy on DATA_PATH/val with --eval_every.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F

from training.args import Defaults, check_run_args, positive_int, run_config, training_parser
from training.data import scan_image_folder
from training.run import Job, run
from training.vision_jobs import ImageBatch, image_batches
from utils.dist import DistInfo

from .classifier import ClassifierConfig, ShapeClassifier, save_classifier

# peak lr 3e-3 at batch 64: the base rate per 256 images is 1.2e-2
DEFAULTS = Defaults(output_dir="outputs/classifier", lr=1.2e-2, wd=0.01, max_steps=400, batch_size=64,
                    global_batch=None, schedule="cosine", warmup_ratio=0.05, clip=1.0, num_workers=0, save_every=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = training_parser(__doc__, DEFAULTS)
    a = p.add_argument_group("model").add_argument
    a("--width", type=positive_int, default=32, help="channels of the first stage (default %(default)s)")
    a("--image_size", type=positive_int, default=16, help="input side; images are resized to it (default %(default)s)")
    return check_run_args(p, p.parse_args(argv))


def step_fn(model: nn.Module, batch: ImageBatch, step: int, total_steps: int):
    logits = model(batch.images)
    accuracy = (logits.argmax(1) == batch.labels_B).double().mean()
    return F.cross_entropy(logits, batch.labels_B), {"acc": accuracy}


def export(model: ShapeClassifier, out: Path) -> Path:
    save_classifier(model, out / "classifier.pth")
    return out / "classifier.pth"


def make_job(args: argparse.Namespace, info: DistInfo) -> Job:
    classes, _ = scan_image_folder(Path(args.data_path) / "train")
    model = ShapeClassifier(ClassifierConfig(len(classes), args.width, args.image_size))
    return Job("classifier", model, step_fn, image_batches(info.device), export, args.image_size,
               num_classes=len(classes))


def main(args: argparse.Namespace) -> int:
    return run(run_config(args), lambda config, info, resume: make_job(args, info))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
