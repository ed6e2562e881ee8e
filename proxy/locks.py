"""Cross-process locks on the cache directory (flock), so worker processes share one cache."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

POLL_SECONDS = 0.05


class FileLock:
    """An exclusive flock on a lock file, safe against another holder unlinking that file.

    The holder may unlink the file before releasing: whoever opened the old file then finds,
    once it gets the lock, that the path no longer names what it locked, and tries again.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path) -> FileLock | None:
        """The lock if nobody holds it now; never blocks."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = path.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return cls(path, fd)
            os.close(fd)

    @classmethod
    async def acquire(cls, path: Path) -> FileLock:
        """Wait for the lock, polling: cancelling the wait leaves no thread blocked in flock."""
        while True:
            lock = cls.try_acquire(path)
            if lock is not None:
                return lock
            await asyncio.sleep(POLL_SECONDS)

    def release(self, *, unlink: bool = True) -> None:
        """Unlink the lock file (while still holding it, see above) and let go."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ReadHold:
    """A shared flock on a blob while it is sent: eviction (exclusive, non-blocking) skips it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path) -> ReadHold | None:
        """The hold, or None when the blob is gone or being removed right now."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # Removed between open and flock: the path no longer names this file.
            if os.fstat(fd).st_nlink == 0:
                raise BlockingIOError
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def try_exclusive(path: Path) -> int | None:
    """An fd holding an exclusive flock on an existing file, or None if it is in use or gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
