"""Content-addressed files on disk: `blobs/ab/cd/<sha256>`, written via temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

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

    def writable(self) -> bool:
        """Whether a temp file can be created now (disk full or read-only says no)."""
        try:
            self.ensure_dirs()
            probe = self.new_temp()
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            return False
        return True

    def path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    def new_temp(self) -> Path:
        return self.tmp_dir / f"{uuid.uuid4().hex}.part"

    def commit(self, temp: Path, sha256: str) -> Path:
        """Atomically move a verified, fsynced temp file to its content address."""
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp.replace(final)
        return final

    def remove(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def clean_temp(self) -> int:
        """Delete temp files left by a crash; returns how many."""
        removed = 0
        if not self.tmp_dir.is_dir():
            return 0
        for entry in self.tmp_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed += 1
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
