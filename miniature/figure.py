"""The miniature's speed/quality picture: accuracy and Frechet distance against time per image, with intervals.

matplotlib is an optional dependency of the evaluation only (`pip install matplotlib`); without it the figure is
skipped with a note.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

STYLE = {"large": ("tab:blue", "s"), "small": ("tab:orange", "s"),
         "base drafter, base refiner": ("tab:gray", "o"), "specialised drafter, base refiner": ("tab:brown", "v"),
         "base drafter, extra CE refiner": ("tab:purple", "^"),
         "specialised drafter, extra CE refiner": ("tab:pink", "^"),
         "base drafter, distilled refiner": ("tab:olive", "D"),
         "specialised drafter, distilled refiner": ("tab:green", "o")}
LABELS = {"base drafter, base refiner": "CoDe training-free", "specialised drafter, distilled refiner":
          "CoDe fine-tuned (specialised drafter, distilled refiner)"}


def draw_tradeoff(summaries: Sequence, path: Path) -> str:
    """Two panels (accuracy up, Frechet down, both against ms/image of the transformer passes); one series per
    model and per CoDe cell (drafter, refiner), CoDe points labelled with N and joined in N order. Returns a line
    saying what was done."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed: skipped {path} (pip install matplotlib)"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, metric, label in ((axes[0], "accuracy", "class accuracy (%)"), (axes[1], "frechet",
                                                                            "Frechet distance (lower is better)")):
        scale = 100 if metric == "accuracy" else 1
        for series, (colour, marker) in STYLE.items():
            points = sorted((s for s in summaries if s.series == series), key=lambda s: s.n or 0)
            if not points:
                continue
            x = [s.ms.mean for s in points]
            y = [getattr(s, metric).mean * scale for s in points]
            err = [0 if getattr(s, metric).half != getattr(s, metric).half else getattr(s, metric).half * scale
                   for s in points]  # nan (one run) draws no bar
            name = LABELS.get(series, series if series in ("large", "small") else f"CoDe {series}")
            ax.errorbar(x, y, yerr=err, color=colour, marker=marker, capsize=3, linestyle="-" if len(points) > 1
                        else "none", label=name)
            for s, xi, yi in zip(points, x, y):
                if s.n is not None:
                    ax.annotate(f"N={s.n}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                color=colour)
        ax.set_xlabel("ms per image, transformer passes (CPU)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("The miniature: quality against time per image (mean and 95% interval over independent runs)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"saved {path}"
