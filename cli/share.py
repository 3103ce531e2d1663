"""Writing a shared pair (see models.pair): the weights as safetensors, config.json and a model card, into a fresh
folder that `hf upload` can send as it is."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from models.build import var_from_state_dict, vae_from_state_dict
from models.pair import CARD_FILE, CONFIG_FILE, PAIR_FORMAT, PAIR_VERSION, ROLE_FILES
from utils.checkpoint import CheckpointError, load_weights_only, read_checkpoint, save_safetensors
from utils.files import atomic_write, sha256_file
from utils.hub import VAE_FILE, VAR_REPO, resolve_checkpoint

from .args import UsageError
from .card import model_card


@dataclass
class ShareSpec:
    drafter: str  # exported weights or a training checkpoint (path, published name or hf://)
    refiner: str
    draft_steps: int
    vae: str | None = None  # ship this VQVAE too; None: the published one is named
    drafter_base: str | None = None  # the checkpoints fine-tuned from (hashed into the card)
    refiner_base: str | None = None
    teacher: str | None = None
    drafter_train: str | None = None  # training checkpoints (ckpt_last.pth) holding the recipe
    refiner_train: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    ckpt_dir: str | None = None
    repo_id: str = "OWNER/REPO"  # where it will be uploaded, for the card's usage lines


def share_pair(spec: ShareSpec, out: str | os.PathLike) -> Path:
    """Write the pair into `out` (a new folder, or an empty one): built beside it, then renamed into place."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} already exists and is not an empty folder: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        config = write_pair(spec, work)
        atomic_write(work / CARD_FILE, lambda f: f.write(model_card(config, spec.repo_id).encode()))
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def write_pair(spec: ShareSpec, folder: Path) -> dict:
    roles = {}
    for role in ("drafter", "refiner"):
        roles[role] = write_role(spec, role, folder)
    d, r = (roles[k]["config"] for k in ("drafter", "refiner"))
    if d["vocab_size"] != r["vocab_size"] or tuple(d["patch_nums"]) != tuple(r["patch_nums"]):
        raise UsageError("the drafter and the refiner use different tokenizers (vocabulary or scales differ): "
                         "share a drafter and a refiner trained for the same VQVAE")
    if not 0 < spec.draft_steps < len(d["patch_nums"]):
        raise UsageError(f"--draft_steps {spec.draft_steps} leaves no scale to the drafter or to the refiner "
                         f"(the models have {len(d['patch_nums'])} scales)")
    config = {"format": PAIR_FORMAT, "format_version": PAIR_VERSION, "draft_steps": spec.draft_steps, **roles,
              "vae": write_vae(spec, folder, d["patch_nums"]), "metrics": dict(spec.metrics)}
    atomic_write(folder / CONFIG_FILE, lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()))
    return config


def write_role(spec: ShareSpec, role: str, folder: Path) -> dict:
    source = getattr(spec, role)
    path = resolve_checkpoint(source, spec.ckpt_dir)
    sd, extras = read_checkpoint(path)
    model = var_from_state_dict(sd, path)
    recipe, log = training_record(spec, role, extras, path)
    save_safetensors(model.state_dict(), folder / ROLE_FILES[role],
                     {"config": model.config.to_dict(), "role": role, "draft_steps": spec.draft_steps})
    entry = {"file": ROLE_FILES[role], "sha256": sha256_file(folder / ROLE_FILES[role]),
             "depth": model.config.depth, "config": model.config.to_dict(),
             "source": {"name": str(source), "sha256": sha256_file(path)},
             "base": named_file(getattr(spec, f"{role}_base"), spec.ckpt_dir),
             "recipe": recipe, "last_log": log}
    if role == "refiner":
        entry["teacher"] = named_file(spec.teacher, spec.ckpt_dir)
    return entry


def training_record(spec: ShareSpec, role: str, extras: dict, path: Path) -> tuple[dict | None, dict | None]:
    """(recipe, last log.jsonl line) of the training run: from the weights file if it is a training checkpoint,
    else from --<role>_train; (None, None) when neither says."""
    train, ckpt = getattr(spec, f"{role}_train"), extras
    if "recipe" not in ckpt and train is not None:
        path = resolve_checkpoint(train, spec.ckpt_dir)
        ckpt = load_weights_only(path)
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("recipe"), dict):
            raise CheckpointError(f"--{role}_train {train} is not a training checkpoint (no recipe in it)")
    recipe = ckpt.get("recipe") if isinstance(ckpt.get("recipe"), dict) else None
    if recipe is None:
        return None, None
    if recipe.get("role", role) != role:
        raise UsageError(f"the {role}'s training checkpoint is a {recipe['role']}'s: give each role its own")
    if recipe.get("draft_steps", spec.draft_steps) != spec.draft_steps:
        raise UsageError(f"the {role} was trained for --draft_steps {recipe['draft_steps']}, not "
                         f"{spec.draft_steps}: pass --draft_steps {recipe['draft_steps']}")
    return recipe, last_log_line(path.parent / "log.jsonl")


def last_log_line(path: Path) -> dict | None:
    if not path.is_file():
        return None
    for line in reversed(path.read_text().splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def write_vae(spec: ShareSpec, folder: Path, patch_nums) -> dict:
    if spec.vae is None:
        return {"name": VAE_FILE, "repo": VAR_REPO}
    path = resolve_checkpoint(spec.vae, spec.ckpt_dir)
    sd, extras = read_checkpoint(path)
    model = vae_from_state_dict(sd, path, patch_nums)
    save_safetensors(model.state_dict(), folder / ROLE_FILES["vae"], {"config": model.config.to_dict()})
    return {"file": ROLE_FILES["vae"], "sha256": sha256_file(folder / ROLE_FILES["vae"]),
            "source": {"name": str(spec.vae), "sha256": sha256_file(path)}}


def named_file(source: str | None, ckpt_dir) -> dict | None:
    if source is None:
        return None
    return {"name": str(source), "sha256": sha256_file(resolve_checkpoint(source, ckpt_dir))}
