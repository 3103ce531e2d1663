"""What the VAR training scripts share: teacher-forcing batches from the token maps of a frozen VQVAE, and the
checks of the models they load (train_drafter.py, train_refiner.py, train_var.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models import VAR, VQVAE, check_compatible

from .config import ConfigError
from .data import DataError, ImageFolder


@dataclass
class Batch:
    labels_B: torch.Tensor  # class ids, dropped ones replaced by the null class
    gt_BL: torch.Tensor  # ground-truth tokens of all K scales, flattened
    inputs: torch.Tensor  # (B, L - p_0^2, Cvae) teacher-forcing inputs


@torch.no_grad()
def make_batch(vae: VQVAE, images, labels, drop, null_class: int, device: torch.device) -> Batch:
    """Images -> ground-truth token maps and teacher-forcing inputs with the frozen VQVAE (float32)."""
    images = images.to(device, non_blocking=True)
    with torch.autocast(device.type, enabled=False):
        tokens = vae.img_to_tokens(images)
        inputs = vae.tokens_to_var_input(tokens)
    labels = torch.where(drop, null_class, labels).to(device)
    return Batch(labels, torch.cat(tokens, 1), inputs)


def fits(vae: VQVAE, models: list[VAR], what: str) -> None:
    """check_compatible as a configuration error (exit status 2) that says which file does not fit."""
    try:
        check_compatible(vae, models)
    except ValueError as e:
        raise ConfigError(f"{what} does not fit the VQVAE: {e}") from None


def check_draft_steps(draft_steps: int, model: VAR, role: str) -> None:
    """1..K-1 for a refiner; a drafter may also take N = K: cross-entropy on every scale, i.e. plain VAR
    fine-tuning (the miniature's control for the refiner's extra training)."""
    K = model.config.num_scales
    top = K if role == "drafter" else K - 1
    if not 1 <= draft_steps <= top:
        raise ConfigError(f"--draft_steps must be in 1..{top} for the {role} of a {K}-scale model, got {draft_steps}")


def check_classes(data: ImageFolder, model: VAR) -> None:
    if len(data.classes) > model.config.num_classes:
        raise DataError(f"{data.root} has {len(data.classes)} class folders but the model knows "
                        f"{model.config.num_classes} classes")
