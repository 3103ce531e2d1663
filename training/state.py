"""Training checkpoints (resume exactly) and the plain exported state dict (load with models.load_var).

A training checkpoint holds only tensors, dicts, lists, numbers and strings, so torch.load(weights_only=True)
reads it; `read_state_dict` / `load_var` also accept it directly (they take its 'model' entry).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError, atomic_save, load_weights_only

from .log import log

CKPT_NAME = "ckpt_last.pth"


def step_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed from (seed, rank, step): the RNG stream of every step is fixed, so resume is exact."""
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reseed(seed: int, rank: int, step: int) -> None:
    """Seed torch's CPU and CUDA generators (drop path draws from them) for one optimizer step."""
    torch.manual_seed(step_seed(seed, rank, step))


def rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch_cpu": torch.get_rng_state(), "torch_cuda": cuda}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def save_checkpoint(path: str | os.PathLike, *, model: nn.Module, optimizer, scaler, step: int, data: dict,
                    recipe: dict, extra: dict | None = None) -> None:
    """Everything --resume needs; written to a temporary file then renamed."""
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else {}, "step": step, "epoch": data["epoch"],
                 "data": data, "rng": rng_state(), "config": model.config.to_dict(), "recipe": recipe,
                 **(extra or {})}, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--resume checkpoint {path} does not exist")
    ckpt = load_weights_only(path)
    missing = [k for k in ("model", "optimizer", "step", "config", "recipe", "data") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of these scripts (no {', '.join(missing)}); "
                              "to start from plain weights use --init")
    return ckpt


def check_recipe(saved: dict, current: dict, path) -> None:
    """A resumed run continues the same recipe (data order, schedules, objective): refuse a different one."""
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in sorted(saved.keys() | current.keys())
            if saved.get(k) != current.get(k)]
    if diff:
        raise CheckpointError(f"{path} was written by a different training recipe; pass the same flags to resume:\n  "
                              + "\n  ".join(diff))


def export_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """The official layout: exactly the model's state_dict(), float32, nothing else."""
    atomic_save({k: v.detach().float() if v.is_floating_point() else v.detach()
                 for k, v in model.state_dict().items()}, path)
    log.info("exported %s", path)
