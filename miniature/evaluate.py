"""Score every configuration of the miniature, with intervals: the large and the small VAR, CoDe training-free,
fine-tuned and with the control refiner, per N; and draw quality against time per image.

    python -m miniature.evaluate --ckpt_dir outputs/miniature/ckpt --data_path outputs/miniature/data \\
        --draft_steps 2,3,4 --train_seeds 0,1,2 --seeds 0,1000,2000

Every model configuration draws --per_class images of every class once per sampling seed (batch i of a run at
seed s + i); fine-tuned pairs and control refiners exist once per fine-tuning seed (drafter_N_s<seed>.pth, ...).
The classifier (ckpt_dir/classifier.pth) scores each run: accuracy = how often it names the requested class, a
Frechet distance of its penultimate features against the real images of DATA_PATH/val, and the time per image
with and without the VQVAE decoder (CPU times on a shared machine are noisy: compare within one run). A setting's
mean and 95% interval come from its independent runs (miniature.stats). Two reference rows: real training
images (the Frechet distance's floor at this sample size) and the VQVAE's reconstructions (the ceiling any
generator reaches through this tokenizer).

Writes, in OUT: results.jsonl (one line per run; a rerun with the same sampling settings skips the runs it
holds), table.md / table.csv (mean and interval per setting), orderings.md (which orderings hold beyond the
noise), tradeoff.png (quality against ms/image; needs matplotlib, skipped without it), overview.png (one
sample of every class per setting) and grid_<setting>.png (two samples of every class).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cli.args import UsageError, exit_on_error, int_list, positive_int, sampling_config, setup_logging
from cli.timing import Timing, timed_generation
from code import CollaborativeDecoder, SamplingConfig
from models import load_vae, load_var
from utils.images import save_grid

from .classifier import load_classifier
from .files import SHIPPED, MiniatureFiles, add_sampling_args
from .figure import draw_tradeoff
from .metrics import accuracy, classify, frechet_distance, load_split
from .stats import Estimate, difference, estimate, verdict

KINDS = ("large", "small", "training-free", "fine-tuned", "control")


@dataclass(frozen=True)
class Setting:
    """A model configuration: which checkpoints, where the scales are split, from which fine-tuning seed."""
    name: str  # e.g. "CoDe N=3 fine-tuned"; shared by the fine-tuning seeds of one setting
    kind: str  # one of KINDS
    n: int | None  # draft steps (None for one model)
    files: tuple[Path, ...]  # models, drafter first
    train_seed: int | None = None


@dataclass
class Run:
    """The scores of one setting at one sampling seed."""
    name: str
    kind: str
    n: int | None
    train_seed: int | None
    sample_seed: int
    accuracy: float
    frechet: float
    ms_per_image: float  # transformer passes only (the paper's latency)
    ms_per_image_decoded: float  # with the VQVAE decoder
    config: str  # the sampling settings and sample count: runs of other settings are not reused


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_dir", default=str(SHIPPED), help="the miniature's checkpoints (default: the shipped ones)")
    p.add_argument("--data_path", required=True, help="the shapes folder; DATA_PATH/val is the reference")
    p.add_argument("--draft_steps", type=int_list, default=[2, 3, 4], help="N values for CoDe (default 2,3,4)")
    p.add_argument("--train_seeds", type=int_list, default=[0], help="fine-tuning seeds whose pairs and controls "
                                                                     "to score, where present (default 0)")
    p.add_argument("--seeds", type=int_list, default=[0], help="sampling seeds: one run of every setting each "
                                                               "(default 0)")
    p.add_argument("--large_depth", type=positive_int, default=6, help="the large VAR is var_d<depth>.pth (default 6)")
    p.add_argument("--small_depth", type=positive_int, default=2, help="the small VAR is var_d<depth>.pth (default 2)")
    p.add_argument("--per_class", type=positive_int, default=50, help="images per class and run (default 50)")
    p.add_argument("--batch_size", type=positive_int, default=100, help="images per generation call (default 100)")
    add_sampling_args(p)
    p.add_argument("--out", default="outputs/miniature/eval", help="results, tables and figures (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    return p.parse_args(argv)


def settings(files: MiniatureFiles, draft_steps: list[int], train_seeds: list[int], K: int) -> list[Setting]:
    large, small = f"d{files.large_depth}", f"d{files.small_depth}"
    out = [Setting(f"large VAR ({large})", "large", None, (files.large,)),
           Setting(f"small VAR ({small})", "small", None, (files.small,))]
    for n in draft_steps:
        if not 1 <= n < K:
            raise UsageError(f"--draft_steps {n} is not in 1..{K - 1}")
        out.append(Setting(f"CoDe N={n} training-free", "training-free", n, (files.large, files.small)))
    for kind, pair in (("fine-tuned", lambda n, s: (files.drafter(n, s), files.refiner(n, s))),
                       ("control", lambda n, s: (files.large, files.control(s)))):
        for n in draft_steps:
            out += [Setting(f"CoDe N={n} {kind}", kind, n, pair(n, s), s) for s in train_seeds
                    if all(f.is_file() for f in pair(n, s))]
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
                   frechet_distance(feats, self.ref_feats), 1000 * gen_s / n, 1000 * total_s / n, self.config)

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


# ---- results --------------------------------------------------------------------------------------------
def load_runs(path: Path) -> list[Run]:
    if not path.is_file():
        return []
    runs = []
    for line in path.read_text().splitlines():
        try:
            runs.append(Run(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a line torn by a kill: that run is done again
    return runs


def replicates(runs: list[Run], name: str, field: str) -> list[float]:
    """One value per independent run of a setting: per fine-tuning seed (averaged over sampling seeds) if it
    has them, else per sampling seed."""
    mine = [r for r in runs if r.name == name]
    seeds = sorted({r.train_seed for r in mine if r.train_seed is not None})
    if not seeds:
        return [getattr(r, field) for r in mine]
    return [sum(getattr(r, field) for r in mine if r.train_seed == s) / sum(r.train_seed == s for r in mine)
            for s in seeds]


@dataclass
class Summary:
    name: str
    kind: str
    n: int | None
    runs: int
    accuracy: Estimate
    frechet: Estimate
    ms: Estimate
    ms_decoded: Estimate


def summarize(runs: list[Run]) -> list[Summary]:
    names = list(dict.fromkeys(r.name for r in runs))
    out = []
    for name in names:
        first = next(r for r in runs if r.name == name)
        out.append(Summary(name, first.kind, first.n, sum(r.name == name for r in runs),
                           *(estimate(replicates(runs, name, f))
                             for f in ("accuracy", "frechet", "ms_per_image", "ms_per_image_decoded"))))
    return out


def comparisons(summaries: list[Summary]) -> list[tuple[str, str, str]]:
    """(better, worse, claim) pairs: the paper's orderings (Table 2) and the control's."""
    by = {(s.kind, s.n): s.name for s in summaries}
    large, small = by.get(("large", None)), by.get(("small", None))
    pairs = [(large, small, "the large model beats the small one")]
    ns = sorted({s.n for s in summaries if s.n is not None})
    for n in ns:
        tf, ft, ctl = by.get(("training-free", n)), by.get(("fine-tuned", n)), by.get(("control", n))
        pairs += [(ft, tf, f"N={n}: fine-tuning beats training-free CoDe"),
                  (ft, ctl, f"N={n}: fine-tuning beats the control (extra steps of plain cross-entropy)"),
                  (ctl, tf, f"N={n}: the control beats training-free CoDe"),
                  (tf, small, f"N={n}: training-free CoDe beats the small model"),
                  (large, tf, f"N={n}: the large model beats training-free CoDe"),
                  (large, ft, f"N={n}: the large model beats fine-tuned CoDe")]
    if len(ns) > 1:
        for kind in ("training-free", "fine-tuned"):
            pairs.append((by.get((kind, ns[-1])), by.get((kind, ns[0])),
                          f"{kind} CoDe: N={ns[-1]} beats N={ns[0]} (more drafted scales)"))
    return [(a, b, claim) for a, b, claim in pairs if a and b]


def write_outputs(runs: list[Run], references: list[Run], out: Path, header: str) -> list[Summary]:
    summaries = summarize(runs)
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "runs", "accuracy", "accuracy_95", "frechet", "frechet_95", "ms_per_image",
                    "ms_per_image_95", "ms_per_image_decoded"])
        for r in references:
            w.writerow([r.name, 1, r.accuracy, "", r.frechet, "", "", "", ""])
        for s in summaries:
            w.writerow([s.name, s.runs, s.accuracy.mean, s.accuracy.half, s.frechet.mean, s.frechet.half, s.ms.mean,
                        s.ms.half, s.ms_decoded.mean])
    lines = [header, "", "| setting | runs | accuracy | Frechet distance | ms/image (VAR) | ms/image (with decoder) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | 1 | {r.accuracy:.1%} | {r.frechet:.2f} | - | - |" for r in references]
    lines += [f"| {s.name} | {s.runs} | {s.accuracy.text('{:.1f}', 100)}% | {s.frechet.text()} | {s.ms.text()} | "
              f"{s.ms_decoded.mean:.2f} |" for s in summaries]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    orderings = ["| claim | accuracy difference (points) | verdict | Frechet difference | verdict |",
                 "|---|---:|---|---:|---|"]
    for better, worse, claim in comparisons(summaries):
        acc = difference(replicates(runs, better, "accuracy"), replicates(runs, worse, "accuracy"))
        fd = difference(replicates(runs, better, "frechet"), replicates(runs, worse, "frechet"))
        orderings.append(f"| {claim} | {acc.text('{:+.1f}', 100)} | {verdict(acc, True)} | {fd.text('{:+.2f}')} | "
                         f"{verdict(fd, False)} |")
    (out / "orderings.md").write_text("\n".join(orderings) + "\n")
    print("\n".join(lines + [""] + orderings))
    return summaries


def main(args: argparse.Namespace) -> list[Summary]:
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = MiniatureFiles(Path(args.ckpt_dir), args.large_depth, args.small_depth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ev = Evaluator(args, files)
    todo = settings(files, args.draft_steps, args.train_seeds, ev.K)
    results = out / "results.jsonl"
    have = {(r.name, r.train_seed, r.sample_seed): r for r in load_runs(results) if r.config == ev.config}
    runs = []
    for s in todo:
        for seed in args.seeds:
            key = (s.name, s.train_seed, seed)
            if key not in have:
                have[key] = ev.run(s, seed)
                with open(results, "a") as f:
                    f.write(json.dumps(asdict(have[key])) + "\n")
                r = have[key]
                print(f"{s.name} (fine-tuning seed {s.train_seed}, sampling seed {seed}): accuracy {r.accuracy:.1%},"
                      f" Frechet {r.frechet:.2f}, {r.ms_per_image:.2f} ms/image", flush=True)
            runs.append(have[key])
    header = (f"{args.per_class} images per class and run, cfg {args.cfg}, top_k {args.top_k}, top_p {args.top_p}, "
              f"temperature {args.temperature}; sampling seeds {args.seeds}, fine-tuning seeds {args.train_seeds}; "
              f"mean ± 95% interval over independent runs; reference: {ev.num_reference} real validation images")
    summaries = write_outputs(runs, ev.references(), out, header)
    chosen = [s for s in todo if s.train_seed in (None, 0) and (s.n is None or s.n == args.draft_steps[len(
        args.draft_steps) // 2])]
    ev.overview(chosen, out / "overview.png")
    print(f"overview rows: {', '.join(s.name for s in chosen)}")
    print(draw_tradeoff(summaries, out / "tradeoff.png"))
    return summaries


if __name__ == "__main__":
    exit_on_error(main, parse_args())
