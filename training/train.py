"""The one training function: every training script builds its model, data and loss step, then calls `train`.

`train` owns the rest: the sharded resumable data order, AdamW with warm-up and decay, the step (accumulation,
autocast, clipping, non-finite checks), DDP under torchrun, tqdm and logs from rank 0, atomic checkpoints and
exact resume; with `--shard fsdp` (TrainConfig.shard), FSDP2 and sharded checkpoints instead of DDP
(training.shard, training.shard_ckpt).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from utils.checkpoint import CheckpointError
from utils.dist import DistInfo, barrier, cleanup, init_distributed
from utils.files import remove_temp_files

from .config import ConfigError, TrainConfig
from .data import DataError, ImageFolder, ImageTransform, checked, collate
from .log import MetricLog, log
from .loop import LoopSettings, LossStep, Trainer
from .optim import LRSchedule, build_optimizer, scaled_lr
from .sampler import ShardedBatchSampler
from .shard import check_shard, ensure_process_group, gather_into, missing_passes, sharded_twin
from .shard_ckpt import SHARDED_NAME, load_sharded, read_meta, save_sharded, sharded_checkpoint
from .state import CKPT_NAME, check_recipe, load_checkpoint, save_checkpoint, set_rng_state


def train(config: TrainConfig, model: nn.Module, loss_step: LossStep, data: ImageFolder, *, role: str,
          recipe: dict | None = None, tokens_per_sample: int = 1) -> bool:
    """Train `model` (its `config.to_dict()` goes into the checkpoints) on `data` with `loss_step`, from
    OUTPUT_DIR/ckpt_last.pth when resuming. `role` names the run (a checkpoint of another role is refused),
    `recipe` holds the script's settings a resumed run must repeat, `tokens_per_sample` is for the log's
    throughput. True when the run is complete and this is rank 0: the caller exports the weights (a sharded run
    gathers them into `model` first)."""
    dist = init_distributed(config.device)
    try:
        return run(config, dist, model, loss_step, data, {**(recipe or {}), "role": role}, tokens_per_sample)
    finally:
        cleanup()


def run(config: TrainConfig, dist: DistInfo, model: nn.Module, loss_step: LossStep, data: ImageFolder,
        recipe: dict, tokens_per_sample: int) -> bool:
    out, role, sharded = config.output_dir, recipe["role"], config.shard == "fsdp"
    if config.threads:
        torch.set_num_threads(config.threads)
    if dist.device.type == "cuda":  # fp32 work outside autocast (a frozen VQVAE) may use TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if dist.is_main and (stale := remove_temp_files(out)):
        log.info("removed %d temporary files an interrupted run left in %s: %s", len(stale), out,
                 ", ".join(p.name for p in stale))
    dtype = autocast_dtype(config.dtype, dist.device)
    check_shard(config.shard, model, dtype, role)
    if sharded:
        ensure_process_group(dist)
    ckpt, ckpt_path = read_resume(config)
    grad_accum, global_batch = config.batch_plan(dist.world_size)
    start = ckpt["step"] if ckpt else 0
    sampler = ShardedBatchSampler(len(data), config.batch_size, grad_accum, dist.rank, dist.world_size, config.seed,
                                  start)
    total = config.max_steps or max(1, round(config.epochs * sampler.steps_per_epoch))
    recipe = {**config.recipe(), **recipe, "global_batch": global_batch, "total_steps": total, "images": len(data),
              "classes": len(data.classes)}  # another data folder would change the order
    if ckpt:
        restore(model, ckpt, ckpt_path, recipe)
        log.info("resuming from %s at step %d (epoch %d)", ckpt_path, start, ckpt["epoch"])
        if ckpt.get("world_size", dist.world_size) != dist.world_size:
            log.info("it was written by %d processes; resharded for %d", ckpt["world_size"], dist.world_size)
    if sharded:  # `model` stays plain (on its device) and receives the trained weights at the end
        trained = wrapped = sharded_twin(model, dist.device, fill=not ckpt)
    else:
        trained = model.to(dist.device).train()
        wrapped = ddp(trained, dist) if dist.world_size > 1 else trained
    peak = scaled_lr(config.lr, global_batch)
    optimizer = build_optimizer(trained, peak, config.wd)
    scaler = torch.amp.GradScaler(dist.device.type) if dtype == torch.float16 else None
    if ckpt and sharded:
        load_sharded(ckpt_path, trained, optimizer)
        set_rng_state(ckpt["rng"])
    elif ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])  # for completeness: every step reseeds from (seed, rank, step) anyway
    ckpt = None  # free the loaded optimizer state
    schedule = LRSchedule(peak, total, round(config.warmup_ratio * total), config.schedule, config.min_lr_ratio)
    last = out / (SHARDED_NAME if sharded else CKPT_NAME)
    trainer = Trainer(wrapped, optimizer, scaler, schedule, loss_step, dist,
                      LoopSettings(total, grad_accum, config.clip, dtype, config.seed, last))
    log.info("%s: %.2fM parameters, %d images in %d classes, %d steps of %d images (%d/GPU x %d accum x %d GPUs), "
             "peak lr %.3g, %s", role, sum(p.numel() for p in model.parameters()) / 1e6, len(data),
             len(data.classes), total, global_batch, config.batch_size, grad_accum, dist.world_size, peak,
             dtype or torch.float32)

    def save(step: int) -> None:
        position = sampler.position(step).to_dict()
        if sharded:
            save_sharded(last, model=trained, optimizer=optimizer, step=step, data=position, recipe=recipe,
                         config=model.config.to_dict())
        elif dist.is_main:
            save_checkpoint(last, model=trained, optimizer=optimizer, scaler=scaler, step=step, data=position,
                            recipe=recipe, extra={"role": role})
        log.info("saved %s at step %d", last, step)
        barrier()

    end = min(total, config.stop_at) if config.stop_at else total
    if start < end:
        loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=config.num_workers,
                                             collate_fn=collate, pin_memory=dist.device.type == "cuda")
        metrics = MetricLog(dist, out, total, sampler.steps_per_epoch, start)
        val = val_loader(config, data.transform.size, dist)
        extra_passes = missing_passes(trained, len(val), dist.device) if val is not None else 0
        bar = tqdm(total=total, initial=start, disable=not dist.is_main, desc="train", dynamic_ncols=True)
        batches = checked(iter(loader))  # the iterator draws its base seed now, before any step reseeds
        for step in range(start, end):
            m = trainer.train_step(step, batches)
            metrics.add(m, global_batch * tokens_per_sample)
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
            done = step + 1
            if done % config.log_every == 0 or done == end:
                metrics.flush(done)
            if val is not None and done % config.eval_every == 0:
                metrics.write(done, trainer.evaluate(trained, checked(val), step, extra_passes))
            if config.save_every and done % config.save_every == 0 and done != end:
                save(done)
        bar.close()
        save(end)
    if sharded and end == total:
        gather_into(trained, model)
    model.eval()
    return end == total and dist.is_main


def read_resume(config: TrainConfig) -> tuple[dict | None, Path | None]:
    """The checkpoint to continue from, if any (of a sharded one, its metadata: its tensors are read once sharded).
    A fresh run does not overwrite another run's checkpoint; a sharded checkpoint continues sharded, a plain one
    not."""
    sharded, plain = config.shard == "fsdp", config.output_dir / CKPT_NAME
    found = sharded_checkpoint(config.output_dir / SHARDED_NAME), plain if plain.is_file() else None
    own, other = found if sharded else found[::-1]
    if config.resume == "auto":
        if (path := own or other) is None:
            return None, None
    elif config.resume:
        path = Path(config.resume)
        if not path.exists():
            raise FileNotFoundError(f"--resume checkpoint {path} does not exist")
    elif own or other:
        raise ConfigError(f"{config.output_dir} holds the checkpoint of another run ({own or other}): continue it "
                          "with --resume auto, or start this one in another --output_dir")
    else:
        return None, None
    if path.is_dir() != sharded:
        raise ConfigError(f"{path} is {'a sharded' if path.is_dir() else 'an unsharded'} checkpoint: continue it "
                          f"{'with' if path.is_dir() else 'without'} --shard fsdp")
    return (read_meta(path) if sharded else load_checkpoint(path)), path


def restore(model: nn.Module, ckpt: dict, path: Path, recipe: dict) -> None:
    """Check that the checkpoint continues this run, then load its weights into the model (a sharded checkpoint's
    are loaded into the sharded model)."""
    check_recipe(ckpt["recipe"], recipe, path)
    if ckpt["config"] != model.config.to_dict():
        raise CheckpointError(f"{path} holds another model ({ckpt['config']}, not {model.config.to_dict()}); "
                              "pass the flags of the run that wrote it")
    if "model" in ckpt:
        model.load_state_dict(ckpt["model"], strict=True, assign=True)


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """None means float32 (no autocast)."""
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def val_loader(config: TrainConfig, image_size: int, dist: DistInfo):
    """This rank's shard (every world_size-th image) of DATA_PATH/val with centre crops, or None."""
    if not config.eval_every:
        return None
    data = ImageFolder(config.data_path / "val", ImageTransform(image_size, train=False), seed=config.seed)
    if len(data) < dist.world_size:
        raise DataError(f"{data.root} has {len(data)} images, fewer than the {dist.world_size} ranks")
    keys = [(i, 0) for i in range(dist.rank, len(data), dist.world_size)]
    batches = [keys[j: j + config.batch_size] for j in range(0, len(keys), config.batch_size)]
    return torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=config.num_workers,
                                       collate_fn=collate, pin_memory=dist.device.type == "cuda")


def ddp(module: nn.Module, dist: DistInfo) -> DDP:
    """DistributedDataParallel without buffer broadcasts (our buffers are derived, never trained), under either
    name of that argument (recent torch releases call broadcast_buffers forward_sync_buffers)."""
    name = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
    return DDP(module, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None, **{name: False})
