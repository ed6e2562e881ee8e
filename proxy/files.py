"""The file cache: hits from disk or memory, tee-on-miss with sha256 verification, single flight."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import yarl
from aiohttp import hdrs, web
from cachetools import LRUCache

from .blobs import BlobStore
from .config import CacheSettings
from .errors import Offline, ProxyError, UpstreamError, UpstreamUnavailable
from .metrics import Metrics
from .store import Store
from .upstream import Upstream

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"
# A file GitLab gave to one client's credentials: no shared HTTP cache may hand it to others.
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"
ACCESS_FLUSH_SECONDS = 30.0


@dataclass(slots=True)
class KnownBlob:
    size: int
    filename: str


class FillState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Fill:
    """One upstream download into a temp file that any number of clients read as it grows."""

    def __init__(self, sha256: str, filename: str, path: Path) -> None:
        self.sha256 = sha256
        self.filename = filename
        # The temp file while running; the blob's own path once verified and renamed.
        self.path = path
        self.size: int | None = None
        self.written = 0
        self.state = FillState.RUNNING
        self.error: ProxyError | None = None
        self.started = False
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def mark_started(self, size: int | None) -> None:
        self.size = size
        self.started = True
        self._notify()

    def advance(self, nbytes: int) -> None:
        self.written += nbytes
        self._notify()

    def finish(self, final_path: Path) -> None:
        self.path = final_path
        self.state = FillState.DONE
        self._notify()

    def fail(self, error: ProxyError) -> None:
        self.error = error
        self.state = FillState.FAILED
        self._notify()

    async def changed(self) -> None:
        """Wait for the next step: bytes written, headers known, done or failed."""
        await self._changed.wait()

    def readable_limit(self) -> int:
        """How many bytes a reader may send: all once verified, else all but the last."""
        if self.state is FillState.DONE:
            return self.written
        # Holding one byte back means no client ever completes a file that then fails to verify.
        return max(0, self.written - 1)


class Admission(Protocol):
    """Whether one client may have a file the cache holds or is fetching for someone else."""

    async def admit(self) -> None:
        """Return if GitLab lets this client have the file, else raise GitLab's answer."""

    def answered(self, error: ProxyError | None) -> None:
        """GitLab's answer to this client's own download: None for a 200."""


