"""The whole miniature, from nothing to the tables: data, tokenizer, classifier, two VARs, CoDe fine-tuning, scores.

    python -m miniature.pipeline --reuse_shipped --jobs 2 --threads 1     # the paper's recipe, scaled (default)
    python -m miniature.pipeline --reuse_shipped --jobs 2 --threads 1 --recipe strong
    python -m miniature.pipeline --reuse_shipped --jobs 2 --threads 1 --draft_steps 3   # one N of the grid
    python -m miniature.pipeline --work /tmp/smoke --preset smoke          # every stage on a toy budget

Each stage is its script's own main() with the flags below: miniature.shapes, train_vqvae.py and
miniature.train_classifier, train_var.py (large and small), then per fine-tuning seed and N train_refiner.py
(the distilled refiner), train_refiner.py --kd_weight 0 --ce_weight 1 (its control: the same run with plain
cross-entropy and no teacher) and train_drafter.py, then miniature.evaluate over the factorial. A --recipe sets
the fine-tuning's learning rates and lengths as fractions of the pre-training's (RECIPES). Stages that do not
depend on each other run side by side with --jobs (worker processes). A stage whose output exists is skipped
and an interrupted one resumes from its last checkpoint, so running the command again continues where it
stopped. WORK/ckpt/ holds the base models, WORK/RECIPE/ckpt/ the recipe's models beside copies of them, under
the names miniature.evaluate and miniature.demo read; --ship copies the base models and the recipe's pair of
--ship_draft_steps (fine-tuning seed 0) into miniature/checkpoints/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import torch

import train_drafter
import train_refiner
import train_var
import train_vqvae
from cli.args import exit_code, int_list

from . import evaluate, shapes, train_classifier
from .files import SHIPPED, MiniatureFiles, suffix


@dataclass(frozen=True)
class Sizes:
    train_per_class: int = 3000
    val_per_class: int = 300
    image_size: int = 16
    vqvae_steps: int = 1200
    classifier_steps: int = 400
    classifier_batch: int = 64
    large_depth: int = 6
    small_depth: int = 2
    width: int = 64
    large_steps: int = 2000
    small_steps: int = 2000
    batch_size: int = 32
    vocab_size: int = 256
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    draft_steps: tuple[int, ...] = (2, 3, 4)
    eval_per_class: int = 300
    train_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # fine-tuning runs per cell (drafter, refiner, control)
    sample_seeds: tuple[int, ...] = (0, 1000, 2000)  # evaluation runs per untrained model (trained: the first)


PRETRAIN_LR = 1.6e-2  # base rate per 256 images of both VARs' pre-training (peak 2e-3 at batch 32)


@dataclass(frozen=True)
class Recipe:
    """CoDe's fine-tuning relative to the base models' pre-training: peak learning rates and steps as fractions of
    the pre-training ones (the refiner's and its control's of the small VAR, the drafter's of the large one)."""
    drafter_lr: float
    drafter_steps: float
    drafter_wd: float
    refiner_lr: float
    refiner_steps: float

    def steps(self, sizes: Sizes) -> tuple[int, int]:
        """(drafter steps, refiner steps); at least one each."""
        return (max(1, round(self.drafter_steps * sizes.large_steps)),
                max(1, round(self.refiner_steps * sizes.small_steps)))


RECIPES = {
    # the paper's ratios: drafter at 1/100 of the pre-training lr for 5% of its length, refiner at 1/10 for 25%
    "paper": Recipe(drafter_lr=0.01, drafter_steps=0.05, drafter_wd=0.08, refiner_lr=0.1, refiner_steps=0.25),
    # the miniature's first recipe: refiner at the full pre-training lr for 50% more steps, drafter at 1/8 for 10%
    "strong": Recipe(drafter_lr=0.125, drafter_steps=0.1, drafter_wd=0.05, refiner_lr=1.0, refiner_steps=0.5),
}

SAVE_EVERY = 250  # steps between training checkpoints: what an interrupted stage loses at most

PRESETS = {
    "full": Sizes(),
    "smoke": Sizes(train_per_class=8, val_per_class=2, vqvae_steps=3, classifier_steps=2, classifier_batch=8,
                   large_steps=3, small_steps=3, batch_size=8, vocab_size=64,
                   draft_steps=(2,), eval_per_class=2, train_seeds=(0, 1), sample_seeds=(0, 1000)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="outputs/miniature", help="data, runs, checkpoints and the table (default %(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full", help="sizes (default %(default)s)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="paper",
                   help="fine-tuning recipe (default %(default)s: the paper's learning-rate ratios and lengths); "
                        "its runs, checkpoints and evaluation go to WORK/RECIPE/")
    p.add_argument("--draft_steps", type=int_list, default=None, help="the N to fine-tune and evaluate (default: "
                                                                      "the preset's, 2,3,4 for full)")
    p.add_argument("--train_seeds", type=int_list, default=None, help="fine-tuning seeds (default: the preset's, "
                                                                      "0,1,2,3,4 for full)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch per stage (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="independent stages run side by side in this many worker "
                                                       "processes (2 on 2 cores, with --threads 1; default 1)")
    p.add_argument("--reuse_shipped", action="store_true",
                   help="start from the shipped tokenizer, judge and base VARs (miniature/checkpoints): only the "
                        "fine-tuning, the control and the evaluation run (with --preset full)")
    p.add_argument("--ship", action="store_true", help="copy the base models and the recipe's fine-tuned pair "
                                                       "(fine-tuning seed 0) into miniature/checkpoints/")
    p.add_argument("--ship_draft_steps", type=int, default=3, help="N of the fine-tuned pair shipped (default 3)")
    p.add_argument("--ship_dir", default=str(SHIPPED), help=argparse.SUPPRESS)  # tests ship elsewhere
    args = p.parse_args(argv)
    K = len(PRESETS[args.preset].patch_nums)
    if args.draft_steps is not None and not all(1 <= n < K for n in args.draft_steps):
        p.error(f"--draft_steps {','.join(map(str, args.draft_steps))}: each N must be in 1..{K - 1} ({K} scales)")
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    """The preset's sizes, with --draft_steps and --train_seeds where given."""
    sizes = PRESETS[args.preset]
    return replace(sizes, draft_steps=tuple(args.draft_steps or sizes.draft_steps),
                   train_seeds=tuple(sizes.train_seeds if args.train_seeds is None else args.train_seeds))


def common(out: Path, steps: int, threads: int, batch_size: int) -> list[str]:
    """Flags of the from-scratch scripts; an interrupted run resumes from its last checkpoint."""
    return ["--output_dir", str(out), "--max_steps", str(steps), "--batch_size", str(batch_size), "--threads",
            str(threads), "--log_every", "100", "--save_every", str(SAVE_EVERY), "--resume", "auto"]


def finetune_args(data: Path, files: MiniatureFiles, out: Path, n: int, depth: int, steps: int, sizes: Sizes) -> list[str]:
    """The flags train_drafter.py and train_refiner.py share here: a plain CPU run of `steps` steps."""
    return ["--depth", str(depth), "--draft_steps", str(n), "--data_path", str(data), "--vae", str(files.vqvae),
            "--output_dir", str(out), "--max_steps", str(steps), "--batch_size", str(sizes.batch_size),
            "--grad_accum", "1", "--drop_path", "0", "--num_workers", "0", "--device", "cpu", "--log_every", "100",
            "--save_every", str(SAVE_EVERY), "--resume", "auto"]


def lr(fraction: float) -> str:
    return f"{PRETRAIN_LR * fraction:.3g}"


def drafter_argv(data: Path, files: MiniatureFiles, out: Path, n: int, sizes: Sizes, recipe: Recipe,
                 seed: int) -> list[str]:
    """The large VAR specialised on scales 1..N."""
    return [*finetune_args(data, files, out, n, sizes.large_depth, recipe.steps(sizes)[0], sizes),
            "--init", str(files.large), "--lr", lr(recipe.drafter_lr), "--wd", str(recipe.drafter_wd), "--seed",
            str(seed)]


def refiner_argv(data: Path, files: MiniatureFiles, out: Path, n: int, sizes: Sizes, recipe: Recipe,
                 seed: int) -> list[str]:
    """The small VAR distilled from the large one on every scale (scales 1..N weighted by lambda)."""
    return [*finetune_args(data, files, out, n, sizes.small_depth, recipe.steps(sizes)[1], sizes),
            "--init", str(files.small), "--teacher", str(files.large), "--teacher_depth", str(sizes.large_depth),
            "--lr", lr(recipe.refiner_lr), "--wd", "0.0", "--seed", str(seed)]


def control_argv(data: Path, files: MiniatureFiles, out: Path, n: int, sizes: Sizes, recipe: Recipe,
                 seed: int) -> list[str]:
    """The control for distillation: the refiner's model, steps, data order, optimiser and per-scale weights, but
    plain cross-entropy against the ground-truth tokens and no teacher."""
    return [*finetune_args(data, files, out, n, sizes.small_depth, recipe.steps(sizes)[1], sizes),
            "--init", str(files.small), "--kd_weight", "0", "--ce_weight", "1", "--lr", lr(recipe.refiner_lr),
            "--wd", "0.0", "--seed", str(seed)]


@dataclass(frozen=True)
class Script:
    """A stage's script: its own parse_args and main (module-level functions, so that a Task pickles)."""
    parse_args: Callable[[list[str]], argparse.Namespace]
    main: Callable[[argparse.Namespace], object]


SHAPES, VQVAE, CLASSIFIER = (Script(m.parse_args, m.main) for m in (shapes, train_vqvae, train_classifier))
VAR, DRAFTER, REFINER = (Script(m.parse_args, m.main) for m in (train_var, train_drafter, train_refiner))


@dataclass(frozen=True)
class Task:
    """One stage: the script run with argv, then `produced` copied to `target` (skipped if it exists)."""
    name: str
    script: Script
    argv: list[str]
    produced: Path
    target: Path


def run_task(task: Task, threads: int) -> tuple[int, float]:
    """(exit status, seconds); a top-level function, so that a spawned worker process can run it."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    status = exit_code(task.script.main, task.script.parse_args(task.argv))
    if status == 0 and task.produced != task.target:
        copy(task.produced, task.target)
    return status, time.perf_counter() - start


def waves(work: Path, sizes: Sizes, threads: int) -> list[list[Task]]:
    """The stages in order; the tasks of one wave do not depend on each other."""
    data, runs = work / "data", work / "runs"
    files = MiniatureFiles(work / "ckpt", sizes.large_depth, sizes.small_depth)
    make_data = Task("data", SHAPES, [
        "--out", str(data), "--train_per_class", str(sizes.train_per_class), "--val_per_class",
        str(sizes.val_per_class), "--size", str(sizes.image_size), "--quiet"], data / "val", data / "val")
    tokenizer_and_judge = [
        Task("vqvae", VQVAE, ["--data_path", str(data), "--vocab_size", str(sizes.vocab_size),
                                      "--patch_nums", ",".join(map(str, sizes.patch_nums)),
                                      *common(runs / "vqvae", sizes.vqvae_steps, threads, sizes.batch_size)],
             runs / "vqvae" / "vqvae.pth", files.vqvae),
        Task("classifier", CLASSIFIER, ["--data_path", str(data), "--image_size", str(sizes.image_size),
                                                *common(runs / "classifier", sizes.classifier_steps, threads,
                                                        sizes.classifier_batch)],
             runs / "classifier" / "classifier.pth", files.classifier)]
    pretraining = [
        Task(f"var d{depth}", VAR, ["--data_path", str(data), "--vae", str(files.vqvae), "--depth", str(depth),
                                    "--width", str(sizes.width), "--lr", lr(1.0),
                                    *common(runs / f"var_d{depth}", steps, threads, sizes.batch_size)],
             runs / f"var_d{depth}" / f"var_d{depth}.pth", target)
        for depth, steps, target in ((sizes.large_depth, sizes.large_steps, files.large),
                                     (sizes.small_depth, sizes.small_steps, files.small))]
    return [[make_data], tokenizer_and_judge, pretraining]


def finetuning_wave(data: Path, base: MiniatureFiles, work: Path, sizes: Sizes, recipe: Recipe) -> list[Task]:
    """Per training seed and N: the refiner, its control and the drafter (the longest runs first, so that parallel
    jobs finish together); seed by seed, so that an interrupted run leaves whole seeds."""
    files, runs, tasks = MiniatureFiles(work / "ckpt", sizes.large_depth, sizes.small_depth), work / "runs", []
    for seed in sizes.train_seeds:
        for n in sizes.draft_steps:
            for role, script, make_argv, target in (
                    ("refiner", REFINER, refiner_argv, files.refiner(n, seed)),
                    ("control", REFINER, control_argv, files.control(n, seed)),
                    ("drafter", DRAFTER, drafter_argv, files.drafter(n, seed))):
                out = runs / f"{role}_{n}{suffix(seed)}"
                produced = out / f"{'drafter' if role == 'drafter' else 'refiner'}_{n}.pth"
                tasks.append(Task(f"{role} N={n} seed {seed}", script,
                                  make_argv(data, base, out, n, sizes, recipe, seed), produced, target))
    return tasks


def run_wave(wave: list[Task], pool: Executor | None, threads: int, log: list[str]) -> None:
    """Run the tasks whose target is missing, side by side in the pool's worker processes; stop on a failure."""
    todo = [t for t in wave if not t.target.exists()]
    for t in wave:
        if t not in todo:
            print(f"[{t.name}] exists: {t.target}", flush=True)
    if pool is not None and len(todo) > 1:
        results = list(pool.map(run_task, todo, [threads] * len(todo)))
    else:
        results = [run_task(t, threads) for t in todo]
    for t, (status, seconds) in zip(todo, results):
        if status != 0 or not t.target.exists():
            raise SystemExit(f"[{t.name}] failed (status {status}); see its output above and {t.produced.parent}")
        log.append(f"{t.name}: {seconds:.0f} s")
        print(f"[{t.name}] done in {seconds:.0f} s -> {t.target}", flush=True)


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def reuse(shipped: MiniatureFiles, files: MiniatureFiles) -> None:
    """The shipped tokenizer, judge and base VARs in place of their stages (a stage whose output exists is skipped)."""
    for src, dst in zip(base_files(shipped), base_files(files)):
        if not dst.exists():
            copy(src, dst)
            print(f"reusing the shipped {src.name} ({src}) as {dst}", flush=True)


def base_files(files: MiniatureFiles) -> tuple[Path, ...]:
    return files.vqvae, files.classifier, files.large, files.small


def ship(files: MiniatureFiles, n: int, to: Path) -> None:
    for src in (*base_files(files), files.drafter(n), files.refiner(n)):
        copy(src, to / src.name)
        print(f"shipped {to / src.name} ({src.stat().st_size / 2**20:.1f} MB)")


def train(args: argparse.Namespace, log: list[str]) -> tuple[Sizes, MiniatureFiles, Path]:
    """Every training stage: the base models in WORK/ckpt, the recipe's fine-tuning in WORK/RECIPE/ckpt (beside
    copies of the base models, so that the folder holds every model of the evaluation)."""
    sizes, work = sizes_of(args), Path(args.work)
    base = MiniatureFiles(work / "ckpt", sizes.large_depth, sizes.small_depth)
    if args.reuse_shipped:
        reuse(MiniatureFiles(SHIPPED, sizes.large_depth, sizes.small_depth), base)
    mine = MiniatureFiles(work / args.recipe / "ckpt", sizes.large_depth, sizes.small_depth)
    # one pool for every wave: its workers start once (each start imports torch and the scripts)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else nullcontext() as pool:
        for wave in waves(work, sizes, args.threads):
            run_wave(wave, pool, args.threads, log)
        for src, dst in zip(base_files(base), base_files(mine)):
            copy(src, dst)
        run_wave(finetuning_wave(work / "data", base, work / args.recipe, sizes, RECIPES[args.recipe]), pool,
                 args.threads, log)
    return sizes, mine, work / args.recipe


def recipe_note(name: str, sizes: Sizes) -> dict:
    """What the evaluation's tables say about the runs they come from."""
    r = RECIPES[name]
    d_steps, r_steps = r.steps(sizes)
    return {"recipe": name, "pretraining_lr": lr(1.0), "pretraining_steps": [sizes.large_steps, sizes.small_steps],
            "drafter": {"lr": lr(r.drafter_lr), "steps": d_steps, "wd": r.drafter_wd},
            "refiner": {"lr": lr(r.refiner_lr), "steps": r_steps, "wd": 0.0},
            "batch_size": sizes.batch_size}


def evaluation_argv(args: argparse.Namespace, sizes: Sizes, files: MiniatureFiles, work: Path) -> list[str]:
    """miniature.evaluate's flags for the recipe's models."""
    return ["--ckpt_dir", str(files.root), "--data_path", str(Path(args.work) / "data"), "--out", str(work / "eval"),
            "--draft_steps", ",".join(map(str, sizes.draft_steps)), "--per_class", str(sizes.eval_per_class),
            "--large_depth", str(sizes.large_depth), "--small_depth", str(sizes.small_depth), "--train_seeds",
            ",".join(map(str, sizes.train_seeds)), "--seeds", ",".join(map(str, sizes.sample_seeds)),
            "--threads", str(args.threads), "--jobs", str(args.jobs), "--note",
            json.dumps(recipe_note(args.recipe, sizes))]


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    start, log = time.perf_counter(), []
    sizes, files, work = train(args, log)
    evaluate.main(evaluate.parse_args(evaluation_argv(args, sizes, files, work)))
    if args.ship:
        ship(files, args.ship_draft_steps, Path(args.ship_dir))
    print(f"stage times: {'; '.join(log) or 'all stages existed'}; total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
