"""One training run, from a RunConfig and a Job to the exported weights: every training script goes through here.

A script describes its model as a `Job` (what to train, the objective, how to export it); this module owns the
rest: the sharded resumable data order, AdamW with warm-up and decay, the Trainer step (accumulation, autocast,
clipping, non-finite checks), DDP under torchrun, tqdm and logs from rank 0, atomic checkpoints and exact resume.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from models import VAR
from utils.checkpoint import CheckpointError
from utils.dist import DistInfo, barrier, cleanup, init_distributed
from utils.files import remove_temp_files

from .config import ConfigError, RunConfig
from .data import DataError, ImageFolder, ImageTransform
from .log import MetricLog, log, setup_logging
from .loop import LoopSettings, NonFiniteLoss, StepFn, Trainer
from .optim import LRSchedule, build_optimizer, scaled_lr
from .sampler import ShardedBatchSampler
from .shard import (SHARDED_NAME, check_shard, ensure_process_group, export_full_state_dict, is_sharded,
                    load_sharded, mp_policy, quiet_view_warning, read_meta, save_sharded, sharded_checkpoint,
                    unsharded_var, wrap_fsdp)
from .state import CKPT_NAME, check_recipe, load_checkpoint, rng_state, save_checkpoint, set_rng_state


@dataclass
class Job:
    """One model to train. `model.config.to_dict()` is stored in the checkpoints and must match on resume."""
    name: str  # drafter, refiner, var, vqvae, classifier: a checkpoint of another job is refused
    model: nn.Module  # saved, resumed and exported
    step_fn: StepFn  # (module, batch, step, total_steps) -> (loss, {name: detached scalar})
    prepare: Callable[[tuple], Any]  # a collated (images, labels, drops) -> the batch on the device
    export: Callable[[nn.Module, Path], Path]  # writes the final weights into the output folder, returns the path
    image_size: int
    module: nn.Module | None = None  # what step_fn calls, if not `model` (a wrapper holding it)
    cond_drop: float = 0.0  # probability of a dropped label (the batch's `drops`)
    tokens_per_sample: int = 1  # for the log's throughput
    num_classes: int | None = None  # the data folder may not have more classes than this
    recipe: dict = field(default_factory=dict)  # the job's settings a resumed run must repeat


MakeJob = Callable[[RunConfig, DistInfo, "dict | None"], Job]  # (config, dist, resume checkpoint or None) -> Job


def run(config: RunConfig, make_job: MakeJob) -> int:
    """0 on success, 1 if the loss became non-finite, 2 for unusable data, checkpoints or flags."""
    info = init_distributed(config.device)
    try:
        setup_logging(info, config.output_dir)
        train(config, make_job, info)
        return 0
    except NonFiniteLoss as e:
        log.error("error: %s. Stopping without saving; the last good checkpoint (if any) is %s", e,
                  last_checkpoint(config))
        return 1
    except (DataError, CheckpointError, ConfigError, FileNotFoundError, NotADirectoryError) as e:
        log.error("error: %s", worker_message(e))
        return 2
    except OSError as e:  # a write that failed: full disk, permissions
        log.error("error: %s (the last checkpoint written, if any, is %s)", e, last_checkpoint(config))
        return 1
    finally:
        cleanup()


def worker_message(e: Exception) -> str:
    """A DataLoader worker's error arrives as 'Caught DataError in DataLoader worker ... Traceback ...': keep the
    message, not the traceback."""
    text = str(e)
    if not text.startswith("Caught "):
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def last_checkpoint(config: RunConfig) -> Path:
    return config.output_dir / (SHARDED_NAME if config.shard == "fsdp" else CKPT_NAME)


def read_resume(config: RunConfig) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from, if any (of a sharded one, its metadata: the tensors stay on disk). A fresh
    run does not overwrite another run's checkpoint; a sharded checkpoint continues sharded, an unsharded one not."""
    sharded = config.shard == "fsdp"
    plain = config.output_dir / CKPT_NAME
    found = {"none": plain if plain.is_file() else None, "fsdp": sharded_checkpoint(config.output_dir / SHARDED_NAME)}
    if config.resume == "auto":
        path = found[config.shard] or found["none" if sharded else "fsdp"]
        if path is None:
            return None, None
    elif config.resume:
        path = Path(config.resume)
        if not path.exists():
            raise FileNotFoundError(f"--resume checkpoint {path} does not exist")
    elif found["none"] or found["fsdp"]:
        raise ConfigError(f"{config.output_dir} holds the checkpoint of another run ({found['none'] or found['fsdp']}"
                          "): continue it with --resume auto, or start this one in another --output_dir")
    else:
        return None, None
    if path.is_dir() != sharded:
        raise ConfigError(f"{path} is {'a sharded' if path.is_dir() else 'an unsharded'} checkpoint: continue it "
                          f"{'with' if path.is_dir() else 'without'} --shard fsdp")
    return (read_meta(path) if sharded else load_checkpoint(path)), path


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """None means float32 (no autocast)."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def train_data(config: RunConfig, job: Job, world_size: int) -> ImageFolder:
    data = ImageFolder(config.data_path / "train", ImageTransform(job.image_size, train=True, hflip=config.hflip),
                       seed=config.seed, cond_drop=job.cond_drop)
    if job.num_classes is not None and len(data.classes) > job.num_classes:
        raise DataError(f"{data.root} has {len(data.classes)} class folders but the model knows {job.num_classes} "
                        "classes")
    return data


def val_loader(config: RunConfig, image_size: int, info: DistInfo):
    """This rank's shard (every world_size-th image) of DATA_PATH/val with centre crops, or None."""
    if not config.eval_every:
        return None
    data = ImageFolder(config.data_path / "val", ImageTransform(image_size, train=False), seed=config.seed)
    if len(data) < info.world_size:
        raise DataError(f"{data.root} has {len(data)} images, fewer than the {info.world_size} ranks")
    keys = [(i, 0) for i in range(info.rank, len(data), info.world_size)]
    batches = [keys[j: j + config.batch_size] for j in range(0, len(keys), config.batch_size)]
    return torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=config.num_workers,
                                       pin_memory=info.device.type == "cuda")


