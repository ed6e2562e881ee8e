"""The file cache: the hit/miss decision, hits from disk or memory, misses through one fill."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import aiohttp
import yarl
from aiohttp import hdrs, web
from cachetools import TTLCache

from .blobs import CHUNK, BlobMismatch, BlobStore, BlobWriter
from .cachehealth import CacheHealth, CacheMode, Throttled
from .config import CacheSettings
from .errors import (
    CacheUnwritable,
    Offline,
    ProxyError,
    UpstreamError,
    UpstreamStatus,
    UpstreamUnavailable,
)
from .fill import (
    Fill,
    FillState,
    Outcome,
    cut,
    relay_verified,
    stream_fill,
)
from .locks import FileLock
from .memorytier import MemoryTier
from .metrics import Metrics
from .shared_tier import SharedTier, TierBlob, TierFailed
from .store import Store
from .upstream import Upstream, fingerprint

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
# A file GitLab gave to one client's credentials: no shared HTTP cache may hand it to others.
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"
ACCESS_FLUSH_SECONDS = 30.0
# Response headers the warm-up reads too: whether a file came from the cache, and its digest.
X_CACHE = "X-Cache"
X_CHECKSUM_SHA256 = "X-Checksum-Sha256"


@dataclass(slots=True)
class KnownBlob:
    size: int
    filename: str


class Next(enum.Enum):
    """What `respond` does after a pass that did not answer the client itself."""

    # The disk is out of the picture: stream upstream straight to this client.
    PASS_THROUGH = "pass-through"
    # The joined fill failed on its starter's credentials only: ask again with this client's.
    REJOIN = "rejoin"


class Admission(Protocol):
    """Whether one client may have a file the cache holds or is fetching for someone else."""

    async def admit(self) -> None:
        """Return if GitLab lets this client have the file, else raise GitLab's answer."""

    def answered(self, error: ProxyError | None) -> None:
        """GitLab's answer to this client's own download: None for a 200."""


