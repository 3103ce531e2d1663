"""--miniature: the scripts on the miniature's shipped checkpoints (miniature/checkpoints/: 16x16 images of 10 shape
classes, 6 scales, a depth-6 and a depth-2 VAR and the fine-tuned pair for N = 3) with the miniature's sampling
settings. The flag changes defaults only: any flag given explicitly wins (--ckpt_dir WORK/ckpt reads a pipeline's
own checkpoints under the same names)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from utils.hub import code_file, var_file

from .args import UsageError

MINIATURE_DIR = Path(__file__).resolve().parents[1] / "miniature" / "checkpoints"
VQVAE_FILE = "vqvae.pth"
LARGE_DEPTH, SMALL_DEPTH, DRAFT_STEPS, NUM_SCALES, NUM_CLASSES = 6, 2, 3, 6, 10
SAMPLING = dict(cfg=2.0, top_k=0, top_p=1.0, temperature=1.0)  # what miniature.evaluate and miniature.demo use
HELP = ("run on the miniature's shipped checkpoints (miniature/checkpoints, CPU, seconds): sets --ckpt_dir to that "
        "folder, {what}, --cfg 2 --top_k 0 --top_p 1 --temperature 1{extra}; flags given explicitly win")


def add_miniature_arg(parser: argparse.ArgumentParser, what: str, extra: str = "") -> None:
    parser.add_argument("--miniature", action="store_true", help=HELP.format(what=what, extra=extra))


def parse_with_miniature(parser: argparse.ArgumentParser, argv: list[str] | None, defaults: dict
                         ) -> argparse.Namespace:
    """parser.parse_args(argv), with `defaults` (and the miniature's folder and sampling) as the defaults when
    --miniature is on the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--miniature", action="store_true")
    if pre.parse_known_args(argv)[0].miniature:
        parser.set_defaults(ckpt_dir=str(MINIATURE_DIR), **SAMPLING, **defaults)
    return parser.parse_args(argv)


def miniature_vae(ckpt_dir: str) -> str:
    return str(Path(ckpt_dir) / VQVAE_FILE)


def miniature_code_file(ckpt_dir: str, role: str, draft_steps: int, depth: int, training_free: bool) -> str:
    """The miniature's names: var_d<depth>.pth for a plain model (training-free, or one model alone), else the
    fine-tuned drafter_<N>.pth / refiner_<N>.pth, which must be there."""
    folder = Path(ckpt_dir)
    if training_free or draft_steps == 0 or draft_steps >= NUM_SCALES:
        return str(folder / var_file(depth))
    name = code_file(role, draft_steps)
    if not (folder / name).is_file():
        have = sorted(int(m[1]) for p in folder.glob("drafter_*.pth") if (m := re.fullmatch(r"drafter_(\d+)\.pth", p.name)))
        fix = f"pass --draft_steps {have[0]} or " if have else ""
        raise UsageError(f"--miniature: no fine-tuned {role} for --draft_steps {draft_steps} in {folder} ({name} is "
                         f"missing; fine-tuned N there: {', '.join(map(str, have)) or 'none'}): {fix}add "
                         f"--training_free (var_d{LARGE_DEPTH}.pth and var_d{SMALL_DEPTH}.pth)")
    return str(folder / name)