def restore(job: Job, ckpt: dict, path: Path, recipe: dict) -> None:
    """Check that the checkpoint continues this run, then load its weights into the job's model (a sharded
    checkpoint's weights are loaded after wrapping)."""
    check_recipe(ckpt["recipe"], recipe, path)
    if ckpt["config"] != job.model.config.to_dict():
        raise CheckpointError(f"{path} holds another model ({ckpt['config']}, not {job.model.config.to_dict()}); "
                              "pass the flags of the run that wrote it")
    if "model" in ckpt:
        job.model.load_state_dict(ckpt["model"], strict=True, assign=True)


def shard_model(job: Job, info: DistInfo) -> nn.Module:
    """FSDP2 over the ranks; a model built on the meta device (for a sharded checkpoint to fill) gets its shards
    allocated on the device."""
    if not isinstance(job.model, VAR) or job.module is not None:
        raise ConfigError(f"--shard fsdp shards VAR models; train the {job.name} without it")
    on_meta = job.model.pos_1LC.device.type == "meta"
    model = wrap_fsdp(job.model if on_meta else job.model.to(info.device), mp_policy(), info.device)
    return model.to_empty(device=info.device) if on_meta else model


def ddp(module: nn.Module, info: DistInfo) -> DDP:
    """DistributedDataParallel without buffer broadcasts (our buffers are derived, never trained), under either
    name of that argument (recent torch releases call broadcast_buffers forward_sync_buffers)."""
    name = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
    return DDP(module, device_ids=[info.local_rank] if info.device.type == "cuda" else None, **{name: False})


