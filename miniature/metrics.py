"""Scores of generated images under the miniature's classifier: class accuracy and a Frechet distance.

The Frechet distance is FID's formula on the classifier's penultimate features instead of Inception's:
||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with the real validation images as reference.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from training.data import ImageFolder, ImageTransform

from .classifier import ShapeClassifier


@torch.no_grad()
def classify(clf: ShapeClassifier, images_B3HW: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, np.ndarray]:
    """Images in [0, 1] -> (predicted class ids (B,), penultimate features (B, D) float64)."""
    preds, feats = [], []
    for chunk in images_B3HW.split(batch):
        f = clf.features(chunk.to(clf.head.weight.device).float() * 2 - 1)
        preds.append(clf.head(f).argmax(1).cpu())
        feats.append(f.double().cpu())
    return torch.cat(preds), torch.cat(feats).numpy()


def frechet_distance(a_ND: np.ndarray, b_MD: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples)."""
    mu_a, mu_b = a_ND.mean(0), b_MD.mean(0)
    cov_a, cov_b = np.cov(a_ND, rowvar=False), np.cov(b_MD, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: regularise, as FID implementations do
        eps = 1e-6 * np.eye(cov_a.shape[0])
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def load_split(root: str | Path, size: int, per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split folder (e.g. DATA_PATH/val) as (images in [0, 1] (N, 3, size, size), labels (N,)), centre-cropped;
    with `per_class`, only the first per_class images of every class (in file-name order)."""
    data = ImageFolder(root, ImageTransform(size, train=False))
    keep = first_per_class(data.samples, per_class) if per_class else range(len(data))
    images, labels, _ = zip(*(data[(i, 0)] for i in keep))
    return (torch.stack(images) + 1) / 2, torch.tensor(labels)


def first_per_class(samples: list[tuple[str, int]], per_class: int) -> list[int]:
    counts: Counter[int] = Counter()
    keep = []
    for i, (_, label) in enumerate(samples):
        if counts[label] < per_class:
            keep.append(i)
            counts[label] += 1
    return keep


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred == labels.cpu()).double().mean())
