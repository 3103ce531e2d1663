"""Building a training run from the flags: the student (from --init or --resume), the frozen VQVAE, the data."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from models import VAR, VQVAE, load_vae, load_var
from models.generation import check_compatible
from utils.checkpoint import CheckpointError
from utils.data import DataError, ImageFolder, ImageTransform
from utils.dist import DistInfo
from utils.hub import var_file
from utils.sampler import ShardedBatchSampler
from utils.train_args import ConfigError
from utils.train_state import CKPT_NAME, load_checkpoint, model_from_checkpoint


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """None means float32 (no autocast)."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def resume_path(args: argparse.Namespace) -> Path | None:
    if args.resume == "auto":
        path = Path(args.output_dir) / CKPT_NAME
        return path if path.is_file() else None
    return Path(args.resume) if args.resume else None


def load_student(args: argparse.Namespace, ckpt: dict | None, resume: Path | None) -> VAR:
    """The model to train: the checkpoint's weights when resuming, else --init (its depth must be --depth)."""
    if ckpt is not None:
        model = model_from_checkpoint(ckpt)
        if model.config.depth != args.depth:
            raise CheckpointError(f"{resume} holds a depth-{model.config.depth} model but --depth is {args.depth}")
        return model
    return load_var(args.init or var_file(args.depth), depth=args.depth, ckpt_dir=args.ckpt_dir)


def check_draft_steps(draft_steps: int, model: VAR) -> None:
    K = model.config.num_scales
    if not 1 <= draft_steps <= K - 1:
        raise ConfigError(f"--draft_steps must be in 1..{K - 1} for {K} scales, got {draft_steps}")


def set_drop_path(model: VAR, rate: float) -> None:
    """Stochastic depth rising linearly to `rate` over the blocks (-1: VAR's 0.1 x depth / 24)."""
    depth = model.config.depth
    rate = 0.1 * depth / 24 if rate < 0 else rate
    model.config.drop_path_rate = rate
    for i, block in enumerate(model.blocks):
        block.drop_path.p = rate * i / max(depth - 1, 1)


def load_frozen_vae(args: argparse.Namespace, model: VAR, device: torch.device) -> VQVAE:
    vae = load_vae(args.vae, patch_nums=model.config.patch_nums, device=device, ckpt_dir=args.ckpt_dir)
    check_compatible(vae, [model])
    return vae.eval().requires_grad_(False)


def train_dataset(args: argparse.Namespace, image_size: int, num_classes: int) -> ImageFolder:
    data = ImageFolder(Path(args.data_path) / "train", ImageTransform(image_size, train=True, hflip=args.hflip),
                       seed=args.seed, cond_drop=args.cond_drop)
    if len(data.classes) > num_classes:
        raise DataError(f"{data.root} has {len(data.classes)} class folders but the model knows {num_classes} classes")
    return data


def train_sampler(data: ImageFolder, args, grad_accum: int, info: DistInfo, start_step: int) -> ShardedBatchSampler:
    try:
        return ShardedBatchSampler(len(data), args.batch_size, grad_accum, info.rank, info.world_size, args.seed,
                                   start_step)
    except DataError as e:
        raise DataError(f"{data.root}: {e}") from None


def val_loader(args: argparse.Namespace, image_size: int, info: DistInfo):
    """This rank's shard (every world_size-th image) of DATA_PATH/val with centre crops, or None."""
    if not args.eval_every:
        return None
    data = ImageFolder(Path(args.data_path) / "val", ImageTransform(image_size, train=False), seed=args.seed)
    if len(data) < info.world_size:
        raise DataError(f"{data.root} has {len(data)} images, fewer than the {info.world_size} ranks")
    keys = [(i, 0) for i in range(info.rank, len(data), info.world_size)]
    batches = [keys[j: j + args.batch_size] for j in range(0, len(keys), args.batch_size)]
    return torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=args.num_workers,
                                       pin_memory=info.device.type == "cuda")


def read_resume(args: argparse.Namespace) -> tuple[dict | None, Path | None]:
    path = resume_path(args)
    return (load_checkpoint(path), path) if path is not None else (None, None)
