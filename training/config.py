"""A training run's settings, besides its model and loss: one typed dataclass whose defaults are the only ones
(a script's recipe replaces some; cli.train_args turns every field into a flag with the script's default)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from utils.errors import UsageError

SHARD_CHOICES = ("none", "fsdp")  # fsdp: FSDP2 over the ranks (training.shard)


class ConfigError(UsageError, ValueError):
    """Settings that cannot work together (batch arithmetic, depths, draft steps, models that do not fit)."""


@dataclass(frozen=True)
class TrainConfig:
    data_path: Path = Path("data")  # DATA_PATH/train/<class>/<image>, optional DATA_PATH/val/
    output_dir: Path = Path("output")  # checkpoints, logs and the exported weights
    resume: str | None = None  # a ckpt_last.pth, or "auto"
    epochs: float = 1.0
    max_steps: int = 0  # > 0: the run's length instead of epochs
    stop_at: int = 0  # > 0: save and exit after this step, schedules as for the whole run
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int | None = None
    global_batch: int | None = None
    default_global_batch: int | None = 1024  # when neither grad_accum nor global_batch is given (None: accum 1)
    lr: float = 1e-4  # base rate per 256 images: the peak is lr x global batch / 256
    wd: float = 0.0
    schedule: str = "linear"  # or "cosine"
    warmup_ratio: float = 0.02
    min_lr_ratio: float = 0.01
    clip: float = 2.0  # max gradient norm; 0 disables clipping
    hflip: bool = False
    dtype: str = "auto"  # autocast: auto, fp32, bf16, fp16
    device: str | None = None  # cuda, cuda:N, cpu; None: cuda when available
    seed: int = 0
    num_workers: int = 8
    threads: int = 0  # torch CPU threads (0: torch's default)
    save_every: int = 1000
    log_every: int = 50
    eval_every: int = 0
    shard: str = "none"  # or "fsdp": weights, gradients and AdamW state sharded over the ranks

    def recipe(self) -> dict:
        """The settings that fix the data order, the schedules and the numerics: a resumed run repeats them."""
        return {"seed": self.seed, "hflip": self.hflip, "dtype": self.dtype, "lr": self.lr, "wd": self.wd,
                "schedule": self.schedule, "warmup_ratio": self.warmup_ratio, "min_lr_ratio": self.min_lr_ratio,
                "clip": self.clip}

    def batch_plan(self, world_size: int) -> tuple[int, int]:
        """(grad_accum, global_batch) from the per-process batch and the world size."""
        per_step = self.batch_size * world_size
        if self.grad_accum is None:
            if self.global_batch is None and self.default_global_batch is None:
                return 1, per_step
            global_batch = self.global_batch or self.default_global_batch
            if global_batch % per_step:
                raise ConfigError(f"--global_batch {global_batch} is not a multiple of --batch_size {self.batch_size} "
                                  f"x {world_size} processes; pick --batch_size / --grad_accum so that it is")
            return global_batch // per_step, global_batch
        if self.global_batch is not None and self.global_batch != per_step * self.grad_accum:
            raise ConfigError(f"--global_batch {self.global_batch} != --batch_size {self.batch_size} x --grad_accum "
                              f"{self.grad_accum} x {world_size} processes")
        return self.grad_accum, per_step * self.grad_accum