class FileEvents:
    """Who hears of the cache's downloads: each fill as it starts, each blob once verified."""

    def __init__(self) -> None:
        self._fill_started: list[Callable[[Fill], None]] = []
        self._verified: list[Callable[[str, str], None]] = []

    def on_fill(self, observer: Callable[[Fill], None]) -> None:
        """Tell `observer` of each fill as it starts, so a warm-up can count what it caused."""
        self._fill_started.append(observer)

    def on_verified(self, observer: Callable[[str, str], None]) -> None:
        """Tell `observer` (sha256, filename) once a download has verified and is stored."""
        self._verified.append(observer)

    def fill_started(self, fill: Fill) -> None:
        for observe in self._fill_started:
            observe(fill)

    def verified(self, sha256: str, filename: str) -> None:
        for observe in self._verified:
            observe(sha256, filename)


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
        events: FileEvents | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self.settings = settings
        # Asked on a local miss before GitLab; given every blob verified from GitLab.
        self.shared = shared
        self.blobs = blobs
        self.store = store
        self.upstream = upstream
        self.metrics = metrics
        self._known: dict[str, KnownBlob] = {}
        self.memory = MemoryTier(settings.memory_size, settings.memory_file_max)
        self._fills: dict[str, Fill] = {}
        self.accessed: dict[str, float] = {}
        # Counts additions to `known`: rendered pages that show sizes are current while it stands.
        self.generation = 0
        self.events = events or FileEvents()
        # The verified bytes in `known`, kept as it changes: the metrics are told each change.
        self._known_bytes = 0
        self.health = CacheHealth(blobs, recheck=settings.recheck_interval)
        # Upstream 404s by (source URL, credential fingerprint), so absent files cost one request.
        self.negative: TTLCache[tuple[str, str], ProxyError] = TTLCache(
            maxsize=10_000, ttl=max(settings.negative_ttl, 1e-9), timer=time.monotonic
        )
        # Set whenever a blob is added, so eviction looks at the size soon.
        self.grown = asyncio.Event()
        # A file that found no room wakes eviction too: it frees space, not only size.
        self.health.on_no_room = self.grown.set
        self._tasks: set[asyncio.Task[None]] = set()
        self._db_warn = Throttled(log)

    @property
    def known(self) -> Mapping[str, KnownBlob]:
        """The verified blobs this process serves, by sha256; only the cache itself changes it."""
        return self._known

    @property
    def fills(self) -> Mapping[str, Fill]:
        """The downloads running in this process, by sha256."""
        return self._fills

    def totals(self) -> tuple[int, int]:
        """Bytes and number of the verified blobs this process serves."""
        return self._known_bytes, len(self._known)

    def _keep(self, sha256: str, blob: KnownBlob) -> None:
        old = self._known.get(sha256)
        self._known_bytes += blob.size - (0 if old is None else old.size)
        self._known[sha256] = blob
        self.metrics.cache_changed(*self.totals())

    def _drop(self, sha256: str) -> None:
        old = self._known.pop(sha256, None)
        if old is not None:
            self._known_bytes -= old.size
            self.metrics.cache_changed(*self.totals())

    async def load(self) -> None:
        """Start-up reconciliation: drop temp files, rows without blobs, blobs without rows.

        Safe while other workers share the directory: live temp files are flocked by their
        writer, and each blob is fixed only under its lock, after looking again. A directory
        that cannot be written is only read: what matches is served, the rest left as it is.
        """
        read_write = self.health.mode is CacheMode.READ_WRITE
        removed_temp = await asyncio.to_thread(self.blobs.clean_temp) if read_write else 0
        on_disk = dict(await asyncio.to_thread(lambda: list(self.blobs.scan())))
        rows = await self.store.blobs()
        self._known = {
            r.sha256: KnownBlob(r.size, r.filename) for r in rows if on_disk.get(r.sha256) == r.size
        }
        self._known_bytes = sum(b.size for b in self._known.values())
        self.metrics.cache_changed(*self.totals())
        if not read_write:
            return
        suspects = {r.sha256 for r in rows if r.sha256 not in self._known}
        suspects |= {sha for sha in on_disk if sha not in self._known}
        orphan_rows = stray = 0
        for sha in sorted(suspects):
            lock = self.blobs.try_lock(sha)
            if lock is None:
                continue  # another process is filling it right now
            with lock:
                row = await self.store.blob(sha)
                size = self.blobs.size_of(sha)
                if row is not None and size == row.size:
                    self._keep(sha, KnownBlob(row.size, row.filename))
                    continue
                if row is not None:
                    await self.store.remove_blobs([sha])
                    orphan_rows += 1
                if size is not None:
                    await asyncio.to_thread(self.blobs.remove, sha)
                    stray += 1
        if removed_temp or orphan_rows or stray:
            log.info(
                "cache reconciled: %d temp files, %d rows without a blob, %d blobs without a row",
                removed_temp,
                orphan_rows,
                stray,
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
        blob = self._known.get(sha256)
        if blob is None or blob.filename != filename:
            return None
        return blob

    def forget(self, sha256: str) -> None:
        """This process stops serving a blob another process (or `verify`) removed."""
        self._drop(sha256)
        self.memory.forget(sha256)

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
        admitted; a fill it starts itself is GitLab's answer to its own credentials. A joiner
        whose fill was refused to its starter's other credentials asks GitLab with its own.
        """
        private = admission is not None
        answer = await self._respond(request, sha256, filename, source, authorization, admission)
        if answer is Next.REJOIN:
            answer = await self._respond(
                request, sha256, filename, source, authorization, admission, rejoin=False
            )
        if answer is Next.PASS_THROUGH:
            return await self._pass_through(
                request, sha256, filename, source, authorization, private=private
            )
        assert isinstance(answer, web.StreamResponse)
        return answer

    async def _respond(
        self,
        request: web.Request,
        sha256: str,
        filename: str,
        source: yarl.URL,
        authorization: str | None,
        admission: Admission | None,
        *,
        rejoin: bool = True,
    ) -> web.StreamResponse | Next:
        """One pass of `respond`: admit and answer a hit, else join or start the fill and
        answer from it; or what `respond` does next (REJOIN only while `rejoin`)."""
        hit = await self._admit_and_hit(request, sha256, filename, admission)
        if hit is not None:
            return hit
        self.metrics.file_miss()
        if self.upstream.offline:
            raise Offline()
        absent = self.negative.get((str(source), fingerprint(authorization)))
        if absent is not None:
            raise absent
        fill = await self._join(sha256, filename)
        if fill is None:
            started = await self._start(request, sha256, filename, source, authorization, admission)
            if not isinstance(started, Fill):
                return started
            fill = started
        return await self._answer_from_fill(
            request, fill, source, authorization, private=admission is not None, rejoin=rejoin
        )

    async def _admit_and_hit(
        self, request: web.Request, sha256: str, filename: str, admission: Admission | None
    ) -> web.StreamResponse | None:
        """Admit the client to what the cache holds or fetches; the hit, if the cache holds it."""
        if admission is not None and (
            self.hit(sha256, filename) is not None or sha256 in self._fills
        ):
            await admission.admit()
        blob = self.hit(sha256, filename)
        if blob is None:
            return None
        hit = await self._respond_hit(request, sha256, blob, private=admission is not None)
        if hit is not None:
            self.metrics.file_hit(blob.size)
        return hit

    async def _join(self, sha256: str, filename: str) -> Fill | None:
        """The fill running for this file, or None when there is none to join."""
        while (fill := self._fills.get(sha256)) is not None and fill.filename != filename:
            # The same bytes are coming under another name; only GitLab can say this name has
            # them, so wait for that fill to end, then ask under this name.
            await fill.ended()
        return fill

    async def _start(
        self,
        request: web.Request,
        sha256: str,
        filename: str,
        source: yarl.URL,
        authorization: str | None,
        admission: Admission | None,
    ) -> Fill | web.StreamResponse | Next:
        """Start a fill; with an `admission`, GitLab's answer to it is this client's answer."""
        if not self.health.writable():
            return Next.PASS_THROUGH
        try:
            fill = self._start_fill(sha256, filename, source, authorization)
        except OSError as e:
            self.health.failed(e)
            return Next.PASS_THROUGH
        if admission is None:
            return fill
        await fill.headers_known()
        if fill.started and fill.from_shared:
            # Bytes another replica downloaded: GitLab has not answered this client yet.
            await admission.admit()
        elif fill.started:
            admission.answered(None)
        elif fill.outcome is Outcome.ADOPTED:
            # Adopted from another worker's download: GitLab never answered this client.
            await admission.admit()
        else:
            admission.answered(fill.error)
        # The fill ran on while this waited: it may be over, its temp file gone.
        if fill.outcome is Outcome.UNWRITABLE and not fill.started:
            return Next.PASS_THROUGH
        if fill.state is FillState.FAILED:
            raise fill.error or UpstreamError(f"fill of {filename} failed")
        blob = self.hit(sha256, filename)
        if fill.state is FillState.DONE and blob is not None:
            hit = await self._respond_hit(request, sha256, blob, private=True)
            if hit is not None:
                return hit
        return fill

    async def _answer_from_fill(
        self,
        request: web.Request,
        fill: Fill,
        source: yarl.URL,
        authorization: str | None,
        *,
        private: bool,
        rejoin: bool,
    ) -> web.StreamResponse | Next:
        """Stream the fill to the client, or answer a range request once it verified."""
        if request.http_range.start is None and request.http_range.stop is None:
            return await self._respond_fill(
                request, fill, source, authorization, private=private, rejoin=rejoin
            )
        # A range read needs the whole verified file; wait, then answer it like a hit.
        await fill.ended()
        if fill.outcome is Outcome.UNWRITABLE:
            return Next.PASS_THROUGH
        if rejoin and fill.refused_only_its_starter(authorization):
            return Next.REJOIN
        if fill.error is not None:
            raise fill.error
        blob = self._known.get(fill.sha256)
        if blob is not None:
            hit = await self._respond_hit(request, fill.sha256, blob, private=private)
            if hit is not None:
                return hit
        raise UpstreamUnavailable(f"{fill.filename} vanished from the cache; try again")

    async def ensure(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> None:
        """Have the verified blob stored, downloading it first (through the shared fill)."""
        blob = self._known.get(sha256)
        if blob is not None and self.blobs.size_of(sha256) != blob.size:
            # Evicted by another worker, or by `gc` / `verify`, since this process learnt of it.
            self.forget(sha256)
        if sha256 not in self._known:
            fill = self._fills.get(sha256)
            if fill is None:
                fill = self._start_fill(sha256, filename, source, authorization)
            await fill.ended()
            if fill.refused_only_its_starter(authorization):
                fill = self._fills.get(sha256) or self._start_fill(
                    sha256, filename, source, authorization
                )
            await self._finished(fill)

    async def store_bytes(self, data: bytes, filename: str) -> str:
        """Keep a small verified body the proxy made itself (not downloaded); its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 in self._known:
            return sha256
        self.blobs.ensure_dirs()
        writer = self.blobs.writer(sha256)
        try:
            await writer.write(data)
            await writer.commit()
        finally:
            writer.abort()
        await self.store.add_blob(sha256, len(data), filename)
        self._keep(sha256, KnownBlob(len(data), filename))
        self.generation += 1
        return sha256

    async def store_download(self, sha256: str, filename: str, body: bytes) -> None:
        """Keep a whole file that came with another request (a Range read that covered it),
        once it verifies; observers count it as a download, which it was."""
        if hashlib.sha256(body).hexdigest() != sha256 or sha256 in self._known:
            return
        await self.store_bytes(body, filename)
        fill = Fill(sha256, filename, self.blobs.path(sha256))
        fill.mark_started(len(body))
        fill.advance(len(body))
        fill.finish(fill.path)
        self.events.fill_started(fill)
        self.grown.set()
        self._share(sha256, filename, len(body))

    async def respond_blob(
        self, request: web.Request, sha256: str, filename: str, *, private: bool
    ) -> web.StreamResponse | None:
        """Serve a cached blob under `filename`, whatever name it was stored by; None if absent."""
        blob = self._known.get(sha256)
        if blob is None:
            return None
        return await self._respond_hit(request, sha256, blob, filename, private=private)

    async def _finished(self, fill: Fill) -> None:
        await fill.ended()
        if fill.error is not None:
            raise fill.error

    def headers_for(self, sha256: str, filename: str, *, private: bool) -> dict[str, str]:
        """The headers of a file served from here, for a body served from elsewhere."""
        return self._headers(sha256, filename, private=private)

    def _headers(self, sha256: str, filename: str, *, private: bool) -> dict[str, str]:
        return {
            hdrs.CACHE_CONTROL: PRIVATE_IMMUTABLE if private else IMMUTABLE,
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_DISPOSITION: f'attachment; filename="{filename}"',
            # Misses too: a range request then waits for the verified file and gets its 206.
            hdrs.ACCEPT_RANGES: "bytes",
            X_CHECKSUM_SHA256: sha256,
        }

    async def _respond_hit(
        self,
        request: web.Request,
        sha256: str,
        blob: KnownBlob,
        filename: str | None = None,
        *,
        private: bool,
    ) -> web.StreamResponse | None:
        """The cached file, or None when it is no longer on disk (evicted, or found bad)."""
        self.accessed[sha256] = time.time()
        headers = self._headers(sha256, filename or blob.filename, private=private)
        headers[X_CACHE] = "HIT"
        if self.blobs.serves_elsewhere:
            return self.blobs.serve(sha256, headers)
        conditional = (
            request.http_range.start is not None
            or request.http_range.stop is not None
            or hdrs.IF_NONE_MATCH in request.headers
            or hdrs.IF_MODIFIED_SINCE in request.headers
            or hdrs.IF_RANGE in request.headers
        )
        if self.memory.takes(blob.size) and not conditional:
            body = self.memory.get(sha256)
            if body is None:
                body = await asyncio.to_thread(self.blobs.read_verified, sha256)
                if body is None:
                    await self._discard(sha256)
                    return None
                self.memory.put(sha256, body)
            return web.Response(body=body, headers=headers)
        # Memory hits, the common case, end above: serve() builds a path (it shows in profiles).
        response = self.blobs.serve(sha256, headers)
        if response is None:
            self.forget(sha256)
        return response

    async def _discard(self, sha256: str) -> None:
        """Drop a blob that is gone or does not match its name, so it is fetched again."""
        self.forget(sha256)
        if self.health.mode is not CacheMode.READ_WRITE:
            log.error("blob %s does not match its sha256; not serving it", sha256)
            return
        lock = self.blobs.try_lock(sha256)
        if lock is None:
            return  # someone is filling it again right now
        with lock:
            if self.blobs.size_of(sha256) is not None:
                log.error("blob %s does not match its sha256; removed it", sha256)
                await asyncio.to_thread(self.blobs.remove, sha256)
            await self.store.remove_blobs([sha256])

    def _start_fill(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> Fill:
        self.blobs.ensure_dirs()
        # Created now, so a reader joining in this same step can open it.
        writer = self.blobs.writer(sha256)
        fill = Fill(sha256, filename, writer.path, source, fingerprint(authorization))
        self._fills[sha256] = fill
        self.metrics.fills_changed(len(self._fills))
        self.events.fill_started(fill)
        # Its own task: a client that disconnects does not cancel what others rely on.
        task = asyncio.create_task(self._run_fill(fill, writer, source, authorization))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _run_fill(
        self, fill: Fill, writer: BlobWriter, source: yarl.URL, authorization: str | None
    ) -> None:
        lock: FileLock | None = None
        try:
            # One fill per blob across worker processes: the others wait, then adopt the blob.
            lock = await self.blobs.lock(fill.sha256)
            if await self._adopt(fill):
                return
            overwrites = await self._fill_from_shared(fill, writer)
            if overwrites is not None:
                await self._fill_from_upstream(fill, writer, source, authorization, overwrites)
            if fill.size is not None and fill.written != fill.size:
                raise self._bad_file(
                    f"upstream sent {fill.written} of {fill.size} bytes for {fill.filename}"
                )
            try:
                final = await writer.commit()
            except BlobMismatch:
                raise self._bad_file(f"sha256 mismatch for {fill.filename}: not stored") from None
            # Readers arriving from now on open the blob; the temp path is gone.
            fill.path = final
            await self._record(fill.sha256, fill.written, fill.filename)
            self._keep(fill.sha256, KnownBlob(fill.written, fill.filename))
            self.generation += 1
            fill.finish(final)
            self.grown.set()
            self.events.verified(fill.sha256, fill.filename)
            if not fill.from_shared:
                self._share(fill.sha256, fill.filename, fill.written)
        except CacheUnwritable as e:
            fill.fail(e)
        except ProxyError as e:
            log.warning("fill of %s failed: %s", fill.filename, e.message)
            if isinstance(e, UpstreamStatus) and e.status in (404, 410):
                self.negative[(str(source), fingerprint(authorization))] = e
            fill.fail(e)
        except aiohttp.ClientPayloadError:
            log.warning("fill of %s failed: upstream body incomplete", fill.filename)
            fill.fail(self._bad_file(f"upstream body for {fill.filename} was incomplete"))
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("fill of %s failed: %s", fill.filename, type(e).__name__)
            fill.fail(UpstreamUnavailable(f"upstream failed while sending {fill.filename}"))
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self.health.no_room(fill.size or fill.written)
            else:
                self.health.failed(e)
            fill.fail(CacheUnwritable(f"could not write {fill.filename} to the cache"))
        finally:
            writer.abort()
            if not fill.from_shared:
                self.metrics.fetched("file", fill.written)
            if fill.state is FillState.RUNNING:
                fill.fail(UpstreamError(f"fill of {fill.filename} was interrupted"))
            self._fills.pop(fill.sha256, None)
            self.metrics.fills_changed(len(self._fills))
            if lock is not None:
                lock.release()

    def _share(self, sha256: str, filename: str, size: int) -> None:
        """Put a blob verified from GitLab to the shared tier, in the background."""
        if self.shared is not None:
            self.shared.upload_blob(sha256, filename, size, lambda: self.blobs.open(sha256))

    async def in_shared_tier(self, sha256: str, filename: str) -> bool:
        """Whether the shared tier holds this file, so a fill would not ask GitLab for it."""
        return self.shared is not None and await self.shared.holds(sha256, filename)

    async def _fill_from_shared(self, fill: Fill, writer: BlobWriter) -> int | None:
        """Fill from the shared tier if it holds the blob under this name.

        Its bytes go through the same writer as GitLab's: hashed as they land, the last one held
        back from readers until the whole verifies. None once they verified; else how many bytes
        of a copy that failed (0: no copy) GitLab's bytes must be checked against."""
        if self.shared is None:
            return 0
        found = await self.shared.open_blob(fill.sha256, fill.filename)
        if found is None:
            return 0
        try:
            if await self._copy_shared(fill, writer, found):
                return None
        finally:
            # However this ends, its connection goes back at once.
            found.close()
        writer.rewind()
        return fill.restart()

    async def _copy_shared(self, fill: Fill, writer: BlobWriter, found: TierBlob) -> bool:
        """The tier's bytes into the writer; whether they verified (a copy that did not is
        removed from the bucket)."""
        assert self.shared is not None
        if not self.health.room_for(found.size):
            raise CacheUnwritable(f"no room in the cache for {fill.filename}")
        fill.from_shared = True
        fill.mark_started(found.size)
        try:
            async for chunk in found.chunks():
                await writer.write(chunk)
                fill.advance(len(chunk))
                if fill.written > found.size:
                    break
        except TierFailed as e:
            log.warning(
                "fill of %s from the shared tier failed (%s): from GitLab", fill.filename, e
            )
            return False
        if fill.written == found.size and writer.verified():
            return True
        log.error("shared tier: %s did not verify; removed from the bucket", fill.filename)
        self.metrics.shared_tier("bad")
        await self.shared.discard_blob(fill.sha256)
        return False

    async def _fill_from_upstream(
        self,
        fill: Fill,
        writer: BlobWriter,
        source: yarl.URL,
        authorization: str | None,
        overwrites: int,
    ) -> None:
        """GitLab's bytes into the writer; the first `overwrites` of them, over the shared tier's
        that failed, are compared with those, so readers sent them only go on if they match."""
        with contextlib.ExitStack() as stack:
            earlier = stack.enter_context(writer.path.open("rb")) if overwrites else None
            async with self.upstream.open_file(source, authorization) as resp:
                size = resp.content_length
                # Without a Content-Length the reserve is checked as the file grows, chunk by
                # chunk, instead of once for its whole size.
                if not self.health.room_for(size or 0):
                    raise CacheUnwritable(f"no room in the cache for {fill.filename}")
                fill.mark_started(size)
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if size is None and not self.health.room_for(len(chunk)):
                        raise CacheUnwritable(f"no room left in the cache for {fill.filename}")
                    if earlier is not None and fill.written < overwrites:
                        _compare(fill, earlier, chunk, overwrites)
                    await writer.write(chunk)
                    fill.advance(len(chunk))

    def _bad_file(self, message: str) -> UpstreamError:
        self.metrics.upstream_failed("file", message)
        return UpstreamError(message)

    async def learn(self, sha256: str) -> bool:
        """Whether the cache holds this blob, learning one another worker process recorded."""
        if sha256 in self._known:
            return True
        row = await self.store.blob(sha256)
        if row is None or self.blobs.size_of(sha256) != row.size:
            return False
        self._keep(sha256, KnownBlob(row.size, row.filename))
        return True

    def filling_elsewhere(self, sha256: str) -> bool:
        """Whether another process is downloading this blob now (it holds its lock)."""
        if sha256 in self._fills or self.health.mode is not CacheMode.READ_WRITE:
            return False
        try:
            lock = self.blobs.try_lock(sha256)
        except OSError:
            return False  # a directory that takes no lock files takes no downloads either
        if lock is None:
            return True
        lock.release()
        return False

    async def _adopt(self, fill: Fill) -> bool:
        """Take a blob another process finished while this one waited for its lock."""
        size = self.blobs.size_of(fill.sha256)
        if size is None:
            return False
        row = await self.store.blob(fill.sha256)
        if row is not None and row.filename != fill.filename:
            # The same bytes under another name: only GitLab can say this name has them.
            return False
        await self._record(fill.sha256, size, fill.filename)
        self._keep(fill.sha256, KnownBlob(size, fill.filename))
        self.generation += 1
        fill.finish(self.blobs.path(fill.sha256))
        return True

    async def _record(self, sha256: str, size: int, filename: str) -> None:
        try:
            await self.store.add_blob(sha256, size, filename)
        except sqlite3.Error as e:
            # Served from this process anyway; the next start-up drops the unrecorded blob.
            self._db_warn.log(logging.WARNING, "could not record %s in SQLite: %s", sha256, e)

    async def _respond_fill(
        self,
        request: web.Request,
        fill: Fill,
        source: yarl.URL,
        authorization: str | None,
        *,
        private: bool,
        rejoin: bool,
    ) -> web.StreamResponse | Next:
        """Stream a fill to the client, or what `respond` does next (REJOIN only while `rejoin`)."""
        # Opened before any await, so a rename or a failed fill's unlink cannot race it.
        reader = fill.path.open("rb")
        try:
            await fill.headers_known()
            if fill.outcome is Outcome.UNWRITABLE and fill.written == 0:
                return Next.PASS_THROUGH
            if fill.outcome is Outcome.ADOPTED:
                # Adopted from another worker: the blob is on disk, verified there.
                blob = self._known.get(fill.sha256)
                hit = (
                    None
                    if blob is None
                    else await self._respond_hit(request, fill.sha256, blob, private=private)
                )
                if hit is None:
                    raise UpstreamUnavailable(f"{fill.filename} vanished from the cache; try again")
                return hit
            if rejoin and fill.refused_only_its_starter(authorization):
                return Next.REJOIN
            if fill.error is not None and fill.written == 0:
                raise fill.error
            size = fill.size
            if request.method == hdrs.METH_HEAD:
                # GitLab's Content-Length is its claim, not the file's: a HEAD reports the size
                # of the bytes that verified, or the error if they did not.
                await self._finished(fill)
                size = fill.written
            headers = self._headers(fill.sha256, fill.filename, private=private)
            headers[X_CACHE] = "MISS"
            response = web.StreamResponse(headers=headers)
            if size is not None:
                response.content_length = size
            await response.prepare(request)
            if request.method == hdrs.METH_HEAD:
                return response
            # A client that goes away only stops its own copy; the fill goes on for the others.
            with contextlib.suppress(ConnectionError):
                sent = await stream_fill(request, response, fill, reader)
                if sent is not None:
                    await self._go_on(request, response, fill, reader, sent, source, authorization)
            return response
        finally:
            reader.close()

    async def _go_on(
        self,
        request: web.Request,
        response: web.StreamResponse,
        fill: Fill,
        reader: BinaryIO,
        sent: int,
        source: yarl.URL,
        authorization: str | None,
    ) -> None:
        """The disk filled up under a download this client has `sent` bytes of: its copy goes
        on from a new upstream download, checked against the bytes it already has."""
        try:
            async with self.upstream.open_file(source, authorization) as resp:
                await relay_verified(
                    request, response, resp, fill.sha256, fill.filename, reader, sent
                )
        except ProxyError as e:
            log.warning("pass-through of %s failed: %s", fill.filename, e.message)
            cut(request)

    async def _pass_through(
        self,
        request: web.Request,
        sha256: str,
        filename: str,
        source: yarl.URL,
        authorization: str | None,
        *,
        private: bool,
    ) -> web.StreamResponse:
        """Stream upstream to this client without the disk; the last byte waits for the sha256."""
        async with self.upstream.open_file(source, authorization) as resp:
            headers = self._headers(sha256, filename, private=private)
            headers[X_CACHE] = "BYPASS"
            response = web.StreamResponse(headers=headers)
            # Unverified, a HEAD has no size to stand behind: a GET's body is checked as sent.
            if resp.content_length is not None and request.method != hdrs.METH_HEAD:
                response.content_length = resp.content_length
            # A client that goes away leaves nothing to undo: nothing was stored.
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                if request.method != hdrs.METH_HEAD:
                    await relay_verified(request, response, resp, sha256, filename)
            return response


def _compare(fill: Fill, earlier: BinaryIO, chunk: bytes, overwrites: int) -> None:
    """Tell the fill where `chunk`, about to overwrite bytes a failed first attempt wrote at
    `fill.written`, first differs from them (readers may have been sent those)."""
    start = fill.written
    had = os.pread(earlier.fileno(), min(len(chunk), overwrites - start), start)
    if chunk[: len(had)] != had:
        first = next(i for i, (a, b) in enumerate(zip(had, chunk, strict=False)) if a != b)
        fill.diverged_at(start + first)
