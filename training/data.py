"""ImageNet-style image folders and VAR's training transform: torchvision's ImageFolder and transforms, pixel for
pixel, in PIL and numpy (importing torchvision costs every training process, and each of its ranks, ~2 s).

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
from PIL import Image
from torch.utils.data import Dataset, default_collate

from utils.errors import UsageError
from utils.images import ImageFileError, open_rgb_as_stored


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class DataError(UsageError, ValueError):
    """A data folder or image that cannot be used, with its path in the message."""


def check_image_folder(root: Path) -> None:
    """A missing folder or one without class sub-folders, as DataErrors that say what was expected."""
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
        img = resize_short_side(img, round(1.125 * self.size))
        w, h = img.size
        if self.train:
            top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
        else:  # torchvision's centre: Python's round, half to even
            top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        if self.train and self.hflip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # ToTensor's division by 255, as published (v2's to_dtype(scale=True) multiplies by 1/255: an ulp away)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).to(torch.float32).div_(255).mul_(2).sub_(1)


def resize_short_side(img: Image.Image, short: int) -> Image.Image:
    """Lanczos resize to a short side of `short`, the long side truncated (torchvision's Resize(short))."""
    w, h = img.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    return img if size == (w, h) else img.resize(size, Image.Resampling.LANCZOS)


class ImageFolder(Dataset):
    """`root/<class>/<image>` as torchvision's ImageFolder reads it (see scan_image_folder), indexed by
    (image index, epoch): returns (image in [-1, 1], class id, drop the label?)."""

    def __init__(self, root: str | os.PathLike, transform: ImageTransform, seed: int = 0, cond_drop: float = 0.0):
        self.root, self.transform, self.seed, self.cond_drop = Path(root), transform, seed, cond_drop
        self.classes, self.samples = scan_image_folder(self.root)
        self.loader = open_rgb_as_stored  # 16-bit images scaled, not clipped

    def __len__(self) -> int:
        return len(self.samples)

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
    """`root/<class>/<image>`: classes sorted by folder name -> ids 0..C-1, and (path, id) pairs of the files with
    an image extension (any case), folder by folder in sorted order, sub-folders and links followed: torchvision's
    ImageFolder order."""
    root = Path(root)
    check_image_folder(root)
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    samples = [(os.path.join(folder, name), label)
               for label, c in enumerate(classes)
               for folder, _, names in sorted(os.walk(os.path.join(root, c), followlinks=True))
               for name in sorted(names) if name.lower().endswith(IMG_EXTENSIONS)]
    if not samples:
        raise DataError(f"data folder {root} has {len(classes)} class folders but no images "
                        f"(extensions {', '.join(IMG_EXTENSIONS)})")
    return classes, samples
