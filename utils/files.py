"""One atomic write: a temporary file beside the target, renamed over it; a kill never leaves half a file."""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _file_mode() -> int:
    """0o666 under the process umask: mkstemp makes 0600 files, a finished file gets the usual permissions."""
    with _LOCK:  # os.umask can only be read by setting it
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def temp_name_glob(name: str = "*") -> str:
    """The pattern of the temporary files atomic_write leaves when killed, for a target `name` (or all)."""
    return f".{name}.*.tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(f) on a temporary file in path's folder, then rename it to `path`; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """As atomic_write, for writers that take a file name rather than an open file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def remove_temp_files(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files a killed atomic_write left in `folder` (for target `name`); returns them."""
    stale = [p for p in Path(folder).glob(temp_name_glob(name)) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def sha256_file(path: str | os.PathLike, chunk: int = 2**24) -> str:
    """The hex SHA-256 of a file's bytes, read in 16 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
