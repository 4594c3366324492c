"""One process at a time owns a data directory: the server while it runs, or an offline backup or a restore.

The owner holds an exclusive ``flock`` on ``<data dir>/tokenhub.lock`` and writes who it is into the file (pid,
role, listen address), so a second server refuses to start on the same files and ``tokenhub restore`` refuses
to overwrite a live database. The kernel drops the lock when the process exits, however it exits, so a crash
never leaves a stale lock behind (the file's text may remain; only the lock counts).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "DataDirInUse", "DataDirLock", "lock_holder"]

LOCK_FILE = "tokenhub.lock"


class DataDirInUse(RuntimeError):
    """Another process holds the data directory; ``holder`` is what it wrote (pid, role, listen)."""

    def __init__(self, data_dir: Path, holder: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.holder = holder
        who = f"a TokenHub {holder.get('role', 'process')}"
        if holder.get("pid"):
            who += f" (pid {holder['pid']}"
            who += f", listening on {holder['listen']})" if holder.get("listen") else ")"
        super().__init__(f"{data_dir} is in use by {who}")


class DataDirLock:
    def __init__(self, fd: int | None, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path, *, role: str, listen: str = "") -> DataDirLock:
        """Take the lock without waiting; raises DataDirInUse when another process holds it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(data_dir, _read(path)) from None
        info = {"pid": os.getpid(), "role": role, "listen": listen, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return cls(fd, path)

    @classmethod
    def held_by_parent(cls, data_dir: Path) -> DataDirLock:
        """A worker of `serve --workers N`: its supervisor holds the lock for all of them; nothing to release."""
        return cls(None, data_dir / LOCK_FILE)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)  # an unlocked file with text in it would only mislead a reader
        os.close(fd)  # closing drops the flock


def lock_holder(data_dir: Path) -> dict[str, Any] | None:
    """What the process holding ``data_dir`` wrote, or None when nobody holds it (probed with a shared,
    non-blocking lock that is dropped at once; a missing directory or lock file is nobody)."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read(path)
    finally:
        os.close(fd)
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
