"""Score every configuration of the miniature: large VAR, small VAR, training-free and fine-tuned CoDe.

    python -m miniature.evaluate --ckpt_dir outputs/miniature/ckpt --data_path outputs/miniature/data --draft_steps 2,3,4

Every setting draws --per_class images of every class with the same seeds; the classifier (ckpt_dir/
classifier.pth) scores them: accuracy = how often it names the requested class, Frechet distance of its
penultimate features against the real images of DATA_PATH/val, and the time per image with and without the
VQVAE decoder (CPU times on a shared machine are noisy: compare within one run). Two reference rows: real
training images (the Frechet distance's floor at this sample size) and the VQVAE's reconstructions of them
(the ceiling any generator reaches through this tokenizer). Writes OUT/table.md, OUT/table.csv and a grid of
samples per setting (two per class) in OUT/grid_<setting>.png.
"""
from __future__ import annotations

import argparse
import csv
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cli.args import UsageError, exit_on_error, int_list, positive_int, sampling_config, setup_logging
from cli.timing import Timing, timed_generation
from code import CollaborativeDecoder, SamplingConfig
from models import load_vae, load_var
from utils.images import make_grid, save_png, to_uint8

from .classifier import load_classifier
from .files import SHIPPED, MiniatureFiles, add_sampling_args
from .metrics import accuracy, classify, frechet_distance, load_split


@dataclass
class Setting:
    """A configuration to score: which checkpoints, and where the scales are split between them."""
    name: str
    files: list[Path]  # models, drafter first
    draft_steps: list[int]  # one boundary per model but the last (code.chain_stops)


@dataclass
class Row:
    setting: str
    accuracy: float
    frechet: float
    ms_per_image: float  # transformer passes only (the paper's latency)
    ms_per_image_decoded: float  # with the VQVAE decoder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_dir", default=str(SHIPPED), help="the miniature's checkpoints (default: the shipped ones)")
    p.add_argument("--data_path", required=True, help="the shapes folder; DATA_PATH/val is the reference")
    p.add_argument("--draft_steps", type=int_list, default=[2, 3, 4], help="N values for CoDe (default 2,3,4)")
    p.add_argument("--large_depth", type=positive_int, default=6, help="the large VAR is var_d<depth>.pth (default 6)")
    p.add_argument("--small_depth", type=positive_int, default=2, help="the small VAR is var_d<depth>.pth (default 2)")
    p.add_argument("--per_class", type=positive_int, default=50, help="images per class and setting (default 50)")
    p.add_argument("--batch_size", type=positive_int, default=100, help="images per generation call (default 100)")
    add_sampling_args(p)
    p.add_argument("--seed", type=int, default=0, help="batch i is drawn with seed + i (default %(default)s)")
    p.add_argument("--out", default="outputs/miniature/eval", help="table and grids (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    return p.parse_args(argv)


def settings(files: MiniatureFiles, draft_steps: list[int], K: int) -> list[Setting]:
    large, small = f"d{files.large_depth}", f"d{files.small_depth}"
    out = [Setting(f"large VAR ({large})", [files.large], []), Setting(f"small VAR ({small})", [files.small], [])]
    for n in draft_steps:
        if not 1 <= n < K:
            raise UsageError(f"--draft_steps {n} is not in 1..{K - 1}")
        out.append(Setting(f"CoDe N={n} training-free", [files.large, files.small], [n]))
    for n in draft_steps:
        if files.drafter(n).is_file() and files.refiner(n).is_file():
            out.append(Setting(f"CoDe N={n} fine-tuned", [files.drafter(n), files.refiner(n)], [n]))
    return out


def timed_images(decoder: CollaborativeDecoder, labels: torch.Tensor, sampling: SamplingConfig,
                 seed: int) -> tuple[torch.Tensor, Timing]:
    """Images in [0, 1] of `labels` at `seed`, timed on the CPU (generation, then the VQVAE decoder)."""
    return timed_generation(torch.device("cpu"), labels.shape[0],
                            lambda: decoder.state(labels, seed=seed, sampling=sampling),
                            lambda state: decoder.decode(state.f_hat))


def generate_all(decoder: CollaborativeDecoder, labels: torch.Tensor, sampling: SamplingConfig,
                 args) -> tuple[torch.Tensor, float, float]:
    """Images in [0, 1] for `labels` in batches; seconds without and with the decoder."""
    images, gen_s, total_s = [], 0.0, 0.0
    for i, chunk in enumerate(labels.split(args.batch_size)):
        batch, timing = timed_images(decoder, chunk, sampling, args.seed + i)
        images.append(batch)
        gen_s, total_s = gen_s + timing.generate_s, total_s + timing.total_s
    return torch.cat(images), gen_s, total_s


def score(name: str, images: torch.Tensor, labels: torch.Tensor, clf, ref_feats, gen_s: float, total_s: float) -> Row:
    pred, feats = classify(clf, images)
    n = labels.shape[0]
    return Row(name, accuracy(pred, labels), frechet_distance(feats, ref_feats), 1000 * gen_s / n, 1000 * total_s / n)


def slug(name: str) -> str:
    """'CoDe N=3 fine-tuned' -> 'code_n3_fine_tuned'."""
    return "_".join(re.findall(r"[a-z0-9]+", name.lower().replace("=", "")))


def sample_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, path: Path) -> None:
    """Two images of every class, one class per column."""
    picks = [int(i) for c in range(num_classes) for i in (labels == c).nonzero()[:2, 0]]
    picks = picks[0::2] + picks[1::2]
    save_png(make_grid(to_uint8(images[picks]), nrow=num_classes, padding=1), path)


