"""The flags every training script shares: one per field of training.config.TrainConfig, defaulting to the
script's recipe (a TrainConfig), and back to a TrainConfig in one step."""
from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path

import torch

from models import VAR, VQVAE, load_vae, load_var
from training.config import SHARD_CHOICES, TrainConfig
from training.tokens import check_draft_steps, fits
from utils.hub import VAE_FILE, var_file

from .args import DTYPE_CHOICES, non_negative_int, positive_int, resolve_device

EPILOG = """conventions:
  learning rate   --lr is the base rate per 256 images; the peak rate is lr x global_batch / 256
                  (VAR's linear scaling rule), reached after a linear warm-up over --warmup_ratio of the
                  run, then decayed (--schedule) to --min_lr_ratio x peak at the last step.
  global batch    --batch_size per process x --grad_accum x processes (--global_batch fixes the product).
  optimizer       AdamW, betas (0.9, 0.95); no weight decay on biases, norms, embeddings, position tables.
  precision       --dtype auto: bf16 autocast on CUDA (fp16 on GPUs without bf16), fp32 on CPU;
                  fp16 trains with a gradient scaler. Weights and optimizer state stay float32.
  checkpoints     OUTPUT_DIR/ckpt_last.pth every --save_every steps and at the end (continue with --resume,
                  or rerun the same command with --resume auto), then the exported weights.
  data            DATA_PATH/train/<class>/<image> (classes sorted by folder name). An image that cannot be
                  read stops the run with exit status 2 and its path; replace it with a readable image and
                  rerun with --resume auto (deleting it would change the data order: a resume refuses that).
  exit status     0 done; 1 the loss became NaN/inf (the last good checkpoint is kept) or a write failed;
                  2 unusable data, checkpoints or flags; 130 interrupted.
  multi-GPU       torchrun --nproc_per_node=G <script> ... (DDP; every rank reads a disjoint shard).
                  --shard fsdp shards the model instead (FSDP2): the checkpoint becomes the folder
                  OUTPUT_DIR/ckpt_last.dcp, resumable with any number of processes."""


