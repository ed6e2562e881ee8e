"""Content-addressed files on disk: `blobs/ab/cd/<sha256>`, written via temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .locks import FileLock, try_exclusive
from .simple import is_sha256


class BlobStore:
    """Owns the cache directory's `blobs/` and `tmp/` trees."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"

    def ensure_dirs(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def write_problem(self) -> OSError | None:
        """Why a temp file cannot be created now, or None when it can."""
        try:
            self.ensure_dirs()
            probe = self.new_temp()
            probe.write_bytes(b"")
            # Another worker's start-up clean-up may have removed it already.
            probe.unlink(missing_ok=True)
        except OSError as e:
            return e
        return None

    def free_space(self) -> int:
        """Bytes free for the cache on its file system."""
        return shutil.disk_usage(self.root).free

    def path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    def new_temp(self, sha256: str = "probe") -> Path:
        return self.tmp_dir / f"{sha256}.{uuid.uuid4().hex}.part"

    def open_temp(self, sha256: str) -> tuple[Path, int]:
        """A new temp file for `sha256`, flocked by its writer so no clean-up removes it live."""
        path = self.new_temp(sha256)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return path, fd

    def lock_path(self, sha256: str) -> Path:
        """The lock a process holds while it fills, adopts or removes this blob."""
        return self.tmp_dir / f"{sha256}.lock"

    def size_of(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def commit(self, temp: Path, sha256: str) -> Path:
        """Atomically move a verified, fsynced temp file to its content address."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp.replace(final)
        return final

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def remove_unless_read(self, sha256: str) -> bool:
        """Unlink a blob unless a client is being sent it (a ReadHold); True once it is gone."""
        fd = try_exclusive(self.path(sha256))
        if fd is None:
            return not self.path(sha256).exists()
        try:
            self.remove(sha256)
        finally:
            os.close(fd)
        return True

    def clean_temp(self) -> int:
        """Delete temp and lock files no live process holds (left by a crash); returns how many.

        Safe while other workers run: a writer holds a flock on its temp file until it closes it.
        """
        removed = 0
        if not self.tmp_dir.is_dir():
            return 0
        for entry in self.tmp_dir.iterdir():
            if entry.suffix == ".lock":
                lock = FileLock.try_acquire(entry)
                if lock is not None:
                    lock.release()
                    removed += 1
                continue
            fd = try_exclusive(entry)
            if fd is None:
                continue
            try:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
            finally:
                os.close(fd)
        return removed

    def scan(self) -> Iterator[tuple[str, int]]:
        """Every blob on disk as (sha256, size); stray names are skipped."""
        if not self.blob_dir.is_dir():
            return
        for first in self.blob_dir.iterdir():
            if not first.is_dir():
                continue
            for second in first.iterdir():
                if not second.is_dir():
                    continue
                for blob in second.iterdir():
                    if is_sha256(blob.name) and blob.is_file():
                        yield blob.name, blob.stat().st_size


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
