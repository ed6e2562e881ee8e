"""Where verified files are kept: the BlobStore seam, and the cache directory that implements it.

The local store keeps `blobs/ab/cd/<sha256>`, written via temp file, fsync, rename.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_fileresponse import NOSENDFILE

from .accesslog import SENDFILE_BYTES
from .locks import FileLock, ReadHold, try_exclusive
from .simple import is_sha256

# The unit of reads and writes of file bodies, and of the responses that send them.
CHUNK = 256 * 1024


class BlobMismatch(Exception):
    """A blob's bytes do not hash to the sha256 it was written under: it is not stored."""


class BlobWriter(Protocol):
    """One blob being written: chunks, then commit (only if they hash right) or abort."""

    # Where the bytes written so far can be read while more arrive: a fill's readers stream
    # the growing file from here (local disk: see fill.stream_fill).
    path: Path

    async def write(self, chunk: bytes) -> None:
        """Append a chunk, off the event loop."""

    def verified(self) -> bool:
        """Whether the bytes written so far hash to the blob's sha256."""

    def rewind(self) -> None:
        """Write from byte 0 again, with a new digest: a fill that starts its bytes over. What
        is there stays until overwritten (readers compare against it); commit cuts the rest."""

    async def commit(self) -> Path:
        """Make the written bytes the blob, durably; BlobMismatch unless `verified()`.

        Returns where the blob is read from now."""

    def abort(self) -> None:
        """Drop what was written; the writer is done (harmless after commit)."""


class BlobStore(Protocol):
    """Content-addressed verified files, by sha256, shared by every worker process."""

    def ensure_dirs(self) -> None:
        """Create what writers need; OSError when it cannot."""

    def write_problem(self) -> OSError | None:
        """Why nothing can be written now, or None when it can (blocking)."""

    def free_space(self) -> int:
        """Bytes free for the blobs."""

    def writer(self, sha256: str) -> BlobWriter:
        """A new writer for `sha256`; readers of its growing file may open it at once."""

    def path(self, sha256: str) -> Path:
        """Where a fill's readers open the verified blob (local disk: see BlobWriter.path)."""

    def open(self, sha256: str) -> BinaryIO:
        """The verified blob, to read (blocking); FileNotFoundError when it is gone."""

    def read_verified(self, sha256: str) -> bytes | None:
        """A small blob's bytes, or None when gone or not matching its sha256 (blocking)."""

    def serve(self, sha256: str, headers: dict[str, str]) -> web.StreamResponse | None:
        """The response that sends a blob (ranges, conditionals), or None when it is gone; no
        process removes it until sent."""

    @property
    def serves_elsewhere(self) -> bool:
        """Whether `serve` hands the body to someone else (nginx), reading nothing here."""

    def size_of(self, sha256: str) -> int | None:
        """The blob's size, or None when it is not stored."""

    def remove(self, sha256: str) -> None:
        """Delete a blob (blocking)."""

    def remove_unless_read(self, sha256: str) -> bool:
        """Delete a blob unless a client is being sent it; True once it is gone (blocking)."""

    def try_lock(self, name: str) -> FileLock | None:
        """The cross-process lock called `name` (a sha256: its fill), if free now."""

    async def lock(self, name: str) -> FileLock:
        """The cross-process lock called `name`, waiting for it."""

    def clean_temp(self) -> int:
        """Drop what crashed writers left; how many (blocking)."""

    def scan(self) -> Iterator[tuple[str, int]]:
        """Every stored blob as (sha256, size) (blocking)."""


