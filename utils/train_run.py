"""One training run from the flags to the exported weights; the two scripts differ only by their `Role`."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from models import VAR, VQVAE
from utils import train_setup as setup
from utils.checkpoint import CheckpointError
from utils.data import DataError, ImageFolder
from utils.dist import DistInfo, barrier, cleanup, init_distributed
from utils.optim import LRSchedule, build_optimizer, scaled_lr
from utils.sampler import ShardedBatchSampler
from utils.train import LoopSettings, NonFiniteLoss, StepFn, Trainer, make_batch
from utils.train_args import ConfigError, batch_plan
from utils.train_log import MetricLog, log, setup_logging
from utils.train_state import CKPT_NAME, check_recipe, export_weights, save_checkpoint, set_rng_state

# (args, student on its device, vae, dist info, total steps) -> (step function, tokens per sample)
MakeStepFn = Callable[[argparse.Namespace, VAR, VQVAE, DistInfo, int], "tuple[StepFn, int]"]


@dataclass
class Role:
    """What differs between the drafter and the refiner: the name and the objective."""
    name: str
    make_step_fn: MakeStepFn


@dataclass
class Plan:
    """The run as the flags (and the checkpoint, when resuming) define it, before any optimizer exists."""
    student: VAR
    vae: VQVAE
    data: ImageFolder
    sampler: ShardedBatchSampler
    grad_accum: int
    global_batch: int
    total_steps: int
    start_step: int
    recipe: dict
    ckpt: dict | None


def run(args: argparse.Namespace, role: Role) -> int:
    """0 on success, 1 if the loss became non-finite, 2 for unusable data, checkpoints or flags."""
    return run_guarded(args, lambda info: train(args, role, info))


def run_guarded(args: argparse.Namespace, body: Callable[[DistInfo], None]) -> int:
    """body(info) inside the torchrun process group, its failures turned into exit codes (see run)."""
    info = init_distributed(args.device)
    setup_logging(info, Path(args.output_dir))
    try:
        body(info)
        return 0
    except NonFiniteLoss as e:
        log.error("error: %s. Stopping without saving; the last good checkpoint (if any) is %s", e,
                  Path(args.output_dir) / CKPT_NAME)
        return 1
    except (DataError, CheckpointError, ConfigError, FileNotFoundError) as e:
        log.error("error: %s", e)
        return 2
    finally:
        cleanup()


def make_plan(args: argparse.Namespace, role: Role, info: DistInfo) -> Plan:
    grad_accum, global_batch = batch_plan(args.batch_size, info.world_size, args.grad_accum, args.global_batch)
    ckpt, ckpt_path = setup.read_resume(args)
    student = setup.load_student(args, ckpt, ckpt_path)
    setup.check_draft_steps(args.draft_steps, student)
    vae = setup.load_frozen_vae(args, student, info.device)
    data = setup.train_dataset(args, vae.config.image_size, student.config.num_classes)
    start = ckpt["step"] if ckpt else 0
    sampler = setup.train_sampler(data, args, grad_accum, info, start)
    total = args.max_steps or max(1, round(args.epochs * sampler.steps_per_epoch))
    recipe = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    recipe.update(role=role.name, global_batch=global_batch, total_steps=total)
    if ckpt:
        check_recipe(ckpt["recipe"], recipe, ckpt_path)
        log.info("resuming from %s at step %d (epoch %d)", ckpt_path, start, ckpt["epoch"])
    return Plan(student, vae, data, sampler, grad_accum, global_batch, total, start, recipe, ckpt)


def make_trainer(args: argparse.Namespace, role: Role, info: DistInfo, plan: Plan) -> Trainer:
    """Student on its device (wrapped in DDP under torchrun), optimizer, scaler, schedule, restored state."""
    student = plan.student
    setup.set_drop_path(student, args.drop_path)
    student.to(info.device).train()
    step_fn, tokens_per_sample = role.make_step_fn(args, student, plan.vae, info, plan.total_steps)
    model = DDP(student, device_ids=[info.local_rank] if info.device.type == "cuda" else None,
                broadcast_buffers=False) if info.world_size > 1 else student
    peak = scaled_lr(args.lr, plan.global_batch)
    optimizer = build_optimizer(student, peak, args.wd)
    dtype = setup.autocast_dtype(args.dtype, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if dtype == torch.float16 else None
    if plan.ckpt:
        optimizer.load_state_dict(plan.ckpt["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(plan.ckpt["scaler"])
        set_rng_state(plan.ckpt["rng"])  # for completeness: every step reseeds from (seed, rank, step) anyway
    schedule = LRSchedule(peak, plan.total_steps, round(args.warmup_ratio * plan.total_steps), args.schedule,
                          args.min_lr_ratio)
    null, vae = student.config.num_classes, plan.vae
    log.info("%s: depth %d, %d images in %d classes, %d steps of %d images (%d/GPU x %d accum x %d GPUs), "
             "peak lr %.3g, %s", role.name, student.config.depth, len(plan.data), len(plan.data.classes),
             plan.total_steps, plan.global_batch, args.batch_size, plan.grad_accum, info.world_size, peak,
             dtype or torch.float32)
    return Trainer(model, optimizer, scaler, schedule, step_fn, lambda c: make_batch(vae, *c, null, info.device), info,
                   LoopSettings(plan.total_steps, plan.grad_accum, args.clip, dtype, args.seed, tokens_per_sample))


def train(args: argparse.Namespace, role: Role, info: DistInfo) -> None:
    out = Path(args.output_dir)
    if info.device.type == "cuda":  # the VQVAE runs in float32: let its convolutions and matmuls use TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    plan = make_plan(args, role, info)
    trainer = make_trainer(args, role, info, plan)
    plan.ckpt = None  # free the loaded optimizer state

    def save(step: int) -> None:
        if info.is_main:
            save_checkpoint(out / CKPT_NAME, model=plan.student, optimizer=trainer.optimizer, scaler=trainer.scaler,
                            step=step, data=plan.sampler.position(step).to_dict(), recipe=plan.recipe,
                            extra={"role": role.name})
            log.info("saved %s at step %d", out / CKPT_NAME, step)
        barrier()

    end = min(plan.total_steps, args.stop_at) if args.stop_at else plan.total_steps
    if plan.start_step < end:
        loader = torch.utils.data.DataLoader(plan.data, batch_sampler=plan.sampler, num_workers=args.num_workers,
                                             pin_memory=info.device.type == "cuda")
        val = setup.val_loader(args, plan.vae.config.image_size, info)
        metrics = MetricLog(info, out, plan.total_steps, plan.sampler.steps_per_epoch)
        fit(trainer, iter(loader), plan.start_step, end, args, save, val, plan.student,
            metrics, plan.global_batch)
    if end == plan.total_steps and info.is_main:
        export_weights(plan.student, out / f"{role.name}_{args.draft_steps}.pth")
        log.info("exported %s", out / f"{role.name}_{args.draft_steps}.pth")
    barrier()


def fit(trainer: Trainer, batches, start: int, end: int, args: argparse.Namespace, save: Callable[[int], None],
        val, student: VAR, metrics: MetricLog, global_batch: int) -> None:
    """Steps start..end-1 with a progress bar, log lines, validation and checkpoints; saves at the end."""
    bar = tqdm(total=trainer.settings.total_steps, initial=start, disable=not trainer.info.is_main, desc="train",
               dynamic_ncols=True)
    for step in range(start, end):
        m = trainer.train_step(step, batches)
        metrics.add(m, global_batch * trainer.settings.tokens_per_sample)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
        done = step + 1
        if done % args.log_every == 0 or done == end:
            metrics.flush(done)
        if val is not None and done % args.eval_every == 0:
            metrics.write(done, trainer.evaluate(student, val, step))
        if args.save_every and done % args.save_every == 0 and done != end:
            save(done)
    bar.close()
    save(end)