def reference_rows(vae, clf, args, ref_feats, size: int) -> list[Row]:
    """Real training images (per_class of each class) and their VQVAE reconstructions."""
    real, labels = load_split(Path(args.data_path) / "train", size, args.per_class)
    with torch.no_grad():
        recon = vae.tokens_to_img(vae.img_to_tokens(real * 2 - 1)).add(1).mul(0.5)
    return [score("real images (train)", real, labels, clf, ref_feats, 0.0, 0.0),
            score("VQVAE reconstructions", recon, labels, clf, ref_feats, 0.0, 0.0)]


def write_tables(rows: list[Row], out: Path, header: str) -> None:
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    lines = [header, "", "| setting | accuracy | Frechet distance | ms/image (VAR) | ms/image (with decoder) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        ms = f"{r.ms_per_image:.2f} | {r.ms_per_image_decoded:.2f}" if r.ms_per_image_decoded else "- | -"
        lines.append(f"| {r.setting} | {r.accuracy:.1%} | {r.frechet:.2f} | {ms} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(args: argparse.Namespace) -> list[Row]:
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = MiniatureFiles(Path(args.ckpt_dir), args.large_depth, args.small_depth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vae, clf = load_vae(files.vqvae), load_classifier(files.classifier)
    size, K = vae.config.image_size, vae.quantize.num_scales
    todo = settings(files, args.draft_steps, K)
    real_val, _ = load_split(Path(args.data_path) / "val", size)
    _, ref_feats = classify(clf, real_val)
    sampling = sampling_config(args, K, args.temperature)
    num_classes = clf.config.num_classes
    labels = torch.arange(num_classes).repeat(args.per_class)
    rows = reference_rows(vae, clf, args, ref_feats, size)
    for s in todo:
        decoder = CollaborativeDecoder(vae, [load_var(f) for f in s.files], s.draft_steps)
        images, gen_s, total_s = generate_all(decoder, labels, sampling, args)
        rows.append(score(s.name, images, labels, clf, ref_feats, gen_s, total_s))
        sample_grid(images, labels, num_classes, out / f"grid_{slug(s.name)}.png")
        print(f"{s.name}: accuracy {rows[-1].accuracy:.1%}, Frechet {rows[-1].frechet:.2f}", flush=True)
    header = (f"{args.per_class} images per class and setting, cfg {args.cfg}, top_k {args.top_k}, top_p {args.top_p}, "
              f"temperature {args.temperature}, seed {args.seed}; reference: {len(real_val)} real validation images")
    write_tables(rows, out, header)
    return rows


if __name__ == "__main__":
    exit_on_error(main, parse_args())
