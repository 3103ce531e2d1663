"""Score every configuration of the miniature, with intervals: the large and the small VAR and, per N, CoDe's
factorial: drafter {base, specialised} x refiner {base, extra CE, distilled}.

    python -m miniature.evaluate --ckpt_dir outputs/miniature/paper/ckpt --data_path outputs/miniature/data \\
        --draft_steps 2,3,4 --train_seeds 0,1,2,3,4 --seeds 0,1000,2000 --jobs 2

The cells: the base drafter is the large VAR, the specialised one drafter_N_s<seed>.pth; the base refiner is the
small VAR, the extra-CE one control_N_s<seed>.pth (the refiner's training with plain cross-entropy and no
teacher), the distilled one refiner_N_s<seed>.pth. Base/base is training-free CoDe. A cell with a trained model
exists once per fine-tuning seed (seed 0 unmarked: drafter_N.pth) and is sampled once, at the first --seeds; the
untrained models are sampled at every --seeds. A run draws --per_class images of every class (batch i of a run
at seed s + i). The classifier (ckpt_dir/classifier.pth) scores each run: accuracy = how often it names the
requested class, a Frechet distance of its penultimate features against the real images of DATA_PATH/val, and
the time per image with and without the VQVAE decoder (CPU times on a shared machine are noisy: compare within
one run). Two reference rows: real training images (the Frechet distance's floor at this sample size) and the
VQVAE's reconstructions (the ceiling any generator reaches through this tokenizer).

Writes, in OUT: results.jsonl (one line per run; a rerun with the same sampling settings skips the runs it
holds) and meta.json, the tables and tradeoff.png of miniature.report (which rebuilds them from those two
files), overview.png (one sample of every class per setting at the middle N, fine-tuning seed 0) and
grid_<setting>.png (two samples of every class).
"""
from __future__ import annotations

import argparse
import json
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from cli.args import UsageError, exit_on_error, int_list, positive_int, sampling_config, setup_logging
from cli.timing import Timing, timed_generation
from code import CollaborativeDecoder, SamplingConfig
from models import load_vae, load_var
from utils.images import save_grid

from .classifier import load_classifier
from .files import SHIPPED, MiniatureFiles, add_sampling_args
from .metrics import accuracy, classify, frechet_distance, load_split
from .report import DRAFTERS, REFINERS, Run, Summary, cell_name, load_runs, write_report


@dataclass(frozen=True)
class Setting:
    """A model configuration: which checkpoints, where the scales are split, from which fine-tuning seed."""
    name: str  # e.g. "large VAR (d6)"; shared by the fine-tuning seeds of one cell
    kind: str  # "large", "small" or "code"
    n: int | None  # draft steps (None for one model)
    files: tuple[Path, ...]  # models, drafter first
    train_seed: int | None = None
    drafter: str | None = None
    refiner: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_dir", default=str(SHIPPED), help="the miniature's checkpoints (default: the shipped ones)")
    p.add_argument("--data_path", required=True, help="the shapes folder; DATA_PATH/val is the reference")
    p.add_argument("--draft_steps", type=int_list, default=[2, 3, 4], help="N values for CoDe (default 2,3,4)")
    p.add_argument("--train_seeds", type=int_list, default=[0], help="fine-tuning seeds whose models to score, "
                                                                     "where present (default 0)")
    p.add_argument("--seeds", type=int_list, default=[0], help="sampling seeds: one run of every setting each "
                                                               "(default 0)")
    p.add_argument("--large_depth", type=positive_int, default=6, help="the large VAR is var_d<depth>.pth (default 6)")
    p.add_argument("--small_depth", type=positive_int, default=2, help="the small VAR is var_d<depth>.pth (default 2)")
    p.add_argument("--per_class", type=positive_int, default=50, help="images per class and run (default 50)")
    p.add_argument("--batch_size", type=positive_int, default=100, help="images per generation call (default 100)")
    add_sampling_args(p)
    p.add_argument("--out", default="outputs/miniature/eval", help="results, tables and figures (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs side by side in worker processes (default 1)")
    p.add_argument("--note", default="{}", help="a JSON object written into OUT/meta.json (the recipe; default {})")
    return p.parse_args(argv)