class LocalBlobStore:
    """The cache directory's `blobs/` and `tmp/` trees: a BlobStore on a local file system.

    `accel_redirect`: nginx's internal location for `blobs/`: hits are then sent by nginx.
    """

    def __init__(self, root: Path, *, accel_redirect: str = "") -> None:
        self.root = root
        self.accel_redirect = accel_redirect
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
        return self.blob_dir / self._relative(sha256)

    @staticmethod
    def _relative(sha256: str) -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def new_temp(self, sha256: str = "probe") -> Path:
        return self.tmp_dir / f"{sha256}.{uuid.uuid4().hex}.part"

    def open_temp(self, sha256: str) -> tuple[Path, int]:
        """A new temp file for `sha256`, flocked by its writer so no clean-up removes it live."""
        path = self.new_temp(sha256)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return path, fd

    def lock_path(self, name: str) -> Path:
        """The lock a process holds while it fills, adopts or removes this blob."""
        return self.tmp_dir / f"{name}.lock"

    def try_lock(self, name: str) -> FileLock | None:
        return FileLock.try_acquire(self.lock_path(name))

    async def lock(self, name: str) -> FileLock:
        return await FileLock.acquire(self.lock_path(name))

    def writer(self, sha256: str) -> LocalBlobWriter:
        path, fd = self.open_temp(sha256)
        return LocalBlobWriter(self, sha256, path, fd)

    def open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    def read_verified(self, sha256: str) -> bytes | None:
        try:
            body = self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        return body if hashlib.sha256(body).hexdigest() == sha256 else None

    @property
    def serves_elsewhere(self) -> bool:
        return bool(self.accel_redirect)

    def serve(self, sha256: str, headers: dict[str, str]) -> web.StreamResponse | None:
        if self.accel_redirect:
            headers["X-Accel-Redirect"] = f"{self.accel_redirect}{self._relative(sha256)}"
            return web.Response(headers=headers)
        path = self.path(sha256)
        # Held until sent, so eviction in any worker leaves this blob alone meanwhile.
        hold = ReadHold.take(path)
        if hold is None:
            return None
        return _HeldFileResponse(path, hold, chunk_size=CHUNK, headers=headers)

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


class LocalBlobWriter:
    """A temp file in `tmp/`, flocked by its writer, renamed to its content address once
    verified and fsynced."""

    def __init__(self, blobs: LocalBlobStore, sha256: str, path: Path, fd: int) -> None:
        self.blobs = blobs
        self.sha256 = sha256
        self.path = path
        self._fd: int | None = fd
        self._digest = hashlib.sha256()
        self._committed = False
        # Bytes written since the start (or the last rewind): the file's length at commit.
        self._length = 0

    async def write(self, chunk: bytes) -> None:
        assert self._fd is not None, "written after commit or abort"
        # A slow disk must not stall every other client on the event loop.
        await asyncio.to_thread(write_all, self._fd, chunk)
        self._digest.update(chunk)
        self._length += len(chunk)

    def verified(self) -> bool:
        return self._digest.hexdigest() == self.sha256

    def rewind(self) -> None:
        assert self._fd is not None, "rewound after commit or abort"
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._digest = hashlib.sha256()
        self._length = 0

    async def commit(self) -> Path:
        if not self.verified():
            raise BlobMismatch(f"{self.path.name} does not hash to {self.sha256}")
        assert self._fd is not None, "committed after abort"
        # After a rewind, what the first attempt wrote past this attempt's end is not the blob.
        await asyncio.to_thread(os.ftruncate, self._fd, self._length)
        await asyncio.to_thread(os.fsync, self._fd)
        # The rename stays on the event loop: readers there open either name, never neither.
        final = self.blobs.commit(self.path, self.sha256)
        self._committed = True
        self.path = final
        self._close()
        return final

    def abort(self) -> None:
        self._close()
        if not self._committed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class _HeldFileResponse(web.FileResponse):
    """A FileResponse that keeps its blob's ReadHold until the file has been sent."""

    def __init__(self, path: Path, hold: ReadHold, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._hold = hold

    async def prepare(self, request: web.BaseRequest) -> Any:
        try:
            return await super().prepare(request)
        finally:
            self._hold.release()

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        writer = await super()._sendfile(request, fobj, offset, count)
        if not NOSENDFILE:
            # Sent by the kernel, past the writer's byte count: the access log adds it.
            self[SENDFILE_BYTES] = count
        return writer


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (it may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
