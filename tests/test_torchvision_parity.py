"""Our image code equals torchvision's, which the published scripts use, byte for byte: the saved grid, the training
transform and the image folder's order. torchvision is imported by the fixture, not at collection, because its
import (torch._dynamo with it) costs every test process about 2 s."""
import importlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import IMG_EXTENSIONS, ImageFolder, ImageTransform, scan_image_folder
from utils.images import save_grid


@pytest.fixture(scope="module")
def tv():
    return importlib.import_module("torchvision")


@pytest.mark.parametrize("batch, nrow, padding, pad_value, upscale, name", [
    (1, 8, 2, 1.0, 1, "a.png"), (5, 2, 0, 1.0, 1, "b.png"), (7, 3, 1, 0.25, 2, "c.png"), (8, 8, 3, 0.0, 1, "d.jpg")])
def test_save_grid_is_torchvisions_save_image_of_make_grid(tv, tmp_path, batch, nrow, padding, pad_value, upscale,
                                                           name):
    images = torch.rand(batch, 3, 5, 4, generator=torch.Generator().manual_seed(batch))
    images[0, 0, 0, 0], images[-1, 1, 1, 1] = -0.1, 1.2  # out of range: clamped alike
    ours, theirs = tmp_path / f"ours_{name}", tmp_path / f"theirs_{name}"
    save_grid(images, ours, nrow=nrow, padding=padding, pad_value=pad_value, upscale=upscale)
    grid = tv.utils.make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    tv.utils.save_image(grid.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2), theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def torchvision_transform(tv, t: ImageTransform, img: Image.Image, rng: np.random.Generator | None) -> torch.Tensor:
    """The same recipe in torchvision's v2 ops (the random crop's offsets and flip drawn as ours draws them)."""
    TF = importlib.import_module("torchvision.transforms.v2.functional")
    img = TF.resize(img, [round(1.125 * t.size)], interpolation=tv.transforms.InterpolationMode.LANCZOS)
    if t.train:
        w, h = img.size
        top, left = int(rng.integers(0, h - t.size + 1)), int(rng.integers(0, w - t.size + 1))
        img = TF.crop(img, top, left, t.size, t.size)
    else:
        img = TF.center_crop(img, [t.size, t.size])
    if t.train and t.hflip and rng.random() < 0.5:
        img = TF.horizontal_flip(img)
    return tv.transforms.functional.to_tensor(img).mul_(2).sub_(1)


# portrait, landscape, square, already at the resized size (9), margins of 3 and 7 (centres 1.5, 3.5: half to even)
SIZES = [(20, 31), (31, 20), (17, 17), (9, 9), (11, 9), (9, 15), (40, 11), (11, 40), (23, 12)]


@pytest.mark.parametrize("train, hflip", [(False, False), (True, False), (True, True)])
def test_training_transform_is_torchvisions(tv, train, hflip):
    rng = np.random.default_rng(0)
    t = ImageTransform(8, train=train, hflip=hflip)
    for w, h in SIZES:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for seed in range(4):
            ours = t(img, np.random.default_rng(seed))
            theirs = torchvision_transform(tv, t, img, np.random.default_rng(seed))
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), (w, h, seed)


def test_image_folder_order_is_torchvisions(tv, tmp_path):
    """Classes sorted by name; files of any case of torchvision's extensions, sub-folders and linked folders
    followed, sorted folder by folder; other files and empty classes skipped."""
    root = tmp_path / "data"
    for path in ["b/2.JPEG", "b/10.png", "b/sub/z.Jpg", "b/sub/a.webp", "b/a b.ppm", "a/x.tiff", "a/notes.txt",
                 "a/deep/er/y.bmp", "c.png", "empty/.keep", "B/q.pgm", "elsewhere/m.tif"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")
    os.symlink(root / "elsewhere", root / "a" / "linked")
    assert IMG_EXTENSIONS == tv.datasets.folder.IMG_EXTENSIONS
    theirs = tv.datasets.ImageFolder(str(root), allow_empty=True, loader=lambda p: p)
    classes, samples = scan_image_folder(root)
    assert classes == theirs.classes and samples == theirs.samples
    data = ImageFolder(root, ImageTransform(8))
    assert data.classes == theirs.classes and data.samples == theirs.samples and len(data) == len(theirs)
