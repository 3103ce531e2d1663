"""A small CNN that names the class of a shapes image; its penultimate features serve the Frechet distance."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from utils.checkpoint import atomic_save, load_weights_only


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    width: int = 32  # channels of the first stage; the features have 4 x width
    image_size: int = 16

    @property
    def feature_dim(self) -> int:
        return 4 * self.width

    def to_dict(self) -> dict:
        return asdict(self)


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapeClassifier(nn.Module):
    """Two conv stages with 2x pooling, a third conv, global average pooling, a linear head."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or ClassifierConfig()
        w = c.width
        self.body = nn.Sequential(conv_bn(3, w), conv_bn(w, w), nn.MaxPool2d(2),
                                  conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
                                  conv_bn(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, c.num_classes)

    def features(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> (B, 4 * width) penultimate features."""
        return self.body(img_B3HW)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(img_B3HW))


def save_classifier(model: ShapeClassifier, path: str | os.PathLike) -> None:
    atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "config": model.config.to_dict()}, path)


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> ShapeClassifier:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint {path} does not exist")
    ckpt = load_weights_only(path)
    model = ShapeClassifier(ClassifierConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    return model.to(device).eval()
