"""The miniature's tables and figure from its per-run results, without any model: rebuild them with

    python -m miniature.report docs/miniature/paper docs/miniature/strong

Each folder holds results.jsonl (one line per sampling run, written by miniature.evaluate) and meta.json (the
recipe and the reference set); the command writes, beside them: table.md / table.csv (every setting),
factorial.md (per N, drafter {base, specialised} x refiner {base, extra CE, distilled}), effects.md (each factor,
its interactions and the paper's whole recipe, with intervals), orderings.md (the large and small VARs and CoDe
in pairs) and tradeoff.png (quality against time per image; needs matplotlib).

A setting's replicates are its independent runs: one per fine-tuning seed for a trained cell, one per sampling
seed for the untrained models (miniature.stats). An effect is a contrast of cells; the trained cells of one
fine-tuning seed share their models, so the contrast is taken seed by seed (a Student t over the seeds), and
the untrained cell, where it enters, adds its own runs (Welch).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .figure import draw_tradeoff
from .stats import Estimate, contrast, difference, estimate, verdict

DRAFTERS = ("base", "specialised")
REFINERS = ("base", "extra CE", "distilled")
BASE = ("base", "base")  # the training-free pair: no fine-tuning seed
PAPER = ("specialised", "distilled")  # the paper's fine-tuned pair
Cell = tuple[str, str]

EFFECTS: list[tuple[str, dict[Cell, float]]] = [
    ("drafter specialisation (specialised - base drafter, mean over the 3 refiners)",
     {(d, r): (1 if d == "specialised" else -1) / 3 for d in DRAFTERS for r in REFINERS}),
    ("extra refiner training (extra CE - base refiner, mean over the 2 drafters)",
     {**{(d, "extra CE"): 0.5 for d in DRAFTERS}, **{(d, "base"): -0.5 for d in DRAFTERS}}),
    ("distillation beyond extra training (distilled - extra CE refiner, mean over the 2 drafters)",
     {**{(d, "distilled"): 0.5 for d in DRAFTERS}, **{(d, "extra CE"): -0.5 for d in DRAFTERS}}),
    ("interaction: drafter specialisation x extra training",
     {("specialised", "extra CE"): 1, ("specialised", "base"): -1, ("base", "extra CE"): -1, BASE: 1}),
    ("interaction: drafter specialisation x distillation",
     {("specialised", "distilled"): 1, ("specialised", "extra CE"): -1, ("base", "distilled"): -1,
      ("base", "extra CE"): 1}),
    ("the paper's fine-tuning (specialised + distilled - training-free)", {PAPER: 1, BASE: -1}),
    ("the paper's fine-tuning - extra CE training of the refiner alone", {PAPER: 1, ("base", "extra CE"): -1}),
]


@dataclass
class Run:
    """The scores of one setting at one sampling seed."""
    name: str
    kind: str  # "reference", "large", "small" or "code"
    n: int | None
    train_seed: int | None
    sample_seed: int
    accuracy: float
    frechet: float
    ms_per_image: float  # transformer passes only (the paper's latency)
    ms_per_image_decoded: float  # with the VQVAE decoder
    config: str  # the sampling settings and sample count: runs of other settings are not reused
    drafter: str | None = None  # CoDe: one of DRAFTERS
    refiner: str | None = None  # CoDe: one of REFINERS


def cell_name(n: int, drafter: str, refiner: str) -> str:
    tag = " (training-free)" if (drafter, refiner) == BASE else " (fine-tuned)" if (drafter, refiner) == PAPER else ""
    return f"CoDe N={n}: {drafter} drafter, {refiner} refiner{tag}"


LATER_SETTINGS = {"more_smooth": False}  # sampling settings added after runs were recorded: what those runs used


def canonical_config(config: str) -> str:
    """A run's sampling settings, with the settings added later at the value runs recorded before had."""
    try:
        settings = json.loads(config)
    except ValueError:
        return config
    return json.dumps({**LATER_SETTINGS, **settings}, sort_keys=True) if isinstance(settings, dict) else config


