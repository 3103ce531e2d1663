"""Jobs that train a VAR on the token maps of a frozen VQVAE: CoDe's specialised fine-tuning (train_drafter.py,
train_refiner.py) and pre-training from scratch (train_var.py) share the batch, the student and the VQVAE."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from code import check_compatible
from models import VAR, VARConfig, VQVAE, load_vae, load_var
from utils.checkpoint import CheckpointError
from utils.dist import DistInfo
from utils.hub import var_file

from .config import ConfigError, FinetuneConfig
from .loop import StepFn
from .run import Job
from .state import export_weights


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


def token_batches(vae: VQVAE, null_class: int, device: torch.device) -> Callable[[tuple], Batch]:
    return lambda collated: make_batch(vae, *collated, null_class, device)


def fits(vae: VQVAE, models: list[VAR], what: str) -> None:
    """check_compatible as a configuration error (exit status 2) that says which file does not fit."""
    try:
        check_compatible(vae, models)
    except ValueError as e:
        raise ConfigError(f"{what} does not fit the VQVAE: {e}") from None


def load_frozen_vae(source: str, model: VAR, device: torch.device, ckpt_dir: str | None) -> VQVAE:
    vae = load_vae(source, patch_nums=model.config.patch_nums, device=device, ckpt_dir=ckpt_dir)
    return vae.eval().requires_grad_(False)


def load_student(cfg: FinetuneConfig, resume: dict | None) -> VAR:
    """The model to train: the resume checkpoint's layout (its weights are loaded by the runner), else --init."""
    if resume is not None:
        with torch.device("meta"):
            model = VAR(VARConfig(**resume["config"]))
        if model.config.depth != cfg.depth:
            raise CheckpointError(f"the resume checkpoint holds a depth-{model.config.depth} model but --depth is "
                                  f"{cfg.depth}")
        return model
    return load_var(cfg.init or var_file(cfg.depth), depth=cfg.depth, ckpt_dir=cfg.ckpt_dir)


def check_draft_steps(draft_steps: int, model: VAR, role: str) -> None:
    """1..K-1 for a refiner; a drafter may also take N = K: cross-entropy on every scale, i.e. plain VAR
    fine-tuning (the miniature's control for the refiner's extra training)."""
    K = model.config.num_scales
    top = K if role == "drafter" else K - 1
    if not 1 <= draft_steps <= top:
        raise ConfigError(f"--draft_steps must be in 1..{top} for the {role} of a {K}-scale model, got {draft_steps}")


def set_drop_path(model: VAR, rate: float) -> None:
    """Stochastic depth rising linearly to `rate` over the blocks (-1: VAR's 0.1 x depth / 24)."""
    depth = model.config.depth
    rate = 0.1 * depth / 24 if rate < 0 else rate
    model.config.drop_path_rate = rate
    for i, block in enumerate(model.blocks):
        block.drop_path.p = rate * i / max(depth - 1, 1)


# (student, frozen VQVAE, device) -> (step function, tokens per sample)
Objective = Callable[[VAR, VQVAE, torch.device], "tuple[StepFn, int]"]


def finetune_job(cfg: FinetuneConfig, info: DistInfo, resume: dict | None, objective: Objective,
                 recipe: dict | None = None) -> Job:
    """The drafter's or the refiner's Job; the objective is the role's loss."""
    student = load_student(cfg, resume)
    check_draft_steps(cfg.draft_steps, student, cfg.role)
    vae = load_frozen_vae(cfg.vae, student, info.device, cfg.ckpt_dir)
    fits(vae, [student], f"the {cfg.role} ({resume and 'the resume checkpoint' or cfg.init or var_file(cfg.depth)})")
    set_drop_path(student, cfg.drop_path)
    step_fn, tokens_per_sample = objective(student, vae, info.device)

    def export(model: VAR, out: Path) -> Path:
        path = out / f"{cfg.role}_{cfg.draft_steps}.pth"
        export_weights(model, path)
        return path

    return Job(cfg.role, student, step_fn, token_batches(vae, student.config.num_classes, info.device), export,
               vae.config.image_size, cond_drop=cfg.cond_drop, tokens_per_sample=tokens_per_sample,
               num_classes=student.config.num_classes, recipe={**cfg.recipe(), **(recipe or {})})