def train(config: RunConfig, make_job: MakeJob, info: DistInfo) -> None:
    out = config.output_dir
    if config.threads:
        torch.set_num_threads(config.threads)
    if info.device.type == "cuda":  # fp32 work outside autocast (the frozen VQVAE) may use TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if info.is_main and (stale := remove_temp_files(out)):
        log.info("removed %d temporary files an interrupted run left in %s: %s", len(stale), out,
                 ", ".join(p.name for p in stale))
    dtype = autocast_dtype(config.dtype, info.device)
    check_shard(config.shard, dtype)
    if config.shard == "fsdp":
        ensure_process_group(info)
        quiet_view_warning()
    ckpt, ckpt_path = read_resume(config)
    torch.manual_seed(config.seed)  # a fresh model's initialisation
    job = make_job(config, info, ckpt)
    data = train_data(config, job, info.world_size)
    grad_accum, global_batch = config.batch_plan(info.world_size)
    start = ckpt["step"] if ckpt else 0
    try:
        sampler = ShardedBatchSampler(len(data), config.batch_size, grad_accum, info.rank, info.world_size,
                                      config.seed, start)
    except DataError as e:
        raise DataError(f"{data.root}: {e}") from None
    total = config.max_steps or max(1, round(config.epochs * sampler.steps_per_epoch))
    recipe = {**config.recipe(), **job.recipe, "role": job.name, "global_batch": global_batch, "total_steps": total,
              "images": len(data), "classes": len(data.classes)}  # another data folder would change the order
    if ckpt:
        restore(job, ckpt, ckpt_path, recipe)
        log.info("resuming from %s at step %d (epoch %d)", ckpt_path, start, ckpt["epoch"])
        if ckpt.get("world_size", info.world_size) != info.world_size:
            log.info("it was written by %d processes; resharded for %d", ckpt["world_size"], info.world_size)
    if config.shard == "fsdp":
        model = module = wrapped = shard_model(job, info).train()
    else:
        model = job.model.to(info.device).train()
        module = (job.module or model).to(info.device)
        wrapped = ddp(module, info) if info.world_size > 1 else module
    peak = scaled_lr(config.optim.lr, global_batch)
    optimizer = build_optimizer(model, peak, config.optim.wd)
    scaler = torch.amp.GradScaler(info.device.type) if dtype == torch.float16 else None
    if ckpt and is_sharded(model):
        load_sharded(ckpt_path, model, optimizer)
        set_rng_state(ckpt["rng"])
    elif ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])  # for completeness: every step reseeds from (seed, rank, step) anyway
    ckpt = None  # free the loaded optimizer state
    o = config.optim
    schedule = LRSchedule(peak, total, round(o.warmup_ratio * total), o.schedule, o.min_lr_ratio)
    trainer = Trainer(wrapped, optimizer, scaler, schedule, job.step_fn, job.prepare, info,
                      LoopSettings(total, grad_accum, o.clip, dtype, config.seed, job.tokens_per_sample))
    log.info("%s: %.2fM parameters, %d images in %d classes, %d steps of %d images (%d/GPU x %d accum x %d GPUs), "
             "peak lr %.3g, %s", job.name, sum(p.numel() for p in model.parameters()) / 1e6, len(data),
             len(data.classes), total, global_batch, config.batch_size, grad_accum, info.world_size, peak,
             dtype or torch.float32)

    def save(step: int) -> None:
        if is_sharded(model):
            position = sampler.position(step).to_dict()
            save_sharded(out / SHARDED_NAME, model, optimizer, {
                "step": step, "epoch": position["epoch"], "data": position, "rng": rng_state(),
                "config": model.config.to_dict(), "recipe": recipe, "role": job.name})
            log.info("saved %s at step %d", out / SHARDED_NAME, step)
        elif info.is_main:
            save_checkpoint(out / CKPT_NAME, model=model, optimizer=optimizer, scaler=scaler, step=step,
                            data=sampler.position(step).to_dict(), recipe=recipe, extra={"role": job.name})
            log.info("saved %s at step %d", out / CKPT_NAME, step)
        barrier()

    end = min(total, config.stop_at) if config.stop_at else total
    if start < end:
        loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=config.num_workers,
                                             pin_memory=info.device.type == "cuda")
        metrics = MetricLog(info, out, total, sampler.steps_per_epoch, start)
        fit(trainer, iter(loader), start, end, config, save, val_loader(config, job.image_size, info), module,
            metrics, global_batch)
    if end == total:
        export(job, model, out, info)
    barrier()


def export(job: Job, model: nn.Module, out: Path, info: DistInfo) -> None:
    """The job's export on rank 0; a sharded model is first gathered (on every rank) into a plain one."""
    full = export_full_state_dict(model) if is_sharded(model) else None
    if info.is_main:
        plain = unsharded_var(model.config, full) if full is not None else model
        log.info("exported %s", job.export(plain.eval(), out))


def fit(trainer: Trainer, batches, start: int, end: int, config: RunConfig, save: Callable[[int], None], val,
        module: nn.Module, metrics: MetricLog, global_batch: int) -> None:
    """Steps start..end-1 with a progress bar, log lines, validation and checkpoints; saves at the end."""
    bar = tqdm(total=trainer.settings.total_steps, initial=start, disable=not trainer.info.is_main, desc="train",
               dynamic_ncols=True)
    for step in range(start, end):
        m = trainer.train_step(step, batches)
        metrics.add(m, global_batch * trainer.settings.tokens_per_sample)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
        done = step + 1
        if done % config.log_every == 0 or done == end:
            metrics.flush(done)
        if val is not None and done % config.eval_every == 0:
            metrics.write(done, trainer.evaluate(module, val, step))
        if config.save_every and done % config.save_every == 0 and done != end:
            save(done)
    bar.close()
    save(end)
