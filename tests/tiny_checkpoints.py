"""Tiny checkpoint files for the script tests, written once per session.

`small`: 4 scales, 8x8 images, a depth-2 drafter and a depth-1 refiner under plain file names (explicit paths).
`published`: the published 10 scales (32x32 images from a tiny VQVAE), under the published file names, with as
many blocks as the name says (var_d30.pth has 30 blocks of width 32), so that --drafter_depth 30 means what it
says and the loaders' depth check is exercised. drafter_8 / refiner_8 have other weights than var_d30 / var_d16.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tiny import TINY_VAR, fill_hf_cache, randomize_, tiny_pair, tiny_var_like
from models import build_vae_var, load_vae, load_var
from utils.checkpoint import atomic_save
from utils.hub import CODE_REPO, VAE_FILE, VAR_REPO

PUBLISHED_VAE = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64, z_channels=8)
PUBLISHED_VAR = dict(width=32, heads=1, mlp_ratio=2.0)  # 30 blocks must stay cheap on a CPU


def write_small(folder: Path) -> dict[str, Path]:
    vae, drafter = tiny_pair(depth=2, seed=0)
    refiner = tiny_var_like(vae, depth=1, seed=5)
    files = {"vae": folder / "vae.pth", "drafter": folder / "d2.pth", "refiner": folder / "d1.pth"}
    for name, model in (("vae", vae), ("drafter", drafter), ("refiner", refiner)):
        atomic_save(model.state_dict(), files[name])
    return files


def write_published(folder: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    vae, var30 = build_vae_var(depth=30, vae_overrides=PUBLISHED_VAE, **{**TINY_VAR, **PUBLISHED_VAR})
    randomize_(vae, 1, std=0.1)
    models = {"var_d30.pth": randomize_(var30, 2), "var_d16.pth": tiny_var_like(vae, 16, 3, **PUBLISHED_VAR),
              "drafter_8.pth": tiny_var_like(vae, 30, 4, **PUBLISHED_VAR),
              "refiner_8.pth": tiny_var_like(vae, 16, 5, **PUBLISHED_VAR)}
    files = {VAE_FILE: folder / VAE_FILE}
    atomic_save(vae.state_dict(), files[VAE_FILE])
    for name, model in models.items():
        files[name] = folder / name
        atomic_save(model.state_dict(), files[name])
    return files


def fill_published(cache: Path, files: dict[str, Path]) -> None:
    """Put the published-name files where huggingface_hub looks for them, each in its own repo."""
    fill_hf_cache(cache, VAR_REPO, {n: p for n, p in files.items() if not n.startswith(("drafter", "refiner"))})
    fill_hf_cache(cache, CODE_REPO, {n: p for n, p in files.items() if n.startswith(("drafter", "refiner"))})


def load_published(files: dict[str, Path], *names: str):
    """(vae, [VARs]) from the published-name files, for comparing a script with the library."""
    models = [load_var(files[n]).eval() for n in names]
    return load_vae(files[VAE_FILE], patch_nums=models[0].config.patch_nums), models


@pytest.fixture(scope="session")
def small_ckpts(tmp_path_factory) -> dict[str, Path]:
    return write_small(tmp_path_factory.mktemp("small_ckpts"))


@pytest.fixture(scope="session")
def published_ckpts(tmp_path_factory) -> dict[str, Path]:
    return write_published(tmp_path_factory.mktemp("published_ckpts"))


@pytest.fixture
def hub(offline_hf_cache, published_ckpts) -> dict[str, Path]:
    """An offline Hugging Face cache holding the published names; returns the files."""
    fill_published(offline_hf_cache, published_ckpts)
    return published_ckpts