def load_runs(path: Path) -> list[Run]:
    """The runs of a results.jsonl; a run that appears twice (same setting, seeds and sampling settings) counts
    once, so that a file assembled from two evaluations does not weigh it double."""
    if not path.is_file():
        return []
    runs: dict[tuple, Run] = {}
    for line in path.read_text().splitlines():
        try:
            r = Run(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a line torn by a kill: that run is done again
        r = replace(r, config=canonical_config(r.config))
        runs.setdefault((r.name, r.train_seed, r.sample_seed, r.config), r)
    return list(runs.values())


def per_seed(runs: list[Run], name: str, field: str) -> dict[int, float]:
    """A trained setting's value per fine-tuning seed (averaged over its sampling runs)."""
    out: dict[int, list[float]] = {}
    for r in runs:
        if r.name == name and r.train_seed is not None:
            out.setdefault(r.train_seed, []).append(getattr(r, field))
    return {s: sum(v) / len(v) for s, v in sorted(out.items())}


def replicates(runs: list[Run], name: str, field: str) -> list[float]:
    """One value per independent run of a setting: per fine-tuning seed if it has them, else per sampling seed."""
    seeds = per_seed(runs, name, field)
    return list(seeds.values()) if seeds else [getattr(r, field) for r in runs if r.name == name]


@dataclass
class Summary:
    name: str
    kind: str
    n: int | None
    runs: int  # the replicates the intervals count
    accuracy: Estimate
    frechet: Estimate
    ms: Estimate
    ms_decoded: Estimate
    series: str  # the figure's series: the model, or the CoDe cell


def summarize(runs: list[Run]) -> list[Summary]:
    out = []
    for name in dict.fromkeys(r.name for r in runs if r.kind != "reference"):
        first = next(r for r in runs if r.name == name)
        series = first.kind if first.kind != "code" else f"{first.drafter} drafter, {first.refiner} refiner"
        ests = [estimate(replicates(runs, name, f)) for f in ("accuracy", "frechet", "ms_per_image",
                                                              "ms_per_image_decoded")]
        out.append(Summary(name, first.kind, first.n, ests[0].n, *ests, series))
    return out


def header(runs: list[Run], meta: dict) -> str:
    config = json.loads(runs[0].config)
    sampled = sorted({r.sample_seed for r in runs if r.kind in ("large", "small")})
    trained = sorted({r.train_seed for r in runs if r.train_seed is not None})
    first = sorted({r.sample_seed for r in runs if r.train_seed is not None})
    lines = [f"{config['per_class']} images per class and run, cfg {config['cfg']:g}, top_k {config['top_k']}, "
             f"top_p {config['top_p']:g}; untrained models: sampling seeds {sampled}; trained cells: fine-tuning "
             f"seeds {trained}, sampled at seed {', '.join(map(str, first))}; mean ± 95% interval (Student t) over "
             f"the `runs`; Frechet reference: {meta.get('reference_images', '?')} real validation images."]
    if "recipe" in meta:
        d, r = meta["drafter"], meta["refiner"]
        lines.append(f"Recipe `{meta['recipe']}` (base lr per 256 images, batch {meta['batch_size']}): pre-training "
                     f"lr {meta['pretraining_lr']} for {meta['pretraining_steps'][0]} steps; drafter lr {d['lr']} for "
                     f"{d['steps']} steps (wd {d['wd']:g}); refiner and its extra-CE control lr {r['lr']} for "
                     f"{r['steps']} steps (wd {r['wd']:g}).")
    return "\n\n".join(lines)


def write_table(summaries: list[Summary], references: list[Run], out: Path, head: str) -> None:
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "runs", "accuracy", "accuracy_95", "frechet", "frechet_95", "ms_per_image",
                    "ms_per_image_95", "ms_per_image_decoded"])
        for r in references:
            w.writerow([r.name, 1, r.accuracy, "", r.frechet, "", "", "", ""])
        for s in summaries:
            w.writerow([s.name, s.runs, s.accuracy.mean, s.accuracy.half, s.frechet.mean, s.frechet.half, s.ms.mean,
                        s.ms.half, s.ms_decoded.mean])
    lines = [head, "", "| setting | runs | accuracy | Frechet distance | ms/image (VAR) | ms/image (with decoder) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | 1 | {r.accuracy:.1%} | {r.frechet:.2f} | - | - |" for r in references]
    lines += [f"| {s.name} | {s.runs} | {s.accuracy.text('{:.1f}', 100)}% | {s.frechet.text()} | {s.ms.text()} | "
              f"{s.ms_decoded.mean:.2f} |" for s in summaries]
    (out / "table.md").write_text("\n".join(lines) + "\n")


def factorial(summaries: list[Summary], head: str) -> str:
    by = {s.name: s for s in summaries}
    lines = [head, "", "Rows: the drafter; columns: the refiner. Base/base is training-free CoDe, specialised/"
             "distilled the paper's fine-tuned pair. Each cell: mean ± 95% interval (runs)."]
    for n in sorted({s.n for s in summaries if s.kind == "code"}):
        for metric, fmt, scale, title in (("accuracy", "{:.1f}", 100, "accuracy (%)"),
                                          ("frechet", "{:.2f}", 1, "Frechet distance (lower is better)")):
            lines += ["", f"| N={n}, {title} | " + " | ".join(f"{r} refiner" for r in REFINERS) + " |",
                      "|---|" + "---:|" * len(REFINERS)]
            for d in DRAFTERS:
                cells = [by.get(cell_name(n, d, r)) for r in REFINERS]
                lines.append(f"| {d} drafter | " + " | ".join(
                    f"{getattr(s, metric).text(fmt, scale)} ({s.runs})" if s else "-" for s in cells) + " |")
    return "\n".join(lines) + "\n"


