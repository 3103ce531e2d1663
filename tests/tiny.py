"""Tiny models for CPU tests, and the fixtures every test module may use (conftest.py registers this module as a
plugin). Weights are randomised so that every branch (AdaLN gammas included) matters."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from models import build_vae_var, build_var

torch.set_num_threads(1)  # see conftest.py

TINY_VAE = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=(1, 2, 3, 4))
TINY_VAR = dict(width=64, heads=2, num_classes=10)


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.3) -> torch.nn.Module:
    """Replace the near-identity init by O(1) random weights, so that a wrong op changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
            if name.endswith("scale_mul_1H11"):
                p.add_(torch.full_like(p, 4.0).log())
    return model


def tiny_pair(depth: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32, **var_overrides):
    """(vae, var) with 4 scales (1, 2, 3, 4), 64 codes, 8x8 images, 10 classes."""
    torch.manual_seed(seed)
    vae, var = build_vae_var(depth=depth, vae_overrides=TINY_VAE, **{**TINY_VAR, **var_overrides})
    randomize_(var, seed + 1)
    randomize_(vae, seed + 2, std=0.1)
    return vae.to(dtype).eval(), var.to(dtype).eval()


def tiny_var_like(vae, depth: int, seed: int, dtype: torch.dtype = torch.float32, **overrides):
    """Another VAR speaking the same VQVAE's tokens (for drafter / refiner pairs of different depths)."""
    c = vae.config
    torch.manual_seed(seed)
    var = build_var(depth, vocab_size=c.vocab_size, cvae=c.z_channels, patch_nums=c.patch_nums,
                    **{**TINY_VAR, **overrides})
    return randomize_(var, seed + 1).to(dtype).eval()


@pytest.fixture
def pair():
    return tiny_pair()


@pytest.fixture
def pair64():
    return tiny_pair(dtype=torch.float64)


def output_to(path: str | os.PathLike) -> None:
    """In a forked child: its stdout and stderr, at the file level and in sys, to `path` (not the test's capture)."""
    out = os.open(path, os.O_WRONLY | os.O_CREAT)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


def fill_hf_cache(cache_dir: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out as huggingface_hub's cache does, so hf_hub_download finds them offline: the snapshot's entries
    are symlinks, as the hub's own (to the files given, not to copies in blobs/)."""
    commit = "0" * 40
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        (snap / name).symlink_to(Path(src).resolve())


@pytest.fixture
def offline_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache with network access disabled; fill it with fill_hf_cache."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache
