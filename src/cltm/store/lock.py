"""Writer locks on a cache: one writer per shard, and no ``--force`` beside a running writer.

A lock is a small file ``CACHE/locks/<shard tag>.lock`` held with ``fcntl.flock`` for the whole run and
holding ``pid``, ``host``, ``shard`` and ``since`` (for the message a second writer gets). The kernel drops a
flock when its process dies, even by SIGKILL, so a lock left behind by a killed run never blocks the next
one: the file stays, the lock does not. Shards of one extraction take different lock files and run side by
side; deleting a cache (``--force``) first takes every lock file in it.

flock is advisory and local to one machine (on NFS it depends on the mount); on a platform without
``fcntl`` locking is skipped.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

LOCK_DIR = "locks"


class CacheLockedError(OSError):
    """Another live process holds the lock on this cache (or shard)."""


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (holder unknown)"
    shard, since = info.get("shard", "?"), info.get("since")
    return f"pid {info.get('pid')} on host {info.get('host')} ({shard}, since {since})"


class WriterLock:
    """An exclusive, non-blocking lock file; use as a context manager or call :meth:`release`."""

    def __init__(self, path: str | Path, *, shard: str = "") -> None:
        self.path = Path(path)
        self.shard = shard
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        """Take the lock or raise :class:`CacheLockedError` naming the holder (pid/host)."""
        self.path.parent.mkdir(exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CacheLockedError(
                    f"{self.path.parent.parent} is being written by {_holder_text(self.path)}; wait for that "
                    "run to finish or stop it (a lock left by a killed run does not block)"
                ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "shard": self.shard,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def shard_lock(cache_path: str | Path, tag: str) -> WriterLock:
    """The lock of one shard's writer (``tag`` like ``shard-0-of-1``), not yet acquired."""
    return WriterLock(Path(cache_path) / LOCK_DIR / f"{tag}.lock", shard=tag)


def lock_all(cache_path: str | Path) -> list[WriterLock]:
    """Take every writer lock in the cache (before deleting it); raises if any writer is alive.

    Returns the held locks; the caller releases them (deleting the directory is fine while they are held).
    """
    held: list[WriterLock] = []
    root = Path(cache_path) / LOCK_DIR
    try:
        for path in sorted(root.glob("*.lock")) if root.is_dir() else []:
            held.append(WriterLock(path, shard=path.stem).acquire())
    except CacheLockedError as err:
        for lock in held:
            lock.release()
        raise CacheLockedError(f"refusing --force: {err}") from None
    return held
