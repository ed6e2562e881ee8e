"""The file cache: hits from disk or memory, tee-on-miss with sha256 verification, single flight."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yarl
from aiohttp import hdrs, web
from cachetools import LRUCache

from .blobs import BlobStore
from .config import CacheSettings
from .errors import ProxyError, UpstreamError, UpstreamUnavailable
from .store import Store
from .upstream import Upstream

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
IMMUTABLE = "public, max-age=31536000, immutable"
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


class FileCache:
    """Owns `known` blobs, the small-file memory cache, in-flight fills and access times."""

    def __init__(
        self, settings: CacheSettings, blobs: BlobStore, store: Store, upstream: Upstream
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.store = store
        self.upstream = upstream
        self.known: dict[str, KnownBlob] = {}
        self.memory: LRUCache[str, bytes] = LRUCache(
            maxsize=max(1, settings.memory_size), getsizeof=len
        )
        self.fills: dict[str, Fill] = {}
        self.accessed: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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

    async def close(self) -> None:
        """Let running fills end, then write the last access times."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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
    ) -> web.StreamResponse:
        """Serve a file: from the cache when verified there, else through one shared fill."""
        blob = self.hit(sha256, filename)
        if blob is not None:
            return await self._respond_hit(request, sha256, blob)
        fill = self.fills.get(sha256)
        if fill is None:
            fill = self._start_fill(sha256, filename, source, authorization)
        if request.http_range.start is not None or request.http_range.stop is not None:
            # A range read needs the whole verified file; wait, then answer it like a hit.
            while fill.state is FillState.RUNNING:
                await fill.changed()
            if fill.error is not None:
                raise fill.error
            blob = self.known.get(sha256)
            if blob is not None:
                return await self._respond_hit(request, sha256, blob)
        return await self._respond_fill(request, fill)

    def _headers(self, sha256: str, filename: str) -> dict[str, str]:
        return {
            hdrs.CACHE_CONTROL: IMMUTABLE,
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="{filename}"',
            "X-Checksum-Sha256": sha256,
        }

    async def _respond_hit(
        self, request: web.Request, sha256: str, blob: KnownBlob
    ) -> web.StreamResponse:
        self.accessed[sha256] = time.time()
        headers = self._headers(sha256, blob.filename)
        headers["X-Cache"] = "HIT"
        conditional = (
            request.http_range.start is not None
            or request.http_range.stop is not None
            or hdrs.IF_NONE_MATCH in request.headers
            or hdrs.IF_MODIFIED_SINCE in request.headers
            or hdrs.IF_RANGE in request.headers
        )
        if blob.size <= self.settings.memory_file_max and not conditional:
            body = self.memory.get(sha256)
            if body is None:
                body = await asyncio.to_thread(self.blobs.path(sha256).read_bytes)
                self.memory[sha256] = body
            headers[hdrs.ACCEPT_RANGES] = "bytes"
            return web.Response(body=body, headers=headers)
        return web.FileResponse(self.blobs.path(sha256), chunk_size=CHUNK, headers=headers)

    def _start_fill(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> Fill:
        self.blobs.ensure_dirs()
        temp = self.blobs.new_temp()
        # Created now, so a reader joining in this same step can open it.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fill = Fill(sha256, filename, temp)
        self.fills[sha256] = fill
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
                raise UpstreamError(
                    f"upstream sent {fill.written} of {fill.size} bytes for {fill.filename}"
                )
            if digest.hexdigest() != fill.sha256:
                raise UpstreamError(f"sha256 mismatch for {fill.filename}: not stored")
            await asyncio.to_thread(os.fsync, fd)
            final = self.blobs.commit(fill.path, fill.sha256)
            committed = True
            # Readers arriving while SQLite records it must open the blob: the temp path is gone.
            fill.path = final
            await self.store.add_blob(fill.sha256, fill.written, fill.filename)
            self.known[fill.sha256] = KnownBlob(fill.written, fill.filename)
            fill.finish(final)
        except ProxyError as e:
            log.warning("fill of %s failed: %s", fill.filename, e.message)
            fill.fail(e)
        except aiohttp.ClientPayloadError:
            log.warning("fill of %s failed: upstream body incomplete", fill.filename)
            fill.fail(UpstreamError(f"upstream body for {fill.filename} was incomplete"))
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("fill of %s failed: %s", fill.filename, type(e).__name__)
            fill.fail(UpstreamUnavailable(f"upstream failed while sending {fill.filename}"))
        except OSError as e:
            log.error("fill of %s failed writing the cache: %s", fill.filename, e.strerror)
            fill.fail(UpstreamError(f"could not write {fill.filename} to the cache"))
        finally:
            os.close(fd)
            if not committed:
                with contextlib.suppress(FileNotFoundError):
                    fill.path.unlink()
            if fill.state is FillState.RUNNING:
                fill.fail(UpstreamError(f"fill of {fill.filename} was interrupted"))
            self.fills.pop(fill.sha256, None)

    async def _respond_fill(self, request: web.Request, fill: Fill) -> web.StreamResponse:
        # Opened before any await, so a rename or a failed fill's unlink cannot race it.
        reader = fill.path.open("rb")
        try:
            while not fill.started and fill.state is FillState.RUNNING:
                await fill.changed()
            if fill.error is not None and fill.written == 0:
                raise fill.error
            headers = self._headers(fill.sha256, fill.filename)
            headers["X-Cache"] = "MISS"
            response = web.StreamResponse(headers=headers)
            if fill.size is not None:
                response.content_length = fill.size
            await response.prepare(request)
            if request.method == hdrs.METH_HEAD:
                return response
            # With a known length the body goes by sendfile, never copied through Python: that is
            # what lets one fill feed dozens of clients. Chunked framing needs write() instead.
            transport = request.transport if fill.size is not None else None
            loop = asyncio.get_running_loop()
            offset = 0
            while True:
                limit = fill.readable_limit()
                if offset < limit and transport is not None:
                    if transport.is_closing():
                        return response  # the client left; the fill goes on for the others
                    offset += await loop.sendfile(transport, reader, offset, limit - offset)
                elif offset < limit:
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut(request: web.Request) -> None:
    """Close the client's connection mid-body, so its download fails loudly."""
    if request.transport is not None:
        request.transport.close()
