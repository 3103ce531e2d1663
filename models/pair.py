"""A shared CoDe pair: a folder (local, or a Hub repo named hf://owner/repo[@revision]) holding the drafter and the
refiner as safetensors, a config.json saying which file is which and the draft steps N they were trained for,
and a model card. share_pair.py writes one; `load_pair` reads it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.checkpoint import CheckpointError
from utils.hf_uri import hub_file, is_hf_uri, parse_hf_uri
from utils.hub import VAE_FILE, resolve_checkpoint

from .build import load_vae, load_var
from .var import VAR
from .vqvae import VQVAE

PAIR_FORMAT, PAIR_VERSION = "codevar-pair", 1
CONFIG_FILE, CARD_FILE = "config.json", "README.md"
ROLE_FILES = {"drafter": "drafter.safetensors", "refiner": "refiner.safetensors", "vae": "vae.safetensors"}


@dataclass
class Pair:
    drafter: VAR
    refiner: VAR
    vae: VQVAE
    draft_steps: int  # N: the drafter makes scales 1..N, the refiner the rest
    config: dict  # the pair's config.json
    files: dict[str, Path] = field(default_factory=dict)  # role -> the file it was loaded from


def pair_file(source: str | os.PathLike, name: str) -> Path:
    """`name` inside the pair: a local folder's file, or the Hub file through the cache."""
    if is_hf_uri(source):
        return hub_file(parse_hf_uri(str(source).rstrip("/"), need_path=False).file(name))
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"pair {source} is not a folder: give the folder share_pair.py wrote, or "
                                "hf://owner/repo for one on the Hugging Face Hub")
    if not (folder / name).is_file():
        raise FileNotFoundError(f"pair {source} has no {name}: is it a folder written by share_pair.py?")
    return folder / name


def read_pair_config(source: str | os.PathLike) -> dict:
    path = pair_file(source, CONFIG_FILE)
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != PAIR_FORMAT:
        raise CheckpointError(f"{path} does not describe a CoDe pair (no \"format\": \"{PAIR_FORMAT}\")")
    if config.get("format_version", 0) > PAIR_VERSION:
        raise CheckpointError(f"{path} is a pair of format version {config['format_version']}, newer than this "
                              f"code reads ({PAIR_VERSION}): update the code")
    return config


def load_pair(source: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
              linear_dtype: torch.dtype | None = None, vae: str | os.PathLike | None = None,
              ckpt_dir: str | os.PathLike | None = None) -> Pair:
    """Drafter, refiner and VQVAE of a shared pair (a folder or hf://owner/repo[@revision]).

    The VQVAE is the pair's own vae.safetensors when it ships one, else the published one (looked up in `ckpt_dir`,
    then the Hugging Face cache); `vae` overrides both. dtype / linear_dtype: as for load_var.
    """
    config = read_pair_config(source)
    files, models = {}, {}
    for role in ("drafter", "refiner"):
        entry = config.get(role) or {}
        files[role] = pair_file(source, entry.get("file", ROLE_FILES[role]))
        models[role] = load_var(files[role], depth=entry.get("depth"), device=device, dtype=dtype,
                                linear_dtype=linear_dtype)
    shipped = (config.get("vae") or {}).get("file")
    files["vae"] = (resolve_checkpoint(vae, ckpt_dir) if vae is not None else pair_file(source, shipped) if shipped
                    else resolve_checkpoint((config.get("vae") or {}).get("name", VAE_FILE), ckpt_dir))
    model_vae = load_vae(files["vae"], patch_nums=models["drafter"].config.patch_nums, device=device, dtype=dtype)
    return Pair(models["drafter"], models["refiner"], model_vae, int(config["draft_steps"]), config, files)
