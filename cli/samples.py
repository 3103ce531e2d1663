"""The FID sample folder: which images, their names and random streams, resuming, and the final .npz.

    <output_path>/run.json                      the settings that decide the pixels; a rerun must match them
    <output_path>/images/<class>_<index>.png    one PNG per image, written atomically
    <output_path>/samples_<N>x<H>x<W>x3.npz     arr_0: uint8 (N, H, W, 3) in (class, index) order
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from utils.images import read_png

from .args import UsageError

SEED_STRIDE = 2**32  # --seed s uses streams s * 2**32 + index: seeds never share a stream


@dataclass(frozen=True)
class ImageKey:
    cls: int
    index: int

    @property
    def filename(self) -> str:
        return f"{self.cls:04d}_{self.index:04d}.png"


class MissingImagesError(UsageError):
    pass


def plan(classes: Iterable[int], per_class: int) -> list[ImageKey]:
    """Every image of the run, in the .npz order: class by class, index by index."""
    return [ImageKey(c, i) for c in classes for i in range(per_class)]


def shard(keys: Sequence[ImageKey], rank: int, world_size: int) -> list[ImageKey]:
    """Rank r's disjoint share (every world_size-th image, so that classes spread over the ranks)."""
    return list(keys[rank::world_size])


def image_seed(seed: int, key: ImageKey) -> int:
    """The seed of one image's own generator. As published (g_seed = index, for every class), --seed 0 gives
    image i of each class the stream of seed i, which reproduces the published sample set; its label is what
    differs between classes. An image thus depends on its class, --seed and index alone, never on its batch
    or its rank."""
    if not 0 <= seed < SEED_STRIDE or not 0 <= key.index < SEED_STRIDE:
        raise ValueError(f"seed {seed} and index {key.index} must be in 0..2**32-1")
    return seed * SEED_STRIDE + key.index


def pending(keys: Iterable[ImageKey], images: Path) -> list[ImageKey]:
    """The images not written yet (a PNG that exists is complete: they are written under a temporary name)."""
    return [k for k in keys if not (images / k.filename).is_file()]


def remove_temp_files(images: Path) -> int:
    """Delete the temporary files a killed run left behind (never a finished PNG); returns how many."""
    stale = [p for p in images.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return len(stale)


def check_settings(folder: Path, settings: dict) -> None:
    """Record the settings in run.json, or check that a resumed run uses the same ones."""
    path = folder / "run.json"
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
    if path.is_file():
        old = json.loads(path.read_text())
        changed = sorted(k for k in old.keys() | settings.keys() if old.get(k) != settings.get(k))
        if changed:
            diff = "; ".join(f"{k}: {old.get(k)} in the folder, {settings.get(k)} now" for k in changed)
            raise UsageError(f"{folder} holds images made with other settings ({diff}). Use another --output_path, "
                             "or the same settings to resume")
        return
    fd, tmp = tempfile.mkstemp(prefix=".run.json.", suffix=".tmp", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(settings, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def write_npz(images: Path, keys: Sequence[ImageKey], folder: Path) -> tuple[Path, tuple[int, ...]]:
    """Stream the PNGs into one .npz (arr_0, uint8 (N, H, W, 3)) without holding them all in memory.

    The zip entry has a fixed timestamp, so the same images give the same bytes. A missing or odd-sized image
    is an error that leaves every PNG in place.
    """
    paths = [images / k.filename for k in keys]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingImagesError(f"{len(missing)} of {len(paths)} images are missing (e.g. {missing[0]}): "
                                 "rerun the same command to generate them; finished images are kept")
    first = read_png(paths[0])
    shape = (len(paths), *first.shape)
    out = folder / f"samples_{'x'.join(map(str, shape))}.npz"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        entry = zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0))
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf, \
                zf.open(entry, "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            for p in paths:
                a = read_png(p)
                if a.shape != first.shape:
                    raise UsageError(f"{p} is {a.shape} but {paths[0]} is {first.shape}: the folder mixes runs")
                f.write(np.ascontiguousarray(a).tobytes())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out, shape
