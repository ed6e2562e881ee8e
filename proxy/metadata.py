"""PEP 658/714 core metadata: each wheel's METADATA, read from the cached wheel or by Range."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import lzma
import sqlite3
import struct
import zipfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, cast

import yarl
from aiohttp import web
from cachetools import LRUCache
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .blobs import BlobStore
from .cachehealth import Throttled
from .errors import CacheUnwritable, NotFound, UpstreamError, UpstreamStatus
from .files import Admission, FileCache, FileEvents
from .remotezip import RemoteFile, RemoteZipError, read_by_range
from .simple import Distribution
from .store import CoreMetadataRow, Store
from .upstream import RangeIgnored, read_limited

log = logging.getLogger(__name__)

SUFFIX = ".metadata"
# Real METADATA files run to a few hundred KiB (long descriptions); a zip member claiming more
# is not read into memory.
MAX_METADATA_BYTES = 16 * 1024 * 1024
# A zip member's local header before its name; past the name, an extra field that may be
# longer than the central directory's copy of it (read along, so one range usually does).
LOCAL_HEADER_BYTES = 30
LOCAL_EXTRA_SLACK = 1024
# Metadata of wheels the cache has no room for, held in memory instead (most are a few KiB).
UNSTORED_BYTES = 32 * 1024 * 1024
# With no room in the cache and an upstream that ignores Range, a wheel up to this size is
# read into memory (two at a time) to serve its metadata; a bigger one gets a 503.
MAX_IN_MEMORY_WHEEL = 64 * 1024 * 1024


class WheelMetadataError(Exception):
    """The wheel has no METADATA a client could use; the message says why."""


def read_wheel_metadata(source: Path | RemoteFile, filename: str) -> bytes:
    """The `<name>-<version>.dist-info/METADATA` bytes of a wheel (blocking), from a cached
    file or from the ranges of a remote one (MissingBytes: fetch those, then ask again).

    The one `.dist-info` directory must name the project and version the filename does, as
    pip and uv check when they install the wheel.
    """
    if isinstance(source, Path):
        # Opened first: a file that is gone says nothing about the wheel's content.
        with source.open("rb") as file:
            return _read_metadata(file, filename)
    return _read_metadata(source, filename)


def read_stored_metadata(blobs: BlobStore, sha256: str, filename: str) -> bytes:
    """`read_wheel_metadata` of a stored wheel (blocking)."""
    # Opened first: a blob that is gone says nothing about the wheel's content.
    with blobs.open(sha256) as file:
        return _read_metadata(file, filename)


def _read_metadata(file: BinaryIO | RemoteFile, filename: str) -> bytes:
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as e:
        raise WheelMetadataError(f"{filename} is not a wheel filename") from e
    try:
        with zipfile.ZipFile(cast(BinaryIO, file)) as archive:
            tops = {
                top
                for member in archive.namelist()
                if (top := member.partition("/")[0]).endswith(".dist-info") and "/" in member
            }
            if not tops:
                raise WheelMetadataError(f"{filename} has no .dist-info directory")
            if len(tops) > 1:
                raise WheelMetadataError(f"{filename} has {len(tops)} .dist-info directories")
            (dist_info,) = tops
            _check_dist_info(dist_info, name, version, filename)
            try:
                info = archive.getinfo(f"{dist_info}/METADATA")
            except KeyError:
                raise WheelMetadataError(f"{filename} has no {dist_info}/METADATA") from None
            if max(info.file_size, info.compress_size) > MAX_METADATA_BYTES:
                raise WheelMetadataError(f"{filename}'s METADATA is larger than it may be")
            if isinstance(file, RemoteFile):
                # The local header, its name and extra field, and the data, in one range.
                end = (
                    info.header_offset
                    + LOCAL_HEADER_BYTES
                    + len(info.filename.encode())
                    + len(info.extra)
                    + info.compress_size
                )
                file.require(info.header_offset, min(end + LOCAL_EXTRA_SLACK, file.size))
            # zipfile stops at the member's declared size, checked just above.
            return archive.read(info)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        # An encrypted member, an unsupported compression method, a corrupt stream (bzip2
        # says so with an OSError), a name flagged UTF-8 that is not (a ValueError).
        RuntimeError,
        NotImplementedError,
        ValueError,
        OSError,
        struct.error,
        zlib.error,
        lzma.LZMAError,
    ) as e:
        raise WheelMetadataError(f"{filename} is not a readable zip archive ({e})") from e


def _check_dist_info(dist_info: str, name: str, version: Version, filename: str) -> None:
    dist_name, _, dist_version = dist_info.removesuffix(".dist-info").rpartition("-")
    try:
        same_version = Version(dist_version) == version
    except InvalidVersion:
        same_version = False
    if canonicalize_name(dist_name) != name or not same_version:
        raise WheelMetadataError(f"{filename} holds {dist_info}, which names another distribution")


class CoreMetadata:
    """Owns the wheel-to-metadata map (memory and SQLite) and extractions in flight."""

    def __init__(self, files: FileCache, store: Store, events: FileEvents) -> None:
        self.files = files
        self.store = store
        # wheel sha256 -> metadata sha256, or None when the wheel has no usable METADATA.
        self.by_wheel: dict[str, str | None] = {}
        self.problems: dict[str, str] = {}
        # Wheels whose entry was read by Range, not yet checked against the verified wheel.
        self.provisional: set[str] = set()
        # Metadata bodies the cache could not store (full or unwritable): served from here.
        self.unstored: LRUCache[str, bytes] = LRUCache(maxsize=UNSTORED_BYTES, getsizeof=len)
        # Counts changes to `by_wheel`: pages rendered under one count advertise current hashes.
        self._changes = 0
        self._inflight: dict[str, asyncio.Future[str]] = {}
        events.on_verified(self.wheel_verified)
        self._tasks: set[asyncio.Task[None]] = set()
        self._db_warn = Throttled(log)
        self._memory_reads = asyncio.Semaphore(2)

    async def load(self) -> None:
        for row in await self.store.core_metadata():
            self._remember(row)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def generation(self) -> int:
        """Changes what pages advertise: `by_wheel`, and whether blind() holds."""
        return 2 * self._changes + self._blind()

    def _blind(self) -> bool:
        """The cache takes no writes and some upstream ignores Range: big wheels' metadata
        could then be read only by downloading them whole, into memory."""
        return self.files.health.problem is not None and self.files.upstream.ignores_range_somewhere

    def advertised(self, dist: Distribution) -> bool | str:
        """What a page says of this file's metadata: `sha256=<hex>` once known, else the hash
        upstream's page gave, else `True`.

        Upstream's hash is passed on only until the proxy knows its own: a metadata file
        fetched from upstream is served only if it has that hash (`_published`).
        """
        if not dist.is_wheel or dist.sha256 is None:
            return False
        if dist.sha256 not in self.by_wheel:
            if dist.core_metadata is not False:
                # Upstream serves it itself (`_published`), whatever the cache and Range allow.
                return dist.core_metadata
            # Not offered when it could not be served: pip would retry, then abort the install.
            return not (
                self._blind()
                and not self.files.upstream.ranges_work(yarl.URL(dist.url, encoded=True))
                and (dist.size is None or dist.size > MAX_IN_MEMORY_WHEEL)
            )
        metadata_sha256 = self.by_wheel[dist.sha256]
        return False if metadata_sha256 is None else f"sha256={metadata_sha256}"

    async def knows(self, sha256: str) -> bool:
        """Whether this wheel's metadata is known, here or to another worker process."""
        if sha256 not in self.by_wheel:
            for row in await self.store.core_metadata(sha256):
                self._remember(row)
        return sha256 in self.by_wheel

    async def respond(
        self,
        request: web.Request,
        sha256: str,
        filename: str,
        source: yarl.URL,
        authorization: str | None,
        admission: Admission | None = None,
        *,
        offered: bool | str = False,
    ) -> web.StreamResponse:
        """Serve `<filename>.metadata` for the wheel `filename` whose sha256 is `sha256`.

        With an `admission` (a client's own credentials), GitLab must let that client have the
        wheel before anything derived from it is served: metadata names a private package too.
        `offered`: what upstream's page said of the wheel's metadata (`core_metadata`).
        """
        private = admission is not None
        if admission is not None:
            await admission.admit()
            # GitLab let this client have this wheel: what another worker learnt of it may serve.
            # With the proxy's own credentials the handler asked, before judging the scope.
            await self.knows(sha256)
        metadata_filename = filename + SUFFIX
        metadata_sha256 = self.by_wheel.get(sha256)
        if metadata_sha256 is not None:
            response = await self._respond_known(request, metadata_sha256, filename, private)
            if response is not None:
                blob = self.files.known.get(metadata_sha256)
                self.files.metrics.file_hit(blob.size if blob is not None else 0)
                return response
        self.files.metrics.file_miss()
        metadata_sha256 = await self._single_flight(
            sha256, lambda: self._obtain(sha256, filename, source, authorization, offered)
        )
        response = await self._respond_known(request, metadata_sha256, filename, private)
        if response is None:
            raise NotFound(f"the metadata of {metadata_filename} is not in the cache")
        return response

    async def _respond_known(
        self, request: web.Request, metadata_sha256: str, filename: str, private: bool
    ) -> web.StreamResponse | None:
        metadata_filename = filename + SUFFIX
        response = await self.files.respond_blob(
            request, metadata_sha256, metadata_filename, private=private
        )
        if response is not None:
            return response
        body = self.unstored.get(metadata_sha256)
        if body is None:
            return None
        headers = self.files.headers_for(metadata_sha256, metadata_filename, private=private)
        headers["X-Cache"] = "BYPASS"
        return web.Response(body=body, headers=headers)

    def wheel_verified(self, sha256: str, filename: str) -> None:
        """A wheel just entered the cache: learn its metadata now, so pages can name its hash,
        or check what a Range read said of it."""
        if not filename.endswith(".whl"):
            return
        if sha256 in self.by_wheel and sha256 not in self.provisional:
            return
        task = asyncio.create_task(self._learn(sha256, filename))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _learn(self, sha256: str, filename: str) -> None:
        try:
            # Its own flight: a Range read of the same wheel may be running, and is no check.
            await self._single_flight(f"{sha256}/verified", lambda: self._extract(sha256, filename))
        except NotFound:
            pass  # recorded and logged; pages stop advertising it
        except Exception:
            log.exception("could not read the metadata of %s", filename)

    async def _single_flight(self, key: str, work: Callable[[], Awaitable[str]]) -> str:
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(work())
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: one client going away must not cancel what the others wait on.
        return await asyncio.shield(future)

    async def _obtain(
        self,
        sha256: str,
        filename: str,
        source: yarl.URL,
        authorization: str | None,
        offered: bool | str,
    ) -> str:
        if sha256 in self.by_wheel:
            known = self.by_wheel[sha256]
            if known is None:
                problem = self.problems.get(sha256, f"{filename} has none usable")
                raise NotFound(f"no core metadata: {problem}")
            # Its blob may be another worker's: learnt from the index, not fetched again.
            if known in self.unstored or await self.files.learn(known):
                return known
        upstream = self.files.upstream
        await self.files.learn(sha256)  # the wheel itself, if another worker cached it
        if (
            self.files.hit(sha256, filename) is None
            and not upstream.offline
            # The shared tier's wheel is read whole: no byte of it from GitLab.
            and not await self.files.in_shared_tier(sha256, filename)
        ):
            on_origin = upstream.is_upstream_host(source)
            if offered is not False or not on_origin:
                # A public index, or a parent proxy of this project, serves the metadata file
                # itself (PEP 658/714): kilobytes, and no Range into the wheel.
                published = await self._published(
                    source, filename, offered, authorization if on_origin else None
                )
                if published is not None:
                    return await self._keep(sha256, filename, published, provisional=True)
            if upstream.ranges_work(source):
                with contextlib.suppress(RangeIgnored):
                    return await self._read_by_range(sha256, filename, source, authorization)
        if self.files.hit(sha256, filename) is None and not self.files.health.writable():
            return await self._read_in_memory(sha256, filename, source, authorization)
        await self.files.ensure(sha256, filename, source, authorization)
        if self.files.hit(sha256, filename) is None:
            # These bytes are cached as another file: what they hold says nothing of this name,
            # so nothing about them may be remembered for the wheel's own name.
            raise NotFound(f"{filename} with that sha256 is not in the cache")
        return await self._extract(sha256, filename)

    async def _read_by_range(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> str:
        """METADATA from the wheel's zip directory and one member: kilobytes, not the wheel."""
        upstream = self.files.upstream
        # A small wheel comes whole with the tail: verified, it is cached like any download.
        whole: bytes | None = None

        async def read_range(first: int | None, last: int) -> tuple[int, bytes, int]:
            nonlocal whole
            offset, body, size = await upstream.read_range(source, authorization, first, last)
            if offset == 0 and len(body) == size and hashlib.sha256(body).hexdigest() == sha256:
                whole = body
            return offset, body, size

        try:
            data = await read_by_range(
                read_range, lambda remote: read_wheel_metadata(remote, filename)
            )
        except (WheelMetadataError, RemoteZipError) as e:
            # Unverified bytes are provisional, checked again once the wheel verifies.
            if whole is not None:
                await self._store_wheel(sha256, filename, whole)
            await self._record_problem(sha256, filename, str(e), provisional=whole is None)
            raise NotFound(f"no core metadata: {e}") from e
        if whole is not None:
            await self._store_wheel(sha256, filename, whole)
        return await self._keep(sha256, filename, data, provisional=whole is None)

    async def _store_wheel(self, sha256: str, filename: str, body: bytes) -> None:
        if not self.files.health.writable():
            return
        try:
            await self.files.store_download(sha256, filename, body)
        except OSError as e:
            self.files.health.failed(e)
        except sqlite3.Error as e:
            self._db_warn.log(logging.WARNING, "could not record %s in SQLite: %s", filename, e)

    async def _read_in_memory(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> str:
        """With no room in the cache and no Range: the whole wheel into memory, verified, if
        it is small enough; nothing is stored."""
        upstream = self.files.upstream
        async with self._memory_reads, upstream.open_file(source, authorization) as resp:
            too_big = CacheUnwritable(f"no room in the cache to read the metadata of {filename}")
            wheel = await read_limited(resp, MAX_IN_MEMORY_WHEEL, too_big)
        self.files.metrics.fetched("file", len(wheel))
        if hashlib.sha256(wheel).hexdigest() != sha256:
            raise UpstreamError(f"sha256 mismatch for {filename}: its metadata is not served")
        remote = RemoteFile(len(wheel))
        remote.add(0, wheel)
        try:
            data = await asyncio.to_thread(read_wheel_metadata, remote, filename)
        except WheelMetadataError as e:
            await self._record_problem(sha256, filename, str(e), provisional=False)
            raise NotFound(f"no core metadata: {e}") from e
        return await self._keep(sha256, filename, data, provisional=False)

    async def _published(
        self, source: yarl.URL, filename: str, offered: bool | str, authorization: str | None
    ) -> bytes | None:
        """The `.metadata` file upstream serves beside the wheel, or None if it has none, or
        none with the hash its page `offered`."""
        url = source.with_path(source.raw_path + SUFFIX, encoded=True)
        try:
            async with self.files.upstream.open_file(url, authorization) as resp:
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > MAX_METADATA_BYTES:
                        log.warning("the published metadata of %s is too large", filename)
                        return None
                    chunks.append(chunk)
        except (NotFound, UpstreamStatus, UpstreamError):
            return None  # none published here: read the wheel instead
        self.files.metrics.fetched("file", size)
        body = b"".join(chunks)
        if isinstance(offered, str) and offered != f"sha256={hashlib.sha256(body).hexdigest()}":
            log.warning(
                "the published metadata of %s has another hash than its page says", filename
            )
            return None
        return body

    async def _extract(self, sha256: str, filename: str) -> str:
        try:
            data = await asyncio.to_thread(read_stored_metadata, self.files.blobs, sha256, filename)
        except WheelMetadataError as e:
            # The wheel verified against its sha256, so this is its content for good.
            await self._record_problem(sha256, filename, str(e), provisional=False)
            raise NotFound(f"no core metadata: {e}") from e
        if sha256 in self.provisional:
            metadata_sha256 = hashlib.sha256(data).hexdigest()
            if self.by_wheel.get(sha256) != metadata_sha256:
                log.warning(
                    "the metadata of %s read by Range differs from the verified wheel's;"
                    " replaced it",
                    filename,
                )
                self.files.metrics.metadata_replaced += 1
        return await self._keep(sha256, filename, data, provisional=False)

    async def _keep(self, sha256: str, filename: str, data: bytes, *, provisional: bool) -> str:
        """Store (or, if the cache cannot, hold in memory) one wheel's metadata; its sha256."""
        metadata_sha256 = hashlib.sha256(data).hexdigest()
        if provisional and sha256 in self.by_wheel and sha256 not in self.provisional:
            # Checked against the verified wheel meanwhile (here or in another worker).
            known = self.by_wheel[sha256]
            if known is None:
                raise NotFound(f"no core metadata: {self.problems.get(sha256, filename)}")
            if known in self.files.known or known in self.unstored:
                return known
            if known != metadata_sha256:
                raise UpstreamError(f"upstream sent other metadata for {filename} than it has")
            provisional = False
        stored = False
        if self.files.health.writable():
            try:
                await self.files.store_bytes(data, filename + SUFFIX)
                stored = True
            except OSError as e:
                self.files.health.failed(e)
            except sqlite3.Error as e:
                self._db_warn.log(logging.WARNING, "could not record %s: %s", filename, e)
        if not stored:
            self.unstored[metadata_sha256] = data
        await self._put(CoreMetadataRow(sha256, metadata_sha256, None, provisional))
        return metadata_sha256

    async def _record_problem(
        self, sha256: str, filename: str, problem: str, *, provisional: bool
    ) -> None:
        log.warning("no core metadata for %s: %s", filename, problem)
        await self._put(CoreMetadataRow(sha256, None, problem, provisional))

    async def _put(self, row: CoreMetadataRow) -> None:
        self._remember(row)
        try:
            await self.store.put_core_metadata(row)
        except sqlite3.Error as e:
            # Known to this process anyway; another one reads the wheel again.
            self._db_warn.log(logging.WARNING, "could not record core metadata: %s", e)

    def _remember(self, row: CoreMetadataRow) -> None:
        if row.provisional:
            self.provisional.add(row.wheel_sha256)
        else:
            self.provisional.discard(row.wheel_sha256)
        if row.problem:
            self.problems[row.wheel_sha256] = row.problem
        else:
            self.problems.pop(row.wheel_sha256, None)
        if self.by_wheel.get(row.wheel_sha256, "") == row.metadata_sha256:
            return
        self.by_wheel[row.wheel_sha256] = row.metadata_sha256
        self._changes += 1
