"""Training any model from scratch on an image folder, with the loop of train_drafter.py / train_refiner.py.

train_vqvae.py, train_classifier.py and train_var.py describe their model as a `Job` (what to train, the
objective, how to export it); this module owns the rest, reusing utils/train*.py: the sharded resumable data
order, AdamW with warm-up and cosine decay, the Trainer step (clipping, non-finite checks), DDP under
torchrun, tqdm and logs from rank 0, atomic checkpoints and exact --resume.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from utils import train_setup as setup
from utils.checkpoint import CheckpointError
from utils.data import ImageFolder, ImageTransform
from utils.dist import DistInfo, barrier
from utils.optim import LRSchedule, build_optimizer
from utils.train import LoopSettings, StepFn, Trainer
from utils.train_args import nonneg_int, positive_int
from utils.train_log import MetricLog, log
from utils.train_run import fit, run_guarded
from utils.train_state import CKPT_NAME, check_recipe, save_checkpoint


@dataclass
class ImageBatch:
    images: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    labels_B: torch.Tensor  # class ids (the Trainer's evaluation counts images by it)


@dataclass
class Job:
    """One model to train. `model.config.to_dict()` is stored in the checkpoints and must match on resume."""
    name: str
    model: nn.Module  # saved, resumed and exported
    step_fn: StepFn  # (module, batch, step) -> (loss, {name: detached scalar})
    prepare: Callable[[tuple], Any]  # a collated (images, labels, drops) -> the batch on the device
    export: Callable[[nn.Module, Path], Path]  # writes the final weights into the output folder
    image_size: int
    module: nn.Module | None = None  # what step_fn calls, if not `model` (a wrapper holding it)
    cond_drop: float = 0.0  # probability of a dropped label (the batch's `drops`)
    tokens_per_sample: int = 1  # for the log's throughput


def image_batch(device: torch.device) -> Callable[[tuple], ImageBatch]:
    return lambda c: ImageBatch(c[0].to(device), c[1].to(device))


def add_runner_args(p: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, wd: float,
                    output_dir: str) -> None:
    a = p.add_argument_group("training").add_argument
    a("--data_path", required=True, help="image folder: DATA_PATH/train/<class>/<image> (and DATA_PATH/val/)")
    a("--output_dir", default=output_dir, help="checkpoints, logs and the exported weights (default %(default)s)")
    a("--resume", default=None, help="ckpt_last.pth to continue exactly; 'auto': OUTPUT_DIR/ckpt_last.pth if present")
    a("--steps", type=positive_int, default=steps, help="optimizer steps (default %(default)s)")
    a("--stop_at", type=nonneg_int, default=0, help="if > 0, save and exit after this step, the schedule left as "
                                                     "for the whole run (continue with --resume)")
    a("--batch_size", type=positive_int, default=batch_size, help="images per process and step (default %(default)s)")
    a("--lr", type=float, default=lr, help="peak learning rate, after a linear warm-up, cosine decay (default %(default)g)")
    a("--wd", type=float, default=wd, help="AdamW weight decay on weight matrices (default %(default)g)")
    a("--warmup_ratio", type=float, default=0.05, help="fraction of the steps spent warming up (default %(default)g)")
    a("--clip", type=float, default=1.0, help="max gradient norm; 0 disables clipping (default %(default)g)")
    a("--seed", type=nonneg_int, default=0, help="fixes initialisation, data order and augmentation (default 0)")
    a("--num_workers", type=nonneg_int, default=0, help="data-loading processes per process (default 0)")
    a("--save_every", type=nonneg_int, default=0, help="steps between checkpoints (0: only at the end)")
    a("--log_every", type=positive_int, default=50, help="steps between log lines (default %(default)s)")
    a("--eval_every", type=nonneg_int, default=0, help="steps between losses on DATA_PATH/val (0: never)")
    a("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    a("--threads", type=nonneg_int, default=0, help="CPU threads for torch (0: torch's default)")


def check_runner_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if not args.lr > 0 or args.wd < 0 or args.clip < 0 or not 0 <= args.warmup_ratio < 1:
        p.error("--lr must be > 0, --wd and --clip >= 0, --warmup_ratio in [0, 1)")
    return args


def run_job(args: argparse.Namespace, make_job: Callable[[argparse.Namespace, DistInfo], Job]) -> int:
    """0 on success, 1 if the loss became non-finite, 2 for unusable data, checkpoints or flags."""
    def body(info: DistInfo) -> None:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)  # the fresh initialisation
        train(args, make_job(args, info), info)
    return run_guarded(args, body)


def restore(job: Job, args: argparse.Namespace, recipe: dict) -> tuple[dict | None, int]:
    """Load the resume checkpoint into the job's model; (checkpoint or None, first step)."""
    ckpt, path = setup.read_resume(args)
    if ckpt is None:
        return None, 0
    check_recipe(ckpt["recipe"], recipe, path)
    if ckpt["recipe"].get("role") != job.name or ckpt["config"] != job.model.config.to_dict():
        raise CheckpointError(f"{path} holds another model (a {ckpt['recipe'].get('role')} with {ckpt['config']}); "
                              "pass the flags of the run that wrote it")
    job.model.load_state_dict(ckpt["model"], strict=True)
    log.info("resuming from %s at step %d", path, ckpt["step"])
    return ckpt, ckpt["step"]


def train(args: argparse.Namespace, job: Job, info: DistInfo) -> None:
    out = Path(args.output_dir)
    data = ImageFolder(Path(args.data_path) / "train", ImageTransform(job.image_size, train=True), seed=args.seed,
                       cond_drop=job.cond_drop)
    global_batch, total = args.batch_size * info.world_size, args.steps
    recipe = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    recipe.update(role=job.name, global_batch=global_batch, total_steps=total)
    ckpt, start = restore(job, args, recipe)
    sampler = setup.train_sampler(data, args, 1, info, start)
    model = job.model.to(info.device).train()
    module = (job.module or model).to(info.device)
    wrapped = DDP(module, device_ids=[info.local_rank] if info.device.type == "cuda" else None) \
        if info.world_size > 1 else module
    optimizer = build_optimizer(model, args.lr, args.wd)
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    schedule = LRSchedule(args.lr, total, round(args.warmup_ratio * total), "cosine")
    trainer = Trainer(wrapped, optimizer, None, schedule, job.step_fn, job.prepare, info,
                      LoopSettings(total, 1, args.clip, None, args.seed, job.tokens_per_sample))
    log.info("%s: %.2fM parameters, %d images in %d classes, %d steps of %d images, peak lr %.3g", job.name,
             sum(p.numel() for p in model.parameters()) / 1e6, len(data), len(data.classes), total, global_batch,
             args.lr)

    def save(step: int) -> None:
        if info.is_main:
            save_checkpoint(out / CKPT_NAME, model=model, optimizer=optimizer, scaler=None, step=step,
                            data=sampler.position(step).to_dict(), recipe=recipe, extra={"role": job.name})
        barrier()

    end = min(total, args.stop_at) if args.stop_at else total
    if start < end:
        loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=args.num_workers)
        val = setup.val_loader(args, job.image_size, info)
        metrics = MetricLog(info, out, total, sampler.steps_per_epoch)
        fit(trainer, iter(loader), start, end, args, save, val, module, metrics, global_batch)
    if end == total and info.is_main:
        log.info("exported %s", job.export(model.eval(), out))
    barrier()
