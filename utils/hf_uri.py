"""`hf://owner/repo[@revision][/path]`: a file (or, without a path, a whole repo) on the Hugging Face Hub, read
through huggingface_hub's cache (HF_HUB_OFFLINE=1: the cache only)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError

SCHEME = "hf://"
FORM = "hf://owner/repo/path/in/repo (or hf://owner/repo@revision/path)"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None  # None: the repo's default branch
    path: str  # "" for the repo itself

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")

    def file(self, path: str) -> HubRef:
        return HubRef(self.repo_id, self.revision, f"{self.path}/{path}" if self.path else path)


def is_hf_uri(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and source.startswith(SCHEME)


def parse_hf_uri(source: str, need_path: bool = True) -> HubRef:
    """Split an hf:// name; a malformed one raises CheckpointError with the expected form."""
    owner, _, rest = source[len(SCHEME):].partition("/")
    repo, _, path = rest.partition("/")
    repo, at, revision = repo.partition("@")
    parts = path.split("/") if path else []
    if (not NAME.fullmatch(owner) or not NAME.fullmatch(repo) or (at and not revision)
            or any(p in ("", ".", "..") for p in parts) or (need_path and not parts)):
        raise CheckpointError(f"{source!r} is not a Hub file name: write {FORM}")
    return HubRef(f"{owner}/{repo}", revision or None, path)


def hub_file(ref: HubRef) -> Path:
    """The file's path in the local cache, downloaded first when online; the error says how to fill the cache."""
    from huggingface_hub import hf_hub_download  # a second's import, only for those who use the Hub
    try:
        return Path(hf_hub_download(repo_id=ref.repo_id, filename=ref.path, revision=ref.revision))
    except Exception as e:  # offline and not cached, no network, no such repo / file / revision
        rev = f" --revision {ref.revision}" if ref.revision else ""
        raise FileNotFoundError(
            f"could not get {ref} ({type(e).__name__}): check the name, or on a machine with network access run "
            f"`hf download {ref.repo_id} {ref.path}{rev}` to fill the cache") from None


def resolve_hf_uri(source: str) -> Path:
    return hub_file(parse_hf_uri(source))