def training_parser(description: str, d: TrainConfig) -> argparse.ArgumentParser:
    """A parser with the shared flags (group 'run'), defaults from the script's recipe `d`; the script adds its
    model's flags."""
    p = argparse.ArgumentParser(description=description, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # keeps the layout
    a = p.add_argument_group("run").add_argument
    a("--data_path", type=Path, required=True, help="image folder: DATA_PATH/train/<class>/<image> (optional "
                                                    "DATA_PATH/val/)")
    a("--output_dir", type=Path, default=d.output_dir, help="checkpoints, logs and the exported weights "
                                                            "(default %(default)s)")
    a("--resume", default=d.resume, help="a training checkpoint (ckpt_last.pth) to continue exactly; 'auto': "
                                         "OUTPUT_DIR/ckpt_last.pth if it exists")
    a("--epochs", type=float, default=d.epochs, help="epochs over DATA_PATH/train (default %(default)s)")
    a("--max_steps", type=non_negative_int, default=d.max_steps, help="if > 0, the run's length in optimizer steps "
                                                                      "instead of --epochs (default %(default)s)")
    a("--stop_at", type=non_negative_int, default=d.stop_at, help="if > 0, save and exit after this optimizer step, "
                                                                  "leaving the schedules as for the whole run (for "
                                                                  "time-limited jobs)")
    a("--batch_size", type=positive_int, default=d.batch_size, help="images per process per micro-batch "
                                                                    "(default %(default)s)")
    a("--grad_accum", type=positive_int, default=d.grad_accum,
      help="micro-batches per optimizer step (default: reach --global_batch" + (")" if d.default_global_batch
                                                                               else ", else 1)"))
    a("--global_batch", type=positive_int, default=d.global_batch, help="images per optimizer step over all "
      f"processes (default {d.default_global_batch or 'batch_size x processes'})")
    p.set_defaults(default_global_batch=d.default_global_batch)
    a("--lr", type=float, default=d.lr, help="base learning rate per 256 images (default %(default)g)")
    a("--wd", type=float, default=d.wd, help="AdamW weight decay on weight matrices (default %(default)g)")
    a("--schedule", choices=("linear", "cosine"), default=d.schedule, help="decay after warm-up (default %(default)s)")
    a("--warmup_ratio", type=float, default=d.warmup_ratio, help="fraction of the run spent warming up "
                                                                 "(default %(default)g)")
    a("--min_lr_ratio", type=float, default=d.min_lr_ratio, help="final lr as a fraction of the peak "
                                                                 "(default %(default)g)")
    a("--clip", type=float, default=d.clip, help="max gradient norm; 0 disables clipping (default %(default)g)")
    a("--hflip", action="store_true", default=d.hflip, help="random horizontal flips")
    a("--dtype", choices=DTYPE_CHOICES, default=d.dtype,
      help="autocast precision (default auto: bf16 on CUDA, or fp16 on GPUs without bf16; fp32 on CPU. The "
           "inference scripts' auto is fp16 on CUDA, as published)")
    a("--device", default=d.device, help="cuda, cuda:N or cpu (default: cuda when available; under torchrun each "
                                         "process takes cuda:LOCAL_RANK)")
    a("--seed", type=non_negative_int, default=d.seed, help="fixes initialisation, data order, augmentation, label "
                                                            "drops and drop path (default %(default)s)")
    a("--num_workers", type=non_negative_int, default=d.num_workers, help="data-loading processes per process "
                                                                          "(default %(default)s)")
    a("--threads", type=non_negative_int, default=d.threads, help="CPU threads for torch (0: torch's default)")
    a("--save_every", type=non_negative_int, default=d.save_every, help="optimizer steps between checkpoints (0: "
                                                                        "only at the end; default %(default)s)")
    a("--log_every", type=positive_int, default=d.log_every, help="optimizer steps between log lines "
                                                                  "(default %(default)s)")
    a("--eval_every", type=non_negative_int, default=d.eval_every, help="optimizer steps between losses on "
                                                                        "DATA_PATH/val (0: never)")
    a("--shard", choices=SHARD_CHOICES, default=d.shard,
      help="fsdp: shard weights, gradients and AdamW state over the processes (FSDP2, VAR models only; see "
           "docs/sharded-training.md)")
    return p


def parse_training_args(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the shared flags (argparse's exit status 2 for a bad one)."""
    args = p.parse_args(argv)
    for name in ("epochs", "lr", "wd", "warmup_ratio", "min_lr_ratio", "clip"):
        if not math.isfinite(getattr(args, name)):
            p.error(f"--{name} must be a finite number, got {getattr(args, name)}")
    for name in ("warmup_ratio", "min_lr_ratio"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    for name in ("lr", "epochs"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.wd < 0 or args.clip < 0:
        p.error("--wd and --clip must be >= 0")
    return args


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The shared flags as a TrainConfig; --device checked here (UsageError: CUDA may be missing)."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**{**values, "device": str(resolve_device(args.device))})


# ---- CoDe fine-tuning (train_drafter.py, train_refiner.py) ------------------------------------------------------
def add_finetune_args(p: argparse.ArgumentParser, role: str, depth: int) -> None:
    a = p.add_argument_group(role).add_argument
    a("--depth", type=positive_int, default=depth, help=f"depth of the {role} (checked against --init; "
                                                        "default %(default)s)")
    a("--draft_steps", type=positive_int, default=8, help="N: the drafter makes scales 1..N, the refiner N+1..K "
                                                          "(default %(default)s)")
    a("--init", default=None, help=f"weights to start from: a path or a published name (default var_d{depth}.pth, "
                                   "from Hugging Face)")
    a("--vae", default=VAE_FILE, help="VQVAE weights: a path or the published name (default %(default)s)")
    a("--ckpt_dir", default=None, help="folder searched for --init / --teacher / --vae names before Hugging Face")
    a("--cond_drop", type=float, default=0.1, help="probability of replacing a label by the null class, for CFG "
                                                   "(default %(default)g)")
    a("--drop_path", type=float, default=-1.0, help="stochastic depth rate of the last block (-1: VAR's 0.1 x "
                                                    "depth / 24)")


def check_finetune_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.cond_drop <= 1:
        p.error(f"--cond_drop must be in [0, 1], got {args.cond_drop}")
    if args.drop_path != -1.0 and not 0 <= args.drop_path < 1:
        p.error(f"--drop_path must be in [0, 1) or -1, got {args.drop_path}")


def add_distill_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("distillation").add_argument
    a("--teacher_depth", type=positive_int, default=30, help="depth of the teacher (default %(default)s)")
    a("--teacher", default=None, help="teacher weights: a path or a published name (default "
                                      "var_d{teacher_depth}.pth from Hugging Face)")
    a("--kd_temperature", type=float, default=1.0, help="softmax temperature T of both distributions in "
                                                        "KL(teacher || student); the KL is multiplied by T^2 "
                                                        "(default %(default)g)")
    a("--ce_weight", type=float, default=0.0, help="weight of a cross-entropy term against the ground-truth tokens, "
                                                   "with the same per-scale weights as the KL (default %(default)g: "
                                                   "distillation only, as in the paper)")
    a("--kd_weight", type=float, default=1.0, help="weight of the KL term (default %(default)g); 0 with --ce_weight "
                                                   "> 0: no teacher, the same per-scale weights on plain "
                                                   "cross-entropy (a control for distillation)")


def check_distill_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.kd_temperature > 0 or args.ce_weight < 0 or args.kd_weight < 0:
        p.error("--kd_temperature must be > 0, --ce_weight and --kd_weight >= 0")
    if args.kd_weight == 0 and args.ce_weight == 0:
        p.error("--kd_weight 0 and --ce_weight 0 leave no loss: give --ce_weight > 0 (e.g. 1) or --kd_weight > 0")


def load_student(args: argparse.Namespace, role: str, device: torch.device) -> tuple[VAR, VQVAE]:
    """The model a fine-tuning script trains (from --init, or the published VAR of --depth) and its frozen VQVAE,
    checked against --draft_steps and each other, with --drop_path set."""
    init = args.init or var_file(args.depth)
    model = load_var(init, depth=args.depth, ckpt_dir=args.ckpt_dir)
    check_draft_steps(args.draft_steps, model, role)
    vae = load_vae(args.vae, patch_nums=model.config.patch_nums, device=device, ckpt_dir=args.ckpt_dir)
    vae.eval().requires_grad_(False)
    fits(vae, [model], f"the {role} ({init})")
    model.set_drop_path(args.drop_path)
    return model, vae
