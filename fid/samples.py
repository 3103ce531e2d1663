"""The FID sample folder: which images, their random streams, the finished batches, resuming, and the final .npz.

    <output_path>/run.json                       the settings that decide the pixels; a rerun must match them
    <output_path>/shards/<class>_<index>+<n>.npz   finished batches: image keys, token maps and uint8 pixels
    <output_path>/images/<class>_<index>.png     one PNG per image (--png, the published default)
    <output_path>/samples_<N>x<H>x<W>x3.npz      arr_0: uint8 (N, H, W, 3) in (class, index) order

Every file is written atomically (utils.files.atomic_write). A batch's PNGs are written before its shard, so a
shard says that its images are done, PNGs included; the .npz is assembled from the shards' raw bytes, never by
decoding PNGs. A rerun of the same command skips the images in shards, removes what a kill left behind (temporary
files), replaces damaged or missing PNGs of finished images from their shard, and regenerates the images of a
damaged shard.
"""
from __future__ import annotations

import functools
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from utils.errors import UsageError
from utils.files import atomic_write, remove_temp_files, sha256_file

log = logging.getLogger(__name__)
FAST_CHECK = "fast_check"  # run.json's record of the fast path's checks: not a setting
CHECKSUMS = ".checkpoint_sha256.json"  # the checkpoints' hashes, cached by file identity
# Image i of --seed s uses generator seed s * 2**16 + i: distinct for every (seed, index) and below 2**32, which
# torch's CPU generator keeps (it drops higher bits; CUDA's keeps 64), so a seed means the same on both devices
SEED_STRIDE = 2**16  # the most images per class, and the number of --seed values
MAX_SEED, MAX_PER_CLASS = SEED_STRIDE - 1, SEED_STRIDE
PNG_SIGNATURE, PNG_END = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True, order=True)
class ImageKey:
    cls: int
    index: int

    @property
    def name(self) -> str:
        return f"{self.cls:04d}_{self.index:04d}"

    @property
    def filename(self) -> str:
        return f"{self.name}.png"


@dataclass
class Batch:
    """Finished images: their keys, token maps (B, L) and pixels (B, H, W, 3) uint8, on the CPU."""
    keys: list[ImageKey]
    tokens: np.ndarray
    pixels: np.ndarray


class MissingImagesError(UsageError):
    pass


class SampleWriteError(OSError):
    """Writing a finished image failed (full disk, permissions, ...); the message names the file."""


def plan(classes: Iterable[int], per_class: int) -> list[ImageKey]:
    """Every image of the run, in the .npz order: class by class, index by index."""
    return [ImageKey(c, i) for c in classes for i in range(per_class)]


def rank_keys(keys: Sequence[ImageKey], rank: int, world_size: int) -> list[ImageKey]:
    """Rank r's disjoint share (every world_size-th image, so that classes spread over the ranks)."""
    return list(keys[rank::world_size])


def image_seed(seed: int, key: ImageKey) -> int:
    """The seed of one image's own generator. As published (g_seed = index, for every class), --seed 0 gives
    image i of each class the stream of seed i, which reproduces the published sample set; its label is what
    differs between classes. An image thus depends on its class, --seed and index alone, never on its batch
    or its rank. Every (seed, index) gets its own 32-bit seed (see SEED_STRIDE)."""
    if not 0 <= seed <= MAX_SEED or not 0 <= key.index < MAX_PER_CLASS:
        raise ValueError(f"seed {seed} must be in 0..{MAX_SEED} and index {key.index} in 0..{MAX_PER_CLASS - 1}")
    return seed * SEED_STRIDE + key.index


def png_is_whole(path: Path) -> bool:
    """A cheap check that a PNG is complete: its signature at the start and its IEND chunk at the end."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if f.seek(0, 2) < len(PNG_SIGNATURE) + len(PNG_END):
                return False
            f.seek(-len(PNG_END), 2)
            return head == PNG_SIGNATURE and f.read() == PNG_END
    except OSError:
        return False


def write_png(pixels_HW3: np.ndarray, path: Path) -> None:
    """zlib level 1: the same pixels as PIL's default level 6, encoded twice as fast for ~15% more bytes."""
    try:
        atomic_write(path, lambda f: Image.fromarray(pixels_HW3).save(f, format="PNG", compress_level=1))
    except OSError as e:
        raise SampleWriteError(f"could not write {path}: {e.strerror or e}") from e


class SampleFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.images, self.shards, self.run_json = self.root / "images", self.root / "shards", self.root / "run.json"

    # ---- set-up -----------------------------------------------------------------------------------------
    def prepare(self) -> list[Path]:
        """Create the folders; remove the temporary files an interrupted run left (returns them)."""
        for d in (self.root, self.shards, self.images):
            d.mkdir(parents=True, exist_ok=True)
        ours = [(self.root, n) for n in (self.run_json.name, CHECKSUMS, "samples_*.npz")]  # never a user's file
        ours += [(self.shards, "*.npz"), (self.images, "*.png")]
        return [p for d, name in ours for p in remove_temp_files(d, name)]

    def read_settings(self) -> dict | None:
        if not self.run_json.is_file():
            return None
        try:
            settings = json.loads(self.run_json.read_text())
            if not isinstance(settings, dict):
                raise ValueError("not a JSON object")
            return settings
        except (ValueError, OSError) as e:
            raise UsageError(f"{self.run_json} is unreadable ({e}): it records the settings of the images in "
                             f"{self.root}; restore it, or delete it if you know they were made with this very "
                             "command (or use another --output_path)") from None

    def check_settings(self, settings: dict, binding: bool = True) -> None:
        """Record the settings in run.json, or check that a resumed run uses the same ones. Not `binding` (no
        finished image yet): a rerun with corrected flags replaces them."""
        settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
        old = self.read_settings() if binding else None  # nothing made with the old ones: replace them
        if old is None:
            text = json.dumps(settings, indent=1, sort_keys=True)
            atomic_write(self.run_json, lambda f: f.write(text.encode()))
            return
        changed = sorted(k for k in old.keys() | settings.keys()
                         if comparable(k, old.get(k)) != comparable(k, settings.get(k)))
        if changed:
            diff = "; ".join(describe_change(k, old.get(k), settings.get(k)) for k in changed)
            raise UsageError(f"{self.root} holds images made with other settings ({diff}). Use another "
                             "--output_path, or the same settings to resume")

    def record_fast_check(self, entries: list[dict]) -> None:
        """Append to run.json's list of the fast path's checks (kept across resumed runs)."""
        settings = self.read_settings() or {}
        old = settings.get(FAST_CHECK)
        settings[FAST_CHECK] = (old if isinstance(old, list) else []) + entries
        text = json.dumps(settings, indent=1, sort_keys=True)
        atomic_write(self.run_json, lambda f: f.write(text.encode()))

    # ---- what is done -------------------------------------------------------------------------------------
    def done(self, remove_damaged: bool = False) -> dict[ImageKey, tuple[Path, int]]:
        """key -> (shard, row) of every finished image. A shard that cannot be read is reported and, with
        remove_damaged (one process only), deleted, so that its images are generated again."""
        found: dict[ImageKey, tuple[Path, int]] = {}
        for path in sorted(self.shards.glob("*.npz")) if self.shards.is_dir() else []:
            try:
                keys, n = shard_keys(path)
                if keys.ndim != 2 or keys.shape != (n, 2):
                    raise ValueError(f"keys {keys.shape} for {n} images")
            except Exception as e:  # zip, npy or shape errors: a damaged file
                log.warning(f"shard {path} is damaged ({type(e).__name__}: {e}); its images will be generated again")
                if remove_damaged:
                    path.unlink(missing_ok=True)
                continue
            for row, (c, i) in enumerate(keys.tolist()):
                found[ImageKey(c, i)] = (path, row)
        return found

    # ---- writing ------------------------------------------------------------------------------------------
    def write(self, batch: Batch, png: bool) -> Path:
        """PNGs first (if asked), then the shard that records the batch as done."""
        if png:
            self.images.mkdir(parents=True, exist_ok=True)
            for key, pixels in zip(batch.keys, batch.pixels):
                write_png(pixels, self.images / key.filename)
        path = self.shards / f"{batch.keys[0].name}+{len(batch.keys)}.npz"
        keys = np.array([[k.cls, k.index] for k in batch.keys], dtype=np.int64)
        try:
            atomic_write(path, lambda f: np.savez(f, keys=keys, tokens=batch.tokens, pixels=batch.pixels))
        except OSError as e:
            raise SampleWriteError(f"could not write {path} (images {batch.keys[0].name} ..): {e.strerror or e}") from e
        return path

    def repair_pngs(self, keys: Iterable[ImageKey], done: dict[ImageKey, tuple[Path, int]]) -> list[Path]:
        """Write the PNG of every finished image whose PNG is missing or damaged, from its shard's pixels."""
        bad = [k for k in keys if k in done and not png_is_whole(self.images / k.filename)]
        if bad:
            self.images.mkdir(parents=True, exist_ok=True)
        for k in bad:
            path, row = done[k]
            write_png(load_pixels(path)[row], self.images / k.filename)
        return [self.images / k.filename for k in bad]

    def assemble(self, keys: Sequence[ImageKey], done: dict[ImageKey, tuple[Path, int]]) -> tuple[Path, tuple]:
        """Stream the finished images, in plan order, into one .npz (arr_0, uint8 (N, H, W, 3)) from the shards.

        The zip entry has a fixed timestamp, so the same images give the same bytes. A missing image is an
        error that keeps everything finished.
        """
        missing = [k for k in keys if k not in done]
        if missing:
            raise MissingImagesError(f"{len(missing)} of {len(keys)} images are missing (e.g. {missing[0].name}): "
                                     "rerun the same command to generate them; finished images are kept")
        cached = functools.lru_cache(maxsize=64)(load_pixels)  # ~12 MB a shard of 64 images at 256 px
        first = cached(done[keys[0]][0]).shape[1:]
        shape = (len(keys), *first)
        out = self.root / f"samples_{'x'.join(map(str, shape))}.npz"

        def write(f) -> None:
            entry = zipfile.ZipInfo("arr_0.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf, \
                    zf.open(entry, "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": shape})
                for k in keys:
                    path, row = done[k]
                    pixels = cached(path)
                    if pixels.shape[1:] != first:
                        raise UsageError(f"{path} holds {pixels.shape[1:]} images but {done[keys[0]][0]} "
                                         f"{first}: the folder mixes runs")
                    member.write(np.ascontiguousarray(pixels[row]).tobytes())

        atomic_write(out, write)
        return out, shape


def shard_keys(path: Path) -> tuple[np.ndarray, int]:
    """A shard's keys and its image count, read from its pixels' .npy header (the pixels themselves stay on disk)."""
    with np.load(path) as z:
        keys = z["keys"]
    with zipfile.ZipFile(path) as zf, zf.open("pixels.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = header(f)
    return keys, shape[0]


def load_pixels(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return z["pixels"]


def comparable(key: str, value):
    """What must match on resume: the weights behind the checkpoints (their hashes), not the files' names; not
    the record of the fast path's checks (FAST_CHECK)."""
    if key == FAST_CHECK:
        return None
    if key == "checkpoints" and isinstance(value, list):
        return [(c.get("role"), c.get("sha256")) if isinstance(c, dict) else c for c in value]
    return value


def describe_change(key: str, old, new) -> str:
    if key == "checkpoints" and isinstance(old, list) and isinstance(new, list):
        pairs = [f"{a.get('role')}: {a.get('file')} sha256 {a.get('sha256', '?')[:16]} in the folder, "
                 f"{b.get('file')} sha256 {b.get('sha256', '?')[:16]} now" for a, b in zip(old, new) if a != b]
        if len(old) == len(new) and pairs:
            return "weights differ (" + "; ".join(pairs) + ")"
    return f"{key}: {old} in the folder, {new} now"


def checkpoint_identity(roles: Sequence[str], paths: Sequence[Path], cache: Path) -> list[dict]:
    """[{role, file, sha256}] of the checkpoints: what identifies the weights behind the images. Hashes are
    cached in `cache` by (resolved path, size, mtime, inode, ctime), so a rerun does not read 8 GB again."""
    try:
        known = json.loads(cache.read_text()) if cache.is_file() else {}
    except (ValueError, OSError):
        known = {}
    out = []
    for role, path in zip(roles, paths):
        real = Path(path).resolve()
        stat = real.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
        entry = known.get(str(real))
        if not (isinstance(entry, list) and entry[:-1] == stamp):
            log.info(f"hashing {real} ({stat.st_size / 2**30:.2f} GB) to record which weights made the images")
            entry = known[str(real)] = [*stamp, sha256_file(real)]
        out.append({"role": role, "file": real.name, "sha256": entry[-1]})
    text = json.dumps(known, indent=1, sort_keys=True)
    atomic_write(cache, lambda f: f.write(text.encode()))
    return out
