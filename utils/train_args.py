"""Command-line flags shared by train_drafter.py and train_refiner.py, and the batch arithmetic behind them."""
from __future__ import annotations

import argparse

from utils.hub import VAE_FILE

EPILOG = """conventions:
  learning rate   --lr is the base rate per 256 images; the peak rate is lr x global_batch / 256
                  (VAR's linear scaling rule), reached after a linear warm-up over --warmup_ratio of the
                  run, then decayed (--schedule) to --min_lr_ratio x peak at the last step.
  global batch    --batch_size per GPU x --grad_accum x GPUs; by default --grad_accum is chosen so that
                  the global batch is 1024 (--global_batch).
  optimizer       AdamW, betas (0.9, 0.95); no weight decay on biases, norms, embeddings, position tables.
  precision       --dtype auto: bf16 autocast on CUDA (fp16 on GPUs without bf16), fp32 on CPU;
                  fp16 trains with a gradient scaler. Weights and optimizer state stay float32.
  checkpoints     OUTPUT_DIR/ckpt_last.pth every --save_every steps and at the end (resume with --resume),
                  and OUTPUT_DIR/{role}_N.pth, the plain state dict that models.load_var reads.
  multi-GPU       torchrun --nproc_per_node=G train_{role}.py ... (DDP; every rank reads a disjoint shard)."""


class ConfigError(ValueError):
    """Flags that cannot work together (batch arithmetic, depths, draft steps)."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def training_parser(role: str, description: str, *, lr: float, wd: float, epochs: float,
                    depth: int) -> argparse.ArgumentParser:
    """Flags common to both roles, with the paper's recipe of `role` as defaults."""
    p = argparse.ArgumentParser(description=description, epilog=EPILOG.format(role=role),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # keeps the layout
    a = p.add_argument
    a("--depth", type=positive_int, default=depth, help=f"depth of the {role} (checked against --init; default %(default)s)")
    a("--draft_steps", type=positive_int, default=8, help="N: the drafter makes scales 1..N, the refiner N+1..K (default 8)")
    a("--data_path", required=True, help="ImageNet-style folder: DATA_PATH/train/<class>/<image> (optional DATA_PATH/val/)")
    a("--init", default=None, help=f"weights to start from: a path or a published name (default var_d{depth}.pth, "
                                   "from Hugging Face)")
    a("--vae", default=VAE_FILE, help="VQVAE weights: a path or the published name (default %(default)s)")
    a("--ckpt_dir", default=None, help="folder searched for --init / --teacher / --vae names before Hugging Face")
    a("--output_dir", default=f"output/{role}", help="checkpoints and logs (default %(default)s)")
    a("--resume", default=None, help="a training checkpoint (ckpt_last.pth) to continue exactly; 'auto': "
                                     "OUTPUT_DIR/ckpt_last.pth if it exists")
    a("--epochs", type=float, default=epochs, help="epochs over DATA_PATH/train (default %(default)s: the paper's budget)")
    a("--max_steps", type=nonneg_int, default=0, help="if > 0, the run's length in optimizer steps instead of --epochs "
                                                       "(the schedules span it)")
    a("--stop_at", type=nonneg_int, default=0, help="if > 0, save and exit after this optimizer step, leaving the "
                                                     "schedules as for the whole run (for time-limited jobs)")
    a("--batch_size", type=positive_int, default=16, help="images per GPU per micro-batch (default %(default)s)")
    a("--grad_accum", type=positive_int, default=None, help="micro-batches per optimizer step (default: reach --global_batch)")
    a("--global_batch", type=positive_int, default=None, help="images per optimizer step over all GPUs (default 1024)")
    a("--lr", type=float, default=lr, help="base learning rate per 256 images (default %(default)g)")
    a("--wd", type=float, default=wd, help="AdamW weight decay on weight matrices (default %(default)g)")
    a("--schedule", choices=("linear", "cosine"), default="linear", help="decay after warm-up (default %(default)s)")
    a("--warmup_ratio", type=float, default=0.02, help="fraction of the run spent warming up (default %(default)g)")
    a("--min_lr_ratio", type=float, default=0.01, help="final lr as a fraction of the peak (default %(default)g)")
    a("--clip", type=float, default=2.0, help="max gradient norm; 0 disables clipping (default %(default)g)")
    a("--cond_drop", type=float, default=0.1, help="probability of replacing a label by the null class, for CFG "
                                                   "(default %(default)g)")
    a("--hflip", action="store_true", help="random horizontal flips")
    a("--drop_path", type=float, default=-1.0, help="stochastic depth rate of the last block (-1: VAR's 0.1 x depth / 24)")
    a("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="autocast precision (default auto)")
    a("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    a("--seed", type=nonneg_int, default=0, help="fixes data order, augmentation, label drops and drop path")
    a("--num_workers", type=nonneg_int, default=8, help="data-loading processes per GPU (default %(default)s)")
    a("--save_every", type=nonneg_int, default=1000, help="optimizer steps between checkpoints (0: only at the end)")
    a("--log_every", type=positive_int, default=50, help="optimizer steps between log lines (default %(default)s)")
    a("--eval_every", type=nonneg_int, default=0, help="optimizer steps between losses on DATA_PATH/val (0: never)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    for name in ("cond_drop", "warmup_ratio", "min_lr_ratio"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    for name in ("lr", "epochs"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.wd < 0 or args.clip < 0:
        p.error("--wd and --clip must be >= 0")
    if args.drop_path != -1.0 and not 0 <= args.drop_path < 1:
        p.error(f"--drop_path must be in [0, 1) or -1, got {args.drop_path}")
    return args


def batch_plan(batch_size: int, world_size: int, grad_accum: int | None, global_batch: int | None) -> tuple[int, int]:
    """(grad_accum, global_batch) from the per-GPU batch and the world size; raises ConfigError if they disagree."""
    per_step = batch_size * world_size
    if grad_accum is None:
        global_batch = global_batch or 1024
        if global_batch % per_step:
            raise ConfigError(f"--global_batch {global_batch} is not a multiple of --batch_size {batch_size} x "
                             f"{world_size} GPUs; pick --batch_size / --grad_accum so that it is")
        return global_batch // per_step, global_batch
    if global_batch is not None and global_batch != per_step * grad_accum:
        raise ConfigError(f"--global_batch {global_batch} != --batch_size {batch_size} x --grad_accum {grad_accum} x "
                         f"{world_size} GPUs")
    return grad_accum, per_step * grad_accum
