"""The miniature's files (where the pipeline writes each model) and its sampling settings."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "checkpoints"  # the small checkpoints kept in the repository
# what miniature.evaluate and miniature.demo sample with unless told otherwise
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

    def drafter(self, n: int, seed: int = 0) -> Path:
        return self.root / f"drafter_{n}{suffix(seed)}.pth"

    def refiner(self, n: int, seed: int = 0) -> Path:
        return self.root / f"refiner_{n}{suffix(seed)}.pth"

    def control(self, n: int, seed: int = 0) -> Path:
        """The small VAR after a refiner's steps, data, optimiser and per-scale weights, but plain cross-entropy
        and no teacher: the control for distillation."""
        return self.root / f"control_{n}{suffix(seed)}.pth"


def suffix(seed: int) -> str:
    """Fine-tuning seed 0 keeps the plain names (the shipped pair, the demo); other seeds are marked."""
    return f"_s{seed}" if seed else ""


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """--cfg, --top_k, --top_p, --temperature with the miniature's defaults (evaluate and demo)."""
    g = p.add_argument_group("sampling").add_argument
    g("--cfg", type=float, default=SAMPLING["cfg"], help="classifier-free guidance (default %(default)g)")
    g("--top_k", type=int, default=SAMPLING["top_k"], help="0 disables it (default %(default)s)")
    g("--top_p", type=float, default=SAMPLING["top_p"], help="1 keeps every token (default %(default)g)")
    g("--temperature", type=float, default=SAMPLING["temperature"], help="(default %(default)g)")
