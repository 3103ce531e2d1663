"""Train the miniature's judge: a small CNN classifier of the shapes classes, on the real training images.

    python train_classifier.py --data_path outputs/miniature/data --output_dir outputs/miniature/classifier

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

from miniature.classifier import ClassifierConfig, ShapeClassifier, save_classifier
from miniature.runner import ImageBatch, Job, add_runner_args, check_runner_args, image_batch, run_job
from utils.data import scan_image_folder
from utils.dist import DistInfo
from utils.train_args import positive_int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_args(p, steps=400, batch_size=64, lr=3e-3, wd=0.01, output_dir="outputs/classifier")
    a = p.add_argument_group("model").add_argument
    a("--width", type=positive_int, default=32, help="channels of the first stage (default %(default)s)")
    a("--image_size", type=positive_int, default=16, help="input side; images are resized to it (default %(default)s)")
    return check_runner_args(p, p.parse_args(argv))


def step_fn(model: nn.Module, batch: ImageBatch, step: int):
    logits = model(batch.images)
    accuracy = (logits.argmax(1) == batch.labels_B).double().mean()
    return F.cross_entropy(logits, batch.labels_B), {"acc": accuracy}


def export(model: ShapeClassifier, out: Path) -> Path:
    save_classifier(model, out / "classifier.pth")
    return out / "classifier.pth"


def make_job(args: argparse.Namespace, info: DistInfo) -> Job:
    classes, _ = scan_image_folder(Path(args.data_path) / "train")
    model = ShapeClassifier(ClassifierConfig(len(classes), args.width, args.image_size))
    return Job("classifier", model, step_fn, image_batch(info.device), export, args.image_size)


def main(args: argparse.Namespace) -> int:
    return run_job(args, make_job)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
