"""A class-conditional image set the project draws itself: 10 forms, each with its own colour, on textures.

    python -m miniature.shapes --out outputs/miniature/data --train_per_class 3000 --val_per_class 300

Writes an ImageFolder, OUT/{train,val}/<NN_form>/<index>.png. Classes come in colour pairs (disc and ring are
both red, square and frame green, ...), so the colour alone never names the class: a sample must get its form
right to be recognised. Position, size, rotation, colour jitter and the background (gradient, stripes, noise)
are random. Every image is drawn from its own generator seeded with (seed, split, class, index), so the same
seed gives byte-identical files whatever the counts or the order they are written in.
"""
from __future__ import annotations

import argparse
import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SUPERSAMPLE = 4  # forms are drawn at 4x and box-filtered down: anti-aliased edges
SPLITS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class ShapeClass:
    form: str
    hue: float  # in [0, 1)


CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("disc", 0.00), ShapeClass("ring", 0.00),  # red
    ShapeClass("square", 0.33), ShapeClass("frame", 0.33),  # green
    ShapeClass("triangle", 0.60), ShapeClass("star", 0.60),  # blue
    ShapeClass("plus", 0.15), ShapeClass("bar", 0.15),  # yellow
    ShapeClass("crescent", 0.82), ShapeClass("half_disc", 0.82),  # magenta
)


def class_dirs() -> list[str]:
    """Folder names, sorted as ImageFolder sorts them, so that folder i is class i."""
    return [f"{i:02d}_{c.form}" for i, c in enumerate(CLASSES)]


def rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Unit-radius points -> rotated by `angle`, scaled by r, centred at (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def regular(n: int, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(start + 2 * math.pi * i / n), math.sin(start + 2 * math.pi * i / n)) for i in range(n)]


def star_points() -> list[tuple[float, float]]:
    outer, inner = regular(5), regular(5, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, (tuple(0.45 * v for v in q) for q in inner)) for p in pair]


def box(w: float, h: float) -> list[tuple[float, float]]:
    return [(-w, -h), (w, -h), (w, h), (-w, h)]


def draw_form(draw: ImageDraw.ImageDraw, form: str, cx: float, cy: float, r: float, angle: float) -> None:
    """Fill 255 where the form is, 0 for its holes; (cx, cy, r) in supersampled pixels."""
    def poly(points, fill=255):
        draw.polygon(rotated(points, angle, cx, cy, r), fill=fill)

    def disc(x, y, rad, fill=255):
        draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=fill)

    if form in ("disc", "ring"):
        disc(cx, cy, r)
        if form == "ring":
            disc(cx, cy, 0.55 * r, fill=0)
    elif form in ("square", "frame"):
        poly(box(0.8, 0.8))
        if form == "frame":
            poly(box(0.42, 0.42), fill=0)
    elif form == "triangle":
        poly(regular(3))
    elif form == "star":
        poly(star_points())
    elif form == "plus":
        poly(box(1.0, 0.3))
        poly(box(0.3, 1.0))
    elif form == "bar":
        poly(box(1.0, 0.3))
    elif form == "crescent":
        disc(cx, cy, r)
        disc(cx + 0.5 * r * math.cos(angle), cy + 0.5 * r * math.sin(angle), 0.8 * r, fill=0)
    elif form == "half_disc":
        poly([(math.cos(t), math.sin(t) + 0.35) for t in np.linspace(math.pi, 2 * math.pi, 33)])
    else:
        raise ValueError(f"unknown form {form!r}")


def form_alpha(form: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) coverage in [0, 1] of one form at a random place, scale and rotation."""
    r = rng.uniform(0.2, 0.34) * size  # radius: 40-68% of the image across
    cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
    angle = rng.uniform(0, 2 * math.pi)
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw_form(ImageDraw.Draw(canvas), form, cx * SUPERSAMPLE, cy * SUPERSAMPLE, r * SUPERSAMPLE, angle)
    return np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float64) / 255.0


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) in [0, 1]: a dull random colour with a gradient, faint stripes and noise."""
    base = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.3, 0.8)))
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    t1, t2 = rng.uniform(0, 2 * math.pi, 2)
    gradient = (xx * math.cos(t1) + yy * math.sin(t1)) * rng.uniform(0, 0.35)
    stripes = np.sin(2 * math.pi * rng.uniform(1.5, 5) * (xx * math.cos(t2) + yy * math.sin(t2)) + rng.uniform(0, 6.3))
    texture = gradient + stripes * rng.uniform(0, 0.12)
    noise = rng.normal(0, rng.uniform(0, 0.05), (size, size, 3))
    return base + texture[..., None] + noise


def shape_colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue + rng.normal(0, 0.02)) % 1, rng.uniform(0.7, 1), rng.uniform(0.75, 1)))


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class `label` as (size, size, 3) uint8."""
    cls = CLASSES[label]
    bg = background(size, rng)
    alpha = form_alpha(cls.form, size, rng)[..., None]
    fg = shape_colour(cls.hue, rng) + rng.normal(0, 0.02, (size, size, 3))
    img = bg * (1 - alpha) + fg * alpha
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def image_rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], label, index])


def write_split(out: Path, split: str, per_class: int, size: int, seed: int, progress: bool = True) -> int:
    """Write OUT/split/<class>/<index>.png for every class; returns the number of images written."""
    dirs = class_dirs()
    jobs = [(label, i) for label in range(len(CLASSES)) for i in range(per_class)]
    for label, i in tqdm(jobs, desc=split, disable=not progress, dynamic_ncols=True):
        folder = out / split / dirs[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(label, size, image_rng(seed, split, label, i))).save(folder / f"{i:05d}.png")
    return len(jobs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write train/ and val/ into")
    p.add_argument("--train_per_class", type=int, default=3000, help="images per class in train/ (default %(default)s)")
    p.add_argument("--val_per_class", type=int, default=300, help="images per class in val/ (default %(default)s)")
    p.add_argument("--size", type=int, default=16, help="image side in pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the data set's seed (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.size < 8 or args.train_per_class < 1 or args.val_per_class < 0:
        p.error("--size must be >= 8, --train_per_class >= 1 and --val_per_class >= 0")
    return args


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    n = sum(write_split(out, split, count, args.size, args.seed, not args.quiet)
            for split, count in (("train", args.train_per_class), ("val", args.val_per_class)) if count)
    print(f"wrote {n} images of {args.size}x{args.size} in {len(CLASSES)} classes to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
