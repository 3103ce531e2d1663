"""One atomic write: a temporary file beside the target, renamed over it; a kill never leaves half a file."""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
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


TEMP_SUFFIX = ".tmp"
TEMP = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")  # mkstemp's 8 random characters between the two


def temp_name_glob(name: str = "*") -> str:
    """The pattern of the temporary files atomic_write leaves when killed, for a target `name` (or all)."""
    return f".{name}.{'?' * 8}{TEMP_SUFFIX}"


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call write(f) on a temporary file in path's folder, then rename it to `path`; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise named(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as e:  # e.g. "[Errno 28] No space left on device" names no file: say which
        raise named(e, path) from e
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


def named(e: OSError, path: Path) -> OSError:
    """`e` with `path` as its file name, unless it names one already (OSError(errno, ...) keeps the subclass)."""
    return e if e.filename is not None else OSError(e.errno, e.strerror or str(e), str(path))


def remove_temp_files(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files a killed atomic_write left in `folder` for targets matching the glob `name`;
    returns them. Only names atomic_write makes (`.<target>.<8 random characters>.tmp`) are touched."""
    stale = [p for p in Path(folder).glob(temp_name_glob(name))
             if p.is_file() and (m := TEMP.fullmatch(p.name)) and fnmatch.fnmatchcase(m["target"], name)]
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
