"""What a training run is, as typed dataclasses: built from the flags in one place (training.args.run_config)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


class ConfigError(ValueError):
    """Settings that cannot work together (batch arithmetic, depths, draft steps, models that do not fit)."""


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its schedule: lr is the base rate per 256 images (peak = lr x global batch / 256)."""
    lr: float
    wd: float
    schedule: str = "linear"  # or "cosine"
    warmup_ratio: float = 0.02
    min_lr_ratio: float = 0.01
    clip: float = 2.0  # max gradient norm; 0 disables clipping


@dataclass(frozen=True)
class RunConfig:
    """Everything about a run that is not the model or its objective (those are the script's Job)."""
    data_path: Path
    output_dir: Path
    optim: OptimConfig
    resume: str | None = None  # a ckpt_last.pth, or "auto"
    epochs: float = 1.0
    max_steps: int = 0  # > 0: the run's length instead of epochs
    stop_at: int = 0  # > 0: save and exit after this step, schedules as for the whole run
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int | None = None
    global_batch: int | None = None
    default_global_batch: int | None = 1024  # when neither grad_accum nor global_batch is given (None: accum 1)
    hflip: bool = False
    dtype: str = "auto"  # autocast: auto, fp32, bf16, fp16
    device: str | None = None
    seed: int = 0
    num_workers: int = 8
    threads: int = 0  # torch CPU threads (0: torch's default)
    save_every: int = 1000
    log_every: int = 50
    eval_every: int = 0

    def recipe(self) -> dict:
        """The settings that fix the data order, the schedules and the numerics: a resumed run repeats them."""
        return {"seed": self.seed, "hflip": self.hflip, "dtype": self.dtype, **asdict(self.optim)}

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


@dataclass(frozen=True)
class FinetuneConfig:
    """CoDe's specialised fine-tuning of one role (section 3.3): which model, from where, on which scales."""
    role: str  # "drafter" or "refiner"
    depth: int
    draft_steps: int  # N: the drafter makes scales 1..N, the refiner N+1..K
    init: str | None  # weights to start from (path or published name); None: var_d<depth>.pth
    vae: str  # the frozen VQVAE (path or published name)
    ckpt_dir: str | None  # searched for published names before Hugging Face
    drop_path: float = -1.0  # stochastic depth of the last block; -1: VAR's 0.1 x depth / 24
    cond_drop: float = 0.1  # probability of the null class, for CFG

    def recipe(self) -> dict:
        return {"draft_steps": self.draft_steps, "drop_path": self.drop_path, "cond_drop": self.cond_drop}


@dataclass(frozen=True)
class DistillConfig:
    """The refiner's teacher and the distillation loss."""
    teacher: str | None  # path or published name; None: var_d<teacher_depth>.pth
    teacher_depth: int = 30
    kd_temperature: float = 1.0
    ce_weight: float = 0.0
    kd_weight: float = 1.0  # 0: no teacher, plain cross-entropy with the refiner's per-scale weights

    def recipe(self) -> dict:
        return {"teacher_depth": self.teacher_depth, "kd_temperature": self.kd_temperature,
                "ce_weight": self.ce_weight, "kd_weight": self.kd_weight}
