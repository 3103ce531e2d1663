"""ImageNet-style image folders (torchvision's ImageFolder) and VAR's training transform (torchvision's v2 ops).

Every random choice of a sample (crop offset, flip, label drop) comes from a numpy Generator seeded with
(seed, epoch, image index), not from torch's global generator as torchvision's random transforms draw: the same
image gets the same augmentation whichever rank, worker, batch size or resumed run loads it, so training is
reproducible across world sizes and restarts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode

from utils.errors import UsageError
from utils.images import ImageFileError, open_rgb_as_stored


class DataError(UsageError, ValueError):
    """A data folder or image that cannot be used, with its path in the message."""


def check_image_folder(root: Path) -> None:
    """The errors torchvision would raise as FileNotFoundError, as DataErrors that say what was expected."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    if not any(d.is_dir() for d in os.scandir(root)):
        raise DataError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>)")


@dataclass
class ImageTransform:
    """Resize the short side to round(1.125 * size) with Lanczos, crop size x size (random for training, centred
    otherwise), optional flip, scale to [-1, 1]: the published recipe, pixel for pixel."""
    size: int
    train: bool = True
    hflip: bool = False

    def __call__(self, img: Image.Image, rng: np.random.Generator | None) -> torch.Tensor:
        img = TF.resize(img, [round(1.125 * self.size)], interpolation=InterpolationMode.LANCZOS)
        if self.train:
            w, h = img.size
            top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
            img = TF.crop(img, top, left, self.size, self.size)
        else:
            img = TF.center_crop(img, [self.size, self.size])
        if self.train and self.hflip and rng.random() < 0.5:
            img = TF.horizontal_flip(img)
        # ToTensor's division by 255, as published (v2's to_dtype(scale=True) multiplies by 1/255: an ulp away)
        return TF.pil_to_tensor(img).to(torch.float32).div_(255).mul_(2).sub_(1)


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder (classes from sorted folder names, its extensions and loader), indexed by
    (image index, epoch): returns (image in [-1, 1], class id, drop the label?)."""

    def __init__(self, root: str | os.PathLike, transform: ImageTransform, seed: int = 0, cond_drop: float = 0.0):
        root = Path(root)
        check_image_folder(root)
        super().__init__(str(root), allow_empty=True, loader=open_rgb_as_stored)  # 16-bit images scaled, not clipped
        if not self.samples:
            raise DataError(f"data folder {root} has {len(self.classes)} class folders but no images "
                            f"(extensions {', '.join(IMG_EXTENSIONS)})")
        self.root, self.transform, self.seed, self.cond_drop = root, transform, seed, cond_drop

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, bool]:
        index, epoch = key
        rng = np.random.default_rng((self.seed, epoch, index))
        path, label = self.samples[index]
        try:
            x = self.transform(self.loader(path), rng)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated or corrupt image data
            what = str(e) if isinstance(e, ImageFileError) else \
                f"{path} cannot be read as an image ({type(e).__name__}: {e})"
            raise DataError(f"{what}: replace it with a "
                            "readable image (removing it changes the data order, which a resumed run refuses), then "
                            "rerun the same command with --resume auto") from None
        drop = self.transform.train and bool(rng.random() < self.cond_drop)
        return x, label, drop

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        """A DataLoader's batch: the samples, or [the DataError] of an unreadable image, handed over as data (an
        exception raised in a worker process reaches the main process as traceback text); `collate` and
        `checked` pass it on and raise it there."""
        try:
            return [self[key] for key in keys]
        except DataError as e:
            return [e]


def collate(samples: list) -> tuple | DataError:
    return samples[0] if isinstance(samples[0], DataError) else default_collate(samples)


def checked(batches: Iterable) -> Iterator[tuple]:
    """The collated batches of a DataLoader over an ImageFolder; raises the DataError of an unreadable image."""
    for batch in batches:
        if isinstance(batch, DataError):
            try:
                raise batch
            finally:  # the error's traceback holds this frame: no cycle, so the loader's workers stop at once
                del batch
        yield batch


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """`root/<class>/<image>`: classes sorted by folder name -> ids 0..C-1, and (path, id) pairs."""
    root = Path(root)
    check_image_folder(root)
    classes, class_to_idx = torchvision.datasets.folder.find_classes(str(root))
    samples = torchvision.datasets.folder.make_dataset(str(root), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(f"data folder {root} has {len(classes)} class folders but no images "
                        f"(extensions {', '.join(IMG_EXTENSIONS)})")
    return classes, samples
