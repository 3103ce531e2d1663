"""Where checkpoints come from: a local path, a folder, or the Hugging Face cache (downloading if allowed)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import CheckpointError, folder_message

VAR_REPO = "FoundationVision/var"
CODE_REPO = "Zigeng/VAR_CoDe"
VAE_FILE = "vae_ch160v4096z32.pth"


def var_file(depth: int) -> str:
    return f"var_d{depth}.pth"


def code_file(role: str, draft_steps: int) -> str:
    return f"{role}_{draft_steps}.pth"


def published_repo(filename: str) -> str | None:
    if filename == VAE_FILE or re.fullmatch(r"var_d\d+\.pth", filename):
        return VAR_REPO
    if re.fullmatch(r"(drafter|refiner)_\d+\.pth", filename):
        return CODE_REPO
    return None


def resolve_checkpoint(source: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None) -> Path:
    """An existing path as is; else `ckpt_dir/source`; else a published file name through huggingface_hub.

    With HF_HUB_OFFLINE=1 only the local cache is read. The error says what to download and where.
    """
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(folder_message(path))
    if ckpt_dir is not None and (Path(ckpt_dir) / path.name).is_file():
        return Path(ckpt_dir) / path.name
    repo = published_repo(path.name)
    if repo is None or path.parent != Path("."):
        where = f" or in {ckpt_dir}" if ckpt_dir else ""
        raise FileNotFoundError(f"checkpoint {source} not found{where}")
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo_id=repo, filename=path.name))
    except Exception as e:  # offline, missing from the cache, no network, unknown file...
        raise FileNotFoundError(
            f"could not get {path.name} from the Hugging Face repo {repo} ({type(e).__name__}). Download it on a "
            f"machine with network access: `huggingface-cli download {repo} {path.name}` (fills the cache), or put "
            f"the file in a folder and pass it as ckpt_dir / --ckpt_dir") from None