def settings(files: MiniatureFiles, draft_steps: list[int], train_seeds: list[int], K: int) -> list[Setting]:
    large, small = f"d{files.large_depth}", f"d{files.small_depth}"
    out = [Setting(f"large VAR ({large})", "large", None, (files.large,)),
           Setting(f"small VAR ({small})", "small", None, (files.small,))]
    for n in draft_steps:
        if not 1 <= n < K:
            raise UsageError(f"--draft_steps {n} is not in 1..{K - 1}")
    for n in draft_steps:
        for d in DRAFTERS:
            for r in REFINERS:
                name = cell_name(n, d, r)
                if (d, r) == ("base", "base"):
                    out.append(Setting(name, "code", n, (files.large, files.small), None, d, r))
                    continue
                for s in train_seeds:
                    pair = (files.drafter(n, s) if d == "specialised" else files.large,
                            {"base": files.small, "extra CE": files.control(n, s), "distilled": files.refiner(n, s)}[r])
                    if all(f.is_file() for f in pair):
                        out.append(Setting(name, "code", n, pair, s, d, r))
    return out


def timed_images(decoder: CollaborativeDecoder, labels: torch.Tensor, sampling: SamplingConfig,
                 seed: int) -> tuple[torch.Tensor, Timing]:
    """Images in [0, 1] of `labels` at `seed`, timed on the CPU (generation, then the VQVAE decoder)."""
    return timed_generation(torch.device("cpu"), labels.shape[0],
                            lambda: decoder.state(labels, seed=seed, sampling=sampling),
                            lambda state: decoder.decode(state.f_hat))


def generate_all(decoder: CollaborativeDecoder, labels: torch.Tensor, sampling: SamplingConfig, seed: int,
                 batch_size: int) -> tuple[torch.Tensor, float, float]:
    """Images in [0, 1] for `labels` in batches (batch i at seed + i); seconds without and with the decoder."""
    images, gen_s, total_s = [], 0.0, 0.0
    for i, chunk in enumerate(labels.split(batch_size)):
        batch, timing = timed_images(decoder, chunk, sampling, seed + i)
        images.append(batch)
        gen_s, total_s = gen_s + timing.generate_s, total_s + timing.total_s
    return torch.cat(images), gen_s, total_s


def slug(name: str) -> str:
    """'CoDe N=3 fine-tuned' -> 'code_n3_fine_tuned'."""
    return "_".join(re.findall(r"[a-z0-9]+", name.lower().replace("=", "")))


def sample_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, path: Path) -> None:
    """Two images of every class, one class per column."""
    picks = [int(i) for c in range(num_classes) for i in (labels == c).nonzero()[:2, 0]]
    picks = picks[0::2] + picks[1::2]
    save_grid(images[picks], path, nrow=num_classes, padding=1)


class Evaluator:
    """The tokenizer, the judge, the reference features and the sampling settings of one evaluation."""

    def __init__(self, args: argparse.Namespace, files: MiniatureFiles):
        self.args, self.out = args, Path(args.out)
        self.vae, self.clf = load_vae(files.vqvae), load_classifier(files.classifier)
        self.K, self.num_classes = self.vae.quantize.num_scales, self.clf.config.num_classes
        size = self.vae.config.image_size
        real_val, _ = load_split(Path(args.data_path) / "val", size)
        self.num_reference = len(real_val)
        _, self.ref_feats = classify(self.clf, real_val)
        self.sampling = sampling_config(args, self.K, args.temperature)
        self.labels = torch.arange(self.num_classes).repeat(args.per_class)
        self.config = json.dumps({"per_class": args.per_class, "batch_size": args.batch_size,
                                  **asdict(self.sampling)}, sort_keys=True)

    def decoder(self, s: Setting) -> CollaborativeDecoder:
        return CollaborativeDecoder(self.vae, [load_var(f) for f in s.files], [s.n] if s.n is not None else [])

    def run(self, s: Setting, seed: int) -> Run:
        images, gen_s, total_s = generate_all(self.decoder(s), self.labels, self.sampling, seed, self.args.batch_size)
        if s.train_seed in (None, 0) and seed == self.args.seeds[0]:
            sample_grid(images, self.labels, self.num_classes, self.out / f"grid_{slug(s.name)}.png")
        pred, feats = classify(self.clf, images)
        n = len(self.labels)
        return Run(s.name, s.kind, s.n, s.train_seed, seed, accuracy(pred, self.labels),
                   frechet_distance(feats, self.ref_feats), 1000 * gen_s / n, 1000 * total_s / n, self.config,
                   s.drafter, s.refiner)

    def references(self) -> list[Run]:
        """Real training images (per_class of each class) and their VQVAE reconstructions."""
        real, labels = load_split(Path(self.args.data_path) / "train", self.vae.config.image_size, self.args.per_class)
        with torch.no_grad():
            recon = self.vae.tokens_to_img(self.vae.img_to_tokens(real * 2 - 1)).add(1).mul(0.5)
        out = []
        for name, images in (("real images (train)", real), ("VQVAE reconstructions", recon)):
            pred, feats = classify(self.clf, images)
            out.append(Run(name, "reference", None, None, 0, accuracy(pred, labels),
                           frechet_distance(feats, self.ref_feats), 0.0, 0.0, self.config))
        return out

    def overview(self, chosen: list[Setting], path: Path) -> None:
        """One sample of every class (sampling seed --seeds[0]) per chosen setting: one row each, 4x enlarged."""
        labels = torch.arange(self.num_classes)
        rows = [self.decoder(s)(labels, seed=self.args.seeds[0], sampling=self.sampling) for s in chosen]
        save_grid(torch.cat(rows), path, nrow=self.num_classes, padding=1, upscale=4)


