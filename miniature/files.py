"""The miniature's files (where the pipeline writes each model), its sampling settings, and loading the tokenizer."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from models import VQVAE, load_vae
from utils.checkpoint import CheckpointError, load_weights_only

SHIPPED = Path(__file__).resolve().parent / "checkpoints"  # the small checkpoints kept in the repository
# what evaluate_miniature.py and demo.py sample with unless told otherwise
SAMPLING = dict(cfg=2.0, top_k=0, top_p=1.0, temperature=1.0)


@dataclass(frozen=True)
class MiniatureFiles:
    """The checkpoints of one miniature run, all in one folder."""
    root: Path
    large_depth: int = 6
    small_depth: int = 2

    @property
    def vqvae(self) -> Path:
        return self.root / "vqvae.pth"

    @property
    def classifier(self) -> Path:
        return self.root / "classifier.pth"

    @property
    def large(self) -> Path:
        return self.root / f"var_d{self.large_depth}.pth"

    @property
    def small(self) -> Path:
        return self.root / f"var_d{self.small_depth}.pth"

    def drafter(self, n: int) -> Path:
        return self.root / f"drafter_{n}.pth"

    def refiner(self, n: int) -> Path:
        return self.root / f"refiner_{n}.pth"


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> VQVAE:
    """A VQVAE written by train_vqvae.py: the file carries its config, patch_nums included."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQVAE checkpoint {path} does not exist")
    config = load_weights_only(path).get("config")
    if not isinstance(config, dict) or "patch_nums" not in config:
        raise CheckpointError(f"{path} has no config with patch_nums: not written by train_vqvae.py; "
                              "use models.load_vae with the patch_nums of its VARs")
    return load_vae(path, patch_nums=tuple(config["patch_nums"]), device=device)