class FileCache:
    """Owns `known` blobs, the small-file memory cache, in-flight fills and access times."""

    def __init__(
        self,
        settings: CacheSettings,
        blobs: BlobStore,
        store: Store,
        upstream: Upstream,
        metrics: Metrics,
        *,
        accel_redirect: str = "",
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        # nginx's internal location for blobs/: hits are then answered by nginx from disk.
        self.accel_redirect = accel_redirect
        self.known: dict[str, KnownBlob] = {}
        self.memory: LRUCache[str, bytes] = LRUCache(
            maxsize=max(1, settings.memory_size), getsizeof=len
        )
        self.fills: dict[str, Fill] = {}
        self.accessed: dict[str, float] = {}
        # Counts additions to `known`: rendered pages that show sizes are current while it stands.
        self.generation = 0
        # Called with (sha256, filename, path) once a download has verified and is stored.
        self.on_verified: Callable[[str, str, Path], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Told of each fill as it starts, so a warm-up can count what it caused.
        self.fill_observers: list[Callable[[Fill], None]] = []

    async def load(self) -> None:
        """Start-up reconciliation: drop temp files, rows without blobs, blobs without rows."""
        removed_temp = await asyncio.to_thread(self.blobs.clean_temp)
        on_disk = dict(await asyncio.to_thread(lambda: list(self.blobs.scan())))
        rows = await self.store.blobs()
        orphan_rows = [r.sha256 for r in rows if on_disk.get(r.sha256) != r.size]
        if orphan_rows:
            await self.store.remove_blobs(orphan_rows)
        self.known = {
            r.sha256: KnownBlob(r.size, r.filename) for r in rows if on_disk.get(r.sha256) == r.size
        }
        stray = [sha for sha in on_disk if sha not in self.known]
        for sha in stray:
            await asyncio.to_thread(self.blobs.remove, sha)
        if removed_temp or orphan_rows or stray:
            log.info(
                "cache reconciled: %d temp files, %d rows without a blob, %d blobs without a row",
                removed_temp,
                len(orphan_rows),
                len(stray),
            )

    async def close(self, grace: float | None = None) -> None:
        """Let running fills end (abandoning those still running after `grace`), then write the
        last access times."""
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.flush_access()

    async def flush_access(self) -> None:
        if self.accessed:
            accessed, self.accessed = self.accessed, {}
            await self.store.touch_blobs(accessed)

    async def run_access_flusher(self) -> None:
        """Background task: access times reach SQLite in batches, never on the hit path."""
        while True:
            await asyncio.sleep(ACCESS_FLUSH_SECONDS)
            try:
                await self.flush_access()
            except Exception:
                log.exception("could not record access times")

    def hit(self, sha256: str, filename: str) -> KnownBlob | None:
        blob = self.known.get(sha256)
        if blob is None or blob.filename != filename:
            return None
        return blob

    async def respond(
        self,
        request: web.Request,
        sha256: str,
        filename: str,
        source: yarl.URL,
        authorization: str | None,
        admission: Admission | None = None,
    ) -> web.StreamResponse:
        """Serve a file: from the cache when verified there, else through one shared fill.

        With an `admission`, bytes fetched for anyone else reach this client only once it is
        admitted; a fill it starts itself is GitLab's answer to its own credentials.
        """
        private = admission is not None
        if admission is not None and (
            self.hit(sha256, filename) is not None or sha256 in self.fills
        ):
            await admission.admit()
        blob = self.hit(sha256, filename)
        if blob is not None:
            self.metrics.file_hit(blob.size)
            return await self._respond_hit(request, sha256, blob, private=private)
        self.metrics.file_miss()
        if self.upstream.offline:
            raise Offline()
        fill = self.fills.get(sha256)
        if fill is None:
            fill = self._start_fill(sha256, filename, source, authorization)
            if admission is not None:
                while not fill.started and fill.state is FillState.RUNNING:
                    await fill.changed()
                admission.answered(None if fill.started else fill.error)
                # The fill ran on while this waited: it may be over, its temp file gone.
                if fill.state is FillState.FAILED:
                    raise fill.error or UpstreamError(f"fill of {filename} failed")
                blob = self.hit(sha256, filename)
                if fill.state is FillState.DONE and blob is not None:
                    return await self._respond_hit(request, sha256, blob, private=private)
        if request.http_range.start is not None or request.http_range.stop is not None:
            # A range read needs the whole verified file; wait, then answer it like a hit.
            await self._finished(fill)
            blob = self.known.get(sha256)
            if blob is not None:
                return await self._respond_hit(request, sha256, blob, private=private)
        return await self._respond_fill(request, fill, private=private)

    async def ensure(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> Path:
        """The verified blob's path, downloading it first (through the shared fill) if needed."""
        if sha256 not in self.known:
            fill = self.fills.get(sha256)
            if fill is None:
                fill = self._start_fill(sha256, filename, source, authorization)
            await self._finished(fill)
        return self.blobs.path(sha256)

    async def store_bytes(self, data: bytes, filename: str) -> str:
        """Keep a small verified body the proxy made itself (not downloaded); its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in self.known:
            return sha256
        self.blobs.ensure_dirs()
        temp = self.blobs.new_temp()
        try:
            await asyncio.to_thread(_write_synced, temp, data)
            self.blobs.commit(temp, sha256)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        await self.store.add_blob(sha256, len(data), filename)
        self.known[sha256] = KnownBlob(len(data), filename)
        self.generation += 1
        return sha256

    async def respond_blob(
        self, request: web.Request, sha256: str, filename: str, *, private: bool
    ) -> web.StreamResponse | None:
        """Serve a cached blob under `filename`, whatever name it was stored by; None if absent."""
        blob = self.known.get(sha256)
        if blob is None:
            return None
        return await self._respond_hit(request, sha256, blob, filename, private=private)

    async def _finished(self, fill: Fill) -> None:
        while fill.state is FillState.RUNNING:
            await fill.changed()
        if fill.error is not None:
            raise fill.error

    def _headers(self, sha256: str, filename: str, *, private: bool) -> dict[str, str]:
        return {
            hdrs.CACHE_CONTROL: PRIVATE_IMMUTABLE if private else IMMUTABLE,
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="{filename}"',
            # Misses too: a range request then waits for the verified file and gets its 206.
            hdrs.ACCEPT_RANGES: "bytes",
            "X-Checksum-Sha256": sha256,
        }

    async def _respond_hit(
        self,
        request: web.Request,
        sha256: str,
        blob: KnownBlob,
        filename: str | None = None,
        *,
        private: bool,
    ) -> web.StreamResponse:
        self.accessed[sha256] = time.time()
        headers = self._headers(sha256, filename or blob.filename, private=private)
        headers["X-Cache"] = "HIT"
        if self.accel_redirect:
            headers["X-Accel-Redirect"] = (
                f"{self.accel_redirect}{sha256[:2]}/{sha256[2:4]}/{sha256}"
            )
            return web.Response(headers=headers)
        conditional = (
            request.http_range.start is not None
            or request.http_range.stop is not None
            or hdrs.IF_NONE_MATCH in request.headers
            or hdrs.IF_MODIFIED_SINCE in request.headers
            or hdrs.IF_RANGE in request.headers
        )
        path = self.blobs.path(sha256)
        if blob.size <= self.settings.memory_file_max and not conditional:
            body = self.memory.get(sha256)
            if body is None:
                body = await asyncio.to_thread(path.read_bytes)
                self.memory[sha256] = body
            return web.Response(body=body, headers=headers)
        return web.FileResponse(path, chunk_size=CHUNK, headers=headers)

    def _start_fill(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> Fill:
        self.blobs.ensure_dirs()
        temp = self.blobs.new_temp()
        # Created now, so a reader joining in this same step can open it.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fill = Fill(sha256, filename, temp)
        self.fills[sha256] = fill
        for observe in self.fill_observers:
            observe(fill)
        # Its own task: a client that disconnects does not cancel what others rely on.
        task = asyncio.create_task(self._run_fill(fill, fd, source, authorization))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _run_fill(
        self, fill: Fill, fd: int, source: yarl.URL, authorization: str | None
    ) -> None:
        committed = False
        try:
            async with self.upstream.open_file(source, authorization) as resp:
                fill.mark_started(resp.content_length)
                digest = hashlib.sha256()
                async for chunk in resp.content.iter_chunked(CHUNK):
                    _write_all(fd, chunk)
                    digest.update(chunk)
                    fill.advance(len(chunk))
            if fill.size is not None and fill.written != fill.size:
                raise self._bad_file(
                    f"upstream sent {fill.written} of {fill.size} bytes for {fill.filename}"
                )
            if digest.hexdigest() != fill.sha256:
                raise self._bad_file(f"sha256 mismatch for {fill.filename}: not stored")
            await asyncio.to_thread(os.fsync, fd)
            final = self.blobs.commit(fill.path, fill.sha256)
            committed = True
            await self.store.add_blob(fill.sha256, fill.written, fill.filename)
            self.known[fill.sha256] = KnownBlob(fill.written, fill.filename)
            self.generation += 1
            fill.finish(final)
            if self.on_verified is not None:
                self.on_verified(fill.sha256, fill.filename, final)
        except ProxyError as e:
            log.warning("fill of %s failed: %s", fill.filename, e.message)
            fill.fail(e)
        except aiohttp.ClientPayloadError:
            log.warning("fill of %s failed: upstream body incomplete", fill.filename)
            fill.fail(self._bad_file(f"upstream body for {fill.filename} was incomplete"))
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("fill of %s failed: %s", fill.filename, type(e).__name__)
            fill.fail(UpstreamUnavailable(f"upstream failed while sending {fill.filename}"))
        except OSError as e:
            log.error("fill of %s failed writing the cache: %s", fill.filename, e.strerror)
            fill.fail(UpstreamError(f"could not write {fill.filename} to the cache"))
        finally:
            os.close(fd)
            self.metrics.fetched("file", fill.written)
            if not committed:
                with contextlib.suppress(FileNotFoundError):
                    fill.path.unlink()
            if fill.state is FillState.RUNNING:
                fill.fail(UpstreamError(f"fill of {fill.filename} was interrupted"))
            self.fills.pop(fill.sha256, None)

    def _bad_file(self, message: str) -> UpstreamError:
        self.metrics.upstream_failed("file", message)
        return UpstreamError(message)

    async def _respond_fill(
        self, request: web.Request, fill: Fill, *, private: bool
    ) -> web.StreamResponse:
        # Opened before any await, so a rename or a failed fill's unlink cannot race it.
        reader = fill.path.open("rb")
        try:
            while not fill.started and fill.state is FillState.RUNNING:
                await fill.changed()
            if fill.error is not None and fill.written == 0:
                raise fill.error
            size = fill.size
            if request.method == hdrs.METH_HEAD and size is None:
                # No Content-Length from upstream: a HEAD still owes the client the size.
                await self._finished(fill)
                size = fill.written
            headers = self._headers(fill.sha256, fill.filename, private=private)
            headers["X-Cache"] = "MISS"
            response = web.StreamResponse(headers=headers)
            if size is not None:
                response.content_length = size
            await response.prepare(request)
            if request.method == hdrs.METH_HEAD:
                return response
            offset = 0
            while True:
                limit = fill.readable_limit()
                if offset < limit:
                    # Just written by the fill, so read from the page cache: no disk wait.
                    chunk = reader.read(min(CHUNK, limit - offset))
                    offset += len(chunk)
                    await response.write(chunk)
                elif fill.state is FillState.DONE:
                    await response.write_eof()
                    return response
                elif fill.state is FillState.FAILED:
                    _cut(request)
                    return response
                else:
                    await fill.changed()
        finally:
            reader.close()


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut(request: web.Request) -> None:
    """Close the client's connection mid-body, so its download fails loudly."""
    if request.transport is not None:
        request.transport.close()