# ---- worker processes (--jobs) ----------------------------------------------------------------------------------
_worker: Evaluator | None = None  # one per worker process


def start_worker(args: argparse.Namespace, files: MiniatureFiles) -> None:
    global _worker
    if args.threads:
        torch.set_num_threads(args.threads)
    _worker = Evaluator(args, files)


def run_in_worker(item: tuple[Setting, int]) -> Run:
    return _worker.run(*item)


def run_all(ev: Evaluator, args: argparse.Namespace, files: MiniatureFiles, todo: list[tuple[Setting, int]]):
    """The runs of `todo`, in order, as they come; side by side in worker processes with --jobs."""
    if args.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(args.jobs, len(todo)), mp_context=get_context("spawn"),
                                 initializer=start_worker, initargs=(args, files)) as pool:
            yield from pool.map(run_in_worker, todo)
    else:
        yield from (ev.run(s, seed) for s, seed in todo)


def main(args: argparse.Namespace) -> list[Summary]:
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        note = json.loads(args.note)
    except ValueError as e:
        raise UsageError(f"--note is not JSON ({e}): give an object such as '{{\"recipe\": \"paper\"}}'") from None
    files = MiniatureFiles(Path(args.ckpt_dir), args.large_depth, args.small_depth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(args, files)
    chosen = settings(files, args.draft_steps, args.train_seeds, ev.K)
    results = out / "results.jsonl"
    have = {(r.name, r.train_seed, r.sample_seed): r for r in load_runs(results) if r.config == ev.config}
    wanted = [(s, seed) for s in chosen for seed in (args.seeds if s.train_seed is None else args.seeds[:1])]
    todo = [(s, seed) for s, seed in wanted if (s.name, s.train_seed, seed) not in have]
    for (s, seed), r in zip(todo, run_all(ev, args, files, todo)):
        have[(s.name, s.train_seed, seed)] = r
        with open(results, "a") as f:
            f.write(json.dumps(asdict(r)) + "\n")
        print(f"{s.name} (fine-tuning seed {s.train_seed}, sampling seed {seed}): accuracy {r.accuracy:.1%}, "
              f"Frechet {r.frechet:.2f}, {r.ms_per_image:.2f} ms/image", flush=True)
    references = [r for r in load_runs(results) if r.kind == "reference" and r.config == ev.config]
    if not references:
        references = ev.references()
        with open(results, "a") as f:
            f.writelines(json.dumps(asdict(r)) + "\n" for r in references)
    (out / "meta.json").write_text(json.dumps({"reference_images": ev.num_reference, **note}, indent=1) + "\n")
    runs = references + [have[(s.name, s.train_seed, seed)] for s, seed in wanted]
    summaries = write_report(runs, out, json.loads((out / "meta.json").read_text()))
    print((out / "table.md").read_text() + "\n" + (out / "effects.md").read_text())
    middle = args.draft_steps[len(args.draft_steps) // 2]
    rows = [s for s in chosen if s.train_seed in (None, 0) and s.n in (None, middle)]
    ev.overview(rows, out / "overview.png")
    print(f"overview rows: {', '.join(s.name for s in rows)}")
    return summaries


if __name__ == "__main__":
    exit_on_error(main, parse_args())
