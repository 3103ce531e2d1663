"""ImageNet-style image folders and VAR's training transforms, written with PIL and numpy.

Every random choice of a sample (crop offset, flip, label drop) comes from a numpy Generator seeded with
(seed, epoch, image index): the same image gets the same augmentation whichever rank, worker, batch size
or resumed run loads it, so training is reproducible across world sizes and restarts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """A data folder that cannot be used, with the folder in the message."""


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """`root/<class>/<image>`: classes sorted by folder name -> ids 0..C-1, and (path, id) pairs."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    if not classes:
        raise DataError(f"data folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    samples = []
    for i, name in enumerate(classes):
        files = sorted(f for f in (root / name).rglob("*") if f.suffix.lower() in IMG_EXTENSIONS and f.is_file())
        samples += [(str(f), i) for f in files]
    if not samples:
        raise DataError(f"data folder {root} has {len(classes)} class folders but no images "
                        f"(extensions {', '.join(IMG_EXTENSIONS)})")
    return classes, samples


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Short side to `size` with Lanczos, aspect ratio kept (torchvision's Resize(int) arithmetic)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    return img.resize((size, new_long) if w <= h else (new_long, size), Image.LANCZOS)


def crop_box(w: int, h: int, size: int, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    """A random (rng) or centred (rng None) size x size window."""
    if rng is None:
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    else:
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return left, top, left + size, top + size


@dataclass
class ImageTransform:
    """Resize the short side to round(1.125 * size), crop size x size, optional flip, scale to [-1, 1]."""
    size: int
    train: bool = True
    hflip: bool = False

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        img = resize_short_side(img.convert("RGB"), round(1.125 * self.size))
        img = img.crop(crop_box(*img.size, self.size, rng if self.train else None))
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if self.train and self.hflip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).mul(2).sub(1)


class ImageFolder(torch.utils.data.Dataset):
    """Indexed by (image index, epoch): returns (image in [-1, 1], class id, drop the label?)."""

    def __init__(self, root: str | os.PathLike, transform: ImageTransform, seed: int = 0, cond_drop: float = 0.0):
        self.root, self.transform, self.seed, self.cond_drop = Path(root), transform, seed, cond_drop
        self.classes, self.samples = scan_image_folder(root)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, bool]:
        index, epoch = key
        rng = np.random.default_rng((self.seed, epoch, index))
        path, label = self.samples[index]
        with Image.open(path) as img:
            x = self.transform(img, rng)
        drop = self.transform.train and bool(rng.random() < self.cond_drop)
        return x, label, drop
