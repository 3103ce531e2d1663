"""The batch of jobs that train on images directly (the VQVAE, the miniature's classifier)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class ImageBatch:
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    labels_B: torch.Tensor  # class ids (the Trainer's evaluation counts images by it)


def image_batches(device: torch.device) -> Callable[[tuple], ImageBatch]:
    return lambda collated: ImageBatch(collated[0].to(device), collated[1].to(device))