def effect(runs: list[Run], n: int, coefs: dict[Cell, float], field: str) -> tuple[Estimate, int, int] | None:
    """The contrast sum_cells coef x mean(cell): (estimate, fine-tuning runs, untrained runs), None if a cell is
    missing."""
    trained = {cell: per_seed(runs, cell_name(n, *cell), field) for cell in coefs if cell != BASE}
    seeds = sorted(set.intersection(*(set(v) for v in trained.values())))
    base = replicates(runs, cell_name(n, *BASE), field) if BASE in coefs else []
    if not seeds or (BASE in coefs and not base):
        return None
    paired = [sum(coefs[cell] * v[s] for cell, v in trained.items()) for s in seeds]
    return contrast(paired, base, coefs.get(BASE, 0.0)), len(seeds), len(base)


def sign(d: Estimate) -> str:
    v = verdict(d, True)
    return "> 0" if v == "holds" else "< 0" if v == "reversed" else "within noise"


def effects(runs: list[Run], head: str) -> str:
    lines = [head, "", "Each effect is a difference of cell means (factorial.md); `runs`: fine-tuning runs (+ sampling "
             "runs of the training-free pair where it enters). Accuracy in points (higher is better), Frechet "
             "distance (lower is better); the verdict says whether the 95% interval excludes 0.", "",
             "| N | effect | runs | accuracy (points) | verdict | Frechet | verdict |",
             "|---:|---|---:|---:|---|---:|---|"]
    for n in sorted({r.n for r in runs if r.kind == "code"}):
        for label, coefs in EFFECTS:
            acc, fd = effect(runs, n, coefs, "accuracy"), effect(runs, n, coefs, "frechet")
            if acc is None or fd is None:
                continue
            count = f"{acc[1]}" + (f" + {acc[2]}" if acc[2] else "")
            lines.append(f"| {n} | {label} | {count} | {acc[0].text('{:+.1f}', 100)} | {sign(acc[0])} | "
                         f"{fd[0].text('{:+.2f}')} | {sign(fd[0])} |")
    return "\n".join(lines) + "\n"


def orderings(runs: list[Run], summaries: list[Summary]) -> str:
    """The large and small VARs, training-free and fine-tuned CoDe in pairs (Table 2 compares the last two),
    each a Welch interval of better - worse."""
    names = {s.name for s in summaries}
    large = next((s.name for s in summaries if s.kind == "large"), None)
    small = next((s.name for s in summaries if s.kind == "small"), None)
    pairs = [(large, small, "the large model beats the small one")]
    ns = sorted({s.n for s in summaries if s.kind == "code"})
    for n in ns:
        tf, ft = cell_name(n, *BASE), cell_name(n, *PAPER)
        pairs += [(ft, tf, f"N={n}: fine-tuning beats training-free CoDe"),
                  (tf, small, f"N={n}: training-free CoDe beats the small model"),
                  (ft, small, f"N={n}: fine-tuned CoDe beats the small model"),
                  (large, tf, f"N={n}: the large model beats training-free CoDe"),
                  (large, ft, f"N={n}: the large model beats fine-tuned CoDe")]
    if len(ns) > 1:
        for cell, what in ((BASE, "training-free"), (PAPER, "fine-tuned")):
            pairs.append((cell_name(ns[-1], *cell), cell_name(ns[0], *cell),
                          f"{what} CoDe: N={ns[-1]} beats N={ns[0]} (more drafted scales)"))
    lines = ["| claim | accuracy difference (points) | verdict | Frechet difference | verdict |",
             "|---|---:|---|---:|---|"]
    for better, worse, claim in pairs:
        if better in names and worse in names:
            acc = difference(replicates(runs, better, "accuracy"), replicates(runs, worse, "accuracy"))
            fd = difference(replicates(runs, better, "frechet"), replicates(runs, worse, "frechet"))
            lines.append(f"| {claim} | {acc.text('{:+.1f}', 100)} | {verdict(acc, True)} | {fd.text('{:+.2f}')} | "
                         f"{verdict(fd, False)} |")
    return "\n".join(lines) + "\n"


def write_report(runs: list[Run], out: Path, meta: dict) -> list[Summary]:
    """Every table and the figure of one evaluation into `out`; returns the summaries."""
    references = [r for r in runs if r.kind == "reference"]
    summaries, head = summarize(runs), header(runs, meta)
    write_table(summaries, references, out, head)
    (out / "factorial.md").write_text(factorial(summaries, head))
    (out / "effects.md").write_text(effects(runs, head))
    (out / "orderings.md").write_text(orderings(runs, summaries))
    print(draw_tradeoff(summaries, out / "tradeoff.png"))
    return summaries


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="folders holding results.jsonl (and meta.json)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    for folder in map(Path, args.folders):
        runs = load_runs(folder / "results.jsonl")
        if not runs:
            print(f"error: no runs in {folder / 'results.jsonl'}: give a folder that miniature.evaluate wrote "
                  f"(or a copy of its results.jsonl and meta.json)", file=sys.stderr)
            return 2
        latest = [r for r in runs if r.config == runs[-1].config]  # the sampling settings of the last evaluation
        if len(latest) < len(runs):
            print(f"{folder}: {len(runs) - len(latest)} runs under other sampling settings are left out")
        runs = latest
        meta_file = folder / "meta.json"
        write_report(runs, folder, json.loads(meta_file.read_text()) if meta_file.is_file() else {})
        print(f"wrote the tables of {len(runs)} runs to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
