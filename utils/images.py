"""Image files: uint8 conversion, atomic PNG writes, grids, and loading a square input image."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .files import atomic_write


ROUNDING = ("truncate", "nearest")


def quantize(images_B3HW: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """Images in [0, 1] -> (B, H, W, 3) uint8 on their device. "truncate": (x * 255).astype(uint8), as the
    published FID sampling script converts; "nearest": x * 255 + 0.5, as torchvision's save_image does."""
    if rounding not in ROUNDING:
        raise ValueError(f"rounding must be one of {ROUNDING}, got {rounding!r}")
    x = images_B3HW.detach().float().mul(255)
    if rounding == "nearest":
        x = x.add_(0.5)
    return x.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # on the GPU: the host only copies


def to_uint8(images_B3HW: torch.Tensor, rounding: str = "nearest") -> np.ndarray:
    """Images in [0, 1] -> (B, H, W, 3) uint8 numpy (see quantize)."""
    return quantize(images_B3HW, rounding).cpu().numpy()


def image_format(path: str | os.PathLike) -> str | None:
    """PIL's format for a file name's suffix ('.png' -> 'PNG', '.jpg' -> 'JPEG'), or None if PIL cannot write it."""
    Image.init()
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    return fmt if fmt in Image.SAVE else None


def make_grid(images_B3HW: torch.Tensor, nrow: int = 8, padding: int = 0, pad_value: float = 1.0) -> torch.Tensor:
    """Images (B, 3, H, W) as one (3, H', W') picture, `nrow` per row, `padding` pixels of `pad_value` around and
    between them; one image is returned as it is. The layout of torchvision's make_grid, without importing it
    (torchvision's import costs every script a second or two)."""
    if images_B3HW.dim() != 4 or images_B3HW.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images_B3HW.shape)}")
    if images_B3HW.shape[0] == 1:
        return images_B3HW[0]
    B, C, H, W = images_B3HW.shape
    cols = min(nrow, B)
    rows = -(-B // cols)
    h, w = H + padding, W + padding
    grid = images_B3HW.new_full((C, rows * h + padding, cols * w + padding), pad_value)
    for k in range(B):
        y, x = divmod(k, cols)
        grid[:, y * h + padding:(y + 1) * h, x * w + padding:(x + 1) * w] = images_B3HW[k]
    return grid


def save_grid(images_B3HW: torch.Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 0,
              pad_value: float = 1.0, upscale: int = 1) -> None:
    """Images in [0, 1] as one grid, `nrow` per row (make_grid; rounded to nearest as torchvision's save_image),
    optionally enlarged `upscale` times (nearest), written atomically in the format of the suffix (PNG if none)."""
    grid = make_grid(images_B3HW.detach().float().cpu(), nrow=nrow, padding=padding, pad_value=pad_value)
    if upscale > 1:
        grid = grid.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
    pixels = quantize(grid.unsqueeze(0), "nearest")[0].numpy()
    fmt = image_format(path) or "PNG"
    atomic_write(path, lambda f: Image.fromarray(pixels).save(f, format=fmt))


def read_png(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit (and 32-bit integer) grey: convert() clips at 255


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grey scaled to 8 bits (x / 257, rounded) rather than clipped at 255 as PIL's convert() does."""
    if im.mode not in WIDE_MODES:
        return im
    x = np.asarray(im).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(x / 257), 0, 255).astype(np.uint8), "L")


def open_rgb(path: str | os.PathLike, upright: bool = True) -> Image.Image:
    """An image file as 8-bit RGB, decoded in full: 16-bit images scaled (not clipped), and with `upright`, turned
    as its EXIF orientation says (as viewers show phone photos). Errors are ValueErrors naming the file."""
    return to_8bit(open_image(path, upright)).convert("RGB")


class ImageFileError(ValueError):
    """An image file that cannot be decoded; the message names the file and why."""


def open_image(path: str | os.PathLike, upright: bool = True) -> Image.Image:
    """An image file decoded in full, in its own mode (see open_rgb)."""
    path = Path(path)
    if path.is_dir():
        raise ImageFileError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im) if upright else im.copy()
    except FileNotFoundError:
        raise ImageFileError(f"{path} does not exist") from None
    except Image.DecompressionBombError as e:
        raise ImageFileError(f"{path} is too large to decode safely ({e}); resize it") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL: unidentified, truncated or corrupt image data
        raise ImageFileError(f"{path} cannot be read as an image ({type(e).__name__}: {e})") from None


def open_rgb_as_stored(path: str | os.PathLike) -> Image.Image:
    """open_rgb without the EXIF turn: the pixels as stored, as torchvision's loader gives them (training data)."""
    return open_rgb(path, upright=False)


def square(im: Image.Image, size: int, resample: int) -> Image.Image:
    """Centre-crop to a square, then resize to size x size."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((size, size), resample)


def load_image(path: str | os.PathLike, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """An image file (open_rgb: upright, 8-bit RGB) as (1, 3, size, size) in [-1, 1] (centre crop + bicubic
    resize), and its upright (w, h): the picture a viewer shows, in whose pixels a mask or box is drawn."""
    rgb = open_rgb(path)
    x = torch.from_numpy(np.asarray(square(rgb, size, Image.BICUBIC)).copy()).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1).unsqueeze(0), rgb.size


def load_mask(path: str | os.PathLike, original_size: tuple[int, int], size: int) -> torch.Tensor:
    """A mask PNG the size of the input image (non-zero = generate) -> (1, size, size) bool, cropped alike."""
    im = open_image(path)
    mask = Image.fromarray(np.asarray(im) != 0).convert("L") if im.mode in WIDE_MODES else im.convert("L")
    if mask.size != tuple(original_size):
        raise ValueError(f"mask {path} is {mask.size[0]}x{mask.size[1]} but the image is "
                         f"{original_size[0]}x{original_size[1]}: they must have the same size")
    return mask_to_tensor(mask, size)


def box_to_mask(box: tuple[int, int, int, int], original_size: tuple[int, int], size: int) -> torch.Tensor:
    """A box x0,y0,x1,y1 in the input image's pixels (x1, y1 exclusive) -> (1, size, size) bool, cropped alike."""
    (x0, y0, x1, y1), (w, h) = box, original_size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                         "(pixels of the input image)")
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (x0, y0, x1, y1))
    return mask_to_tensor(mask, size)


def mask_to_tensor(mask: Image.Image, size: int) -> torch.Tensor:
    # BOX resampling and `> 0`: a pixel of the resized mask is set if any source pixel under it is
    small = np.asarray(square(mask, size, Image.BOX))
    return torch.from_numpy(small > 0).unsqueeze(0)
