"""Where checkpoints come from: a local path, a folder, or the Hugging Face cache (downloading if allowed)."""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from .checkpoint import CheckpointError, folder_message
from .hf_uri import is_hf_uri, resolve_hf_uri

VAR_REPO = "FoundationVision/var"
CODE_REPO = "Zigeng/VAR_CoDe"
VAE_FILE = "vae_ch160v4096z32.pth"
PUBLISHED_VAR_DEPTHS = (16, 20, 24, 30)
PUBLISHED_CODE_DRAFT_STEPS = (6, 7, 8, 9)  # the fine-tuned pairs: a d30 drafter, a d16 refiner

log = logging.getLogger(__name__)


def var_file(depth: int) -> str:
    return f"var_d{depth}.pth"


def code_file(role: str, draft_steps: int) -> str:
    return f"{role}_{draft_steps}.pth"


PUBLISHED = {
    VAR_REPO: {VAE_FILE, *(var_file(d) for d in PUBLISHED_VAR_DEPTHS)},
    CODE_REPO: {code_file(r, n) for r in ("drafter", "refiner") for n in PUBLISHED_CODE_DRAFT_STEPS},
}


def published_repo(filename: str) -> str | None:
    return next((repo for repo, names in PUBLISHED.items() if filename in names), None)


def download_command(repo: str, filename: str) -> str:
    """The installed huggingface_hub's command for one file (`hf` since 0.34; `huggingface-cli` before 1.0)."""
    import huggingface_hub
    major, minor = (int(v) for v in huggingface_hub.__version__.split(".")[:2])
    cli = "hf" if (major, minor) >= (0, 34) else "huggingface-cli"
    return f"{cli} download {repo} {filename}"


@contextmanager
def quiet_hub() -> Iterator[None]:
    """huggingface_hub logs every retry (and, through the root logger too, twice): one line from us instead."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached at all (offline mode, a host name that does not resolve), or None: saves
    huggingface_hub's five retries (about 25 s) when there is no network."""
    import huggingface_hub.constants as hub
    if hub.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    host = urlparse(hub.ENDPOINT).hostname or hub.ENDPOINT
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"no network: {host} does not resolve ({e.strerror or e})"
    return None


def resolve_checkpoint(source: str | os.PathLike, ckpt_dir: str | os.PathLike | None = None) -> Path:
    """An existing path as is; else `ckpt_dir/source`; else a published file name from the Hugging Face cache,
    downloading it when online. `hf://owner/repo[@revision]/file` names a file in any Hub repo. The error names
    every place looked and the command that downloads the file."""
    if is_hf_uri(source):
        return resolve_hf_uri(source)
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        raise CheckpointError(folder_message(path))
    looked = [str(path.absolute())]
    if ckpt_dir is not None:
        if (Path(ckpt_dir) / path.name).is_file():
            return Path(ckpt_dir) / path.name
        looked.append(f"{(Path(ckpt_dir) / path.name).absolute()} (--ckpt_dir)")
    repo = published_repo(path.name)
    if repo is None or path.parent != Path("."):
        published = "" if path.parent != Path(".") else (
            f"; it is not a published file ({VAR_REPO}: {VAE_FILE}, var_d{{{','.join(map(str, PUBLISHED_VAR_DEPTHS))}}}"
            f".pth; {CODE_REPO}: drafter_N.pth, refiner_N.pth for N in "
            f"{{{','.join(map(str, PUBLISHED_CODE_DRAFT_STEPS))}}})")
        raise FileNotFoundError(f"checkpoint {source} not found: looked at {', '.join(looked)}{published}")
    import huggingface_hub.constants as hub
    from huggingface_hub import hf_hub_download
    looked.append(f"the Hugging Face cache {hub.HF_HUB_CACHE}")
    try:
        with quiet_hub():
            return Path(hf_hub_download(repo_id=repo, filename=path.name, local_files_only=True))
    except Exception:  # not in the cache
        pass
    reason = hub_unreachable()
    if reason is None:
        log.info(f"downloading {path.name} from the Hugging Face repo {repo} ...")
        try:
            with quiet_hub():
                return Path(hf_hub_download(repo_id=repo, filename=path.name))
        except Exception as e:  # no connection, refused, unknown file...
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}"
    looked.append(f"{repo} on the Hub ({reason})")
    raise FileNotFoundError(
        f"checkpoint {path.name} not found: looked at {', '.join(looked)}. Download it where there is network: "
        f"`{download_command(repo, path.name)}` fills the cache (add `--local-dir DIR`, then pass --ckpt_dir DIR)")
