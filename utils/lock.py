"""An exclusive lock on an output folder, so that two runs never write into one folder at the same time.

The lock is a file in the folder, `.lock`, holding the owner's pid, host and start time, and locked with
fcntl.flock. The kernel drops a flock when its process dies, however it dies, so a lock whose owner is gone is
taken over by the next run; the file's contents only say who holds it. Released (and the file removed) at exit.
Under torchrun only rank 0 takes it (the other ranks write where rank 0 lets them).
"""
from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .dist import is_rank_zero
from .errors import UsageError


class LockError(UsageError, RuntimeError):
    """The folder is held by another run; the message names it and what to do."""


class FolderLock:
    """`with FolderLock(folder, "--output_path"):` holds `folder` for the block (and creates the folder)."""

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, flag: str = "the output folder", active: bool | None = None):
        self.folder, self.flag = Path(folder), flag
        self.path = self.folder / self.NAME
        self.active = is_rank_zero() if active is None else active
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        if not self.active or self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockError(f"{self.folder} is in use by another run ({self.holder()}): wait for it to finish, "
                                f"or use another {self.flag}") from None
            try:  # a releasing owner may have removed the file between our open and our flock: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        atexit.register(self.release)
        return self

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "starting"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        atexit.unregister(self.release)
        self.path.unlink(missing_ok=True)  # while still locked: a waiting run then locks a fresh file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
