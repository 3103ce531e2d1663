"""Zero-shot inpainting, outpainting and class-conditional editing (the CoDe paper, Fig. 7).

The image is encoded into its own K token maps. At every scale, the tokens outside the mask are taken from
those maps and only the tokens inside are generated (the loop's `TokenEdit` hook), by one model or a CoDe
chain. Inpainting masks a hole, outpainting everything but a kept region, class-conditional editing masks
an object and asks for another label. A token is generated if any pixel of its area is in the mask. Pixels
outside the mask come out as the VQVAE's reconstruction of the image, not the image itself.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from models import VAR, VQVAE

from .decoder import CollaborativeDecoder
from .loop import TokenEdit

RANGE_SLACK = 1e-3  # a resize's overshoot or float rounding just outside [-1, 1] is fine


def token_masks(mask_BHW: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """Pixel mask (B, H, W), True = generate -> per scale (B, p*p) bool: True if any pixel under the token is.

    Area downsampling averages over each token's pixels (overlapping bins when p does not divide H), so > 0
    means "any pixel of its area".
    """
    m = mask_BHW.to(torch.float32).unsqueeze(1)
    return [F.interpolate(m, size=(p, p), mode="area").flatten(1) > 0 for p in patch_nums]


def box_mask(size: int, box: tuple[int, int, int, int], batch: int = 1) -> torch.Tensor:
    """(batch, size, size) bool, True inside the box x0, y0, x1, y1 (x1, y1 exclusive). `~` it to outpaint."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    mask[:, y0:y1, x0:x1] = True
    return mask


@torch.no_grad()
def make_edit(vae: VQVAE, image_B3HW: torch.Tensor, mask_BHW: torch.Tensor) -> TokenEdit:
    """The source's token maps and the per-scale masks. Image in [-1, 1], (B or 1, 3, S, S); mask (B or 1, S, S)."""
    S = vae.config.image_size
    if image_B3HW.ndim != 4 or tuple(image_B3HW.shape[1:]) != (3, S, S):
        raise ValueError(f"image must be (B, 3, {S}, {S}) in [-1, 1] for this VQVAE, got {tuple(image_B3HW.shape)}")
    if not image_B3HW.is_floating_point():
        raise ValueError(f"image must be floats in [-1, 1], got {image_B3HW.dtype} (uint8 pixels: x / 127.5 - 1)")
    if not torch.isfinite(image_B3HW).all():
        raise ValueError("image has NaN or infinite values; it must be floats in [-1, 1]")
    lo, hi = image_B3HW.min().item(), image_B3HW.max().item()
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        hint = " (pixels in 0..255: x / 127.5 - 1)" if hi > 2 else ""
        raise ValueError(f"image must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]{hint}")
    if mask_BHW.ndim != 3 or tuple(mask_BHW.shape[1:]) != (S, S):
        raise ValueError(f"mask must be (B, {S}, {S}) bool, True = generate, got {tuple(mask_BHW.shape)}")
    B = max(image_B3HW.shape[0], mask_BHW.shape[0])
    w = vae.quant_conv.weight
    image = image_B3HW.to(device=w.device, dtype=w.dtype).expand(B, -1, -1, -1)
    tokens = vae.img_to_tokens(image)
    masks = token_masks(mask_BHW.to(w.device).expand(B, -1, -1), vae.patch_nums)
    return TokenEdit(tokens, masks)


def expand_edit(edit: TokenEdit, batch: int) -> TokenEdit:
    """One source for a batch of `batch` edits (e.g. several labels or seeds)."""
    if edit.tokens[0].shape[0] == batch:
        return edit
    if edit.tokens[0].shape[0] != 1:
        raise ValueError(f"an edit of {edit.tokens[0].shape[0]} images cannot serve a batch of {batch}")
    return TokenEdit([t.expand(batch, -1) for t in edit.tokens], [m.expand(batch, -1) for m in edit.masks])


@torch.no_grad()
def inpaint(vae: VQVAE, models: Sequence[VAR], draft_steps: int | Sequence[int], image: torch.Tensor,
            mask: torch.Tensor, labels, **kwargs):
    """Regenerate the masked part of `image` (in [-1, 1]) for `labels`; returns images in [0, 1].

    `models` and `draft_steps` as for `CollaborativeDecoder` ([var] and [] for plain VAR, [drafter, refiner]
    and N for CoDe); other arguments (cfg, top_k, seed, return_tokens, ...) as for `CollaborativeDecoder.__call__`.
    `labels`: a class id or a list / tensor of them; one image and mask may serve several labels.
    """
    if isinstance(labels, int):
        labels = [labels] * max(image.shape[0], mask.shape[0])
    edit = expand_edit(make_edit(vae, image, mask), len(labels))
    return CollaborativeDecoder(vae, models, draft_steps)(labels, edit=edit, **kwargs)
