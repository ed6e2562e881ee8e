"""PEP 658/714 core metadata: each wheel's METADATA, read from the cached wheel, kept as a blob."""

from __future__ import annotations

import asyncio
import logging
import lzma
import zipfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import yarl
from aiohttp import web
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .cachehealth import CacheMode
from .errors import NotFound
from .files import Admission, FileCache
from .simple import Distribution
from .store import CoreMetadataRow, Store

log = logging.getLogger(__name__)

SUFFIX = ".metadata"
# Real METADATA files run to a few hundred KiB (long descriptions); a zip member claiming more
# is not read into memory.
MAX_METADATA_BYTES = 16 * 1024 * 1024


class WheelMetadataError(ValueError):
    """The wheel has no METADATA a client could use; the message says why."""


def read_wheel_metadata(path: Path, filename: str) -> bytes:
    """The `<name>-<version>.dist-info/METADATA` bytes of the wheel at `path` (blocking).

    The one `.dist-info` directory must name the project and version the filename does, as
    pip and uv check when they install the wheel.
    """
    try:
        name, version, _, _ = parse_wheel_filename(filename)
    except InvalidWheelFilename as e:
        raise WheelMetadataError(f"{filename} is not a wheel filename") from e
    try:
        with zipfile.ZipFile(path) as archive:
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
            if info.file_size > MAX_METADATA_BYTES:
                raise WheelMetadataError(f"{filename}'s METADATA is larger than it may be")
            # zipfile stops at the member's declared size, checked just above.
            return archive.read(info)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        # An encrypted member, an unsupported compression method, a corrupt stream.
        RuntimeError,
        NotImplementedError,
        zlib.error,
        lzma.LZMAError,
    ) as e:
        raise WheelMetadataError(f"{filename} is not a readable zip archive") from e


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

    def __init__(self, files: FileCache, store: Store) -> None:
        self.files = files
        self.store = store
        # wheel sha256 -> metadata sha256, or None when the wheel has no usable METADATA.
        self.by_wheel: dict[str, str | None] = {}
        self.problems: dict[str, str] = {}
        # Counts changes to `by_wheel`: pages rendered under one count advertise current hashes.
        self.generation = 0
        self._inflight: dict[str, asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        for row in await self.store.core_metadata():
            self._remember(row)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def advertised(self, dist: Distribution) -> bool | str:
        """What a page says of this file's metadata: `sha256=<hex>` once known, else `True`.

        Upstream's own value is not passed on: what a client fetches is what the proxy
        extracted, and only that hash is one the proxy can vouch for.
        """
        if not dist.is_wheel or dist.sha256 is None:
            return False
        if dist.sha256 not in self.by_wheel:
            # A cache opened read-only or not at all keeps no metadata it would extract: pip
            # then reads the wheel itself, as it does from an index without PEP 658.
            return self.files.health.mode is CacheMode.READ_WRITE
        metadata_sha256 = self.by_wheel[dist.sha256]
        return False if metadata_sha256 is None else f"sha256={metadata_sha256}"

    async def respond(
        self,
        request: web.Request,
        sha256: str,
        filename: str,
        source: yarl.URL,
        authorization: str | None,
        admission: Admission | None = None,
    ) -> web.StreamResponse:
        """Serve `<filename>.metadata` for the wheel `filename` whose sha256 is `sha256`.

        With an `admission` (a client's own credentials), GitLab must let that client have the
        wheel before anything derived from it is served: metadata names a private package too.
        """
        private = admission is not None
        if admission is not None:
            await admission.admit()
        metadata_filename = filename + SUFFIX
        metadata_sha256 = self.by_wheel.get(sha256)
        if metadata_sha256 is not None:
            response = await self.files.respond_blob(
                request, metadata_sha256, metadata_filename, private=private
            )
            if response is not None:
                self.files.metrics.file_hit(self.files.known[metadata_sha256].size)
                return response
        self.files.metrics.file_miss()
        metadata_sha256 = await self._single_flight(
            sha256, lambda: self._obtain(sha256, filename, source, authorization)
        )
        response = await self.files.respond_blob(
            request, metadata_sha256, metadata_filename, private=private
        )
        if response is None:
            raise NotFound(f"the metadata of {filename} is not in the cache")
        return response

    def wheel_verified(self, sha256: str, filename: str, path: Path) -> None:
        """A wheel just entered the cache: learn its metadata now, so pages can name its hash."""
        if not filename.endswith(".whl") or sha256 in self.by_wheel or sha256 in self._inflight:
            return
        task = asyncio.create_task(self._learn(sha256, filename, path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _learn(self, sha256: str, filename: str, path: Path) -> None:
        try:
            await self._single_flight(sha256, lambda: self._extract(sha256, filename, path))
        except NotFound:
            pass  # recorded and logged; pages stop advertising it
        except Exception:
            log.exception("could not read the metadata of %s", filename)

    async def _single_flight(self, sha256: str, work: Callable[[], Awaitable[str]]) -> str:
        future = self._inflight.get(sha256)
        if future is None:
            future = asyncio.ensure_future(work())
            self._inflight[sha256] = future
            future.add_done_callback(lambda _: self._inflight.pop(sha256, None))
        # Shielded: one client going away must not cancel what the others wait on.
        return await asyncio.shield(future)

    async def _obtain(
        self, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> str:
        if sha256 not in self.by_wheel:
            # Another worker process may have extracted it already.
            for row in await self.store.core_metadata(sha256):
                self._remember(row)
        if sha256 in self.by_wheel:
            known = self.by_wheel[sha256]
            if known is None:
                raise NotFound(self.problems.get(sha256, f"{filename} has no core metadata"))
            if known in self.files.known:
                return known
        wheel = await self.files.ensure(sha256, filename, source, authorization)
        if self.files.hit(sha256, filename) is None:
            # These bytes are cached as another file: what they hold says nothing of this name,
            # so nothing about them may be remembered for the wheel's own name.
            raise NotFound(f"{filename} with that sha256 is not in the cache")
        return await self._extract(sha256, filename, wheel)

    async def _extract(self, sha256: str, filename: str, wheel: Path) -> str:
        try:
            data = await asyncio.to_thread(read_wheel_metadata, wheel, filename)
        except WheelMetadataError as e:
            # The wheel verified against its sha256, so this is its content for good.
            log.warning("no core metadata for %s: %s", filename, e)
            self._remember(CoreMetadataRow(sha256, None, str(e)))
            await self.store.put_core_metadata(CoreMetadataRow(sha256, None, str(e)))
            raise NotFound(f"no core metadata: {e}") from e
        metadata_sha256 = await self.files.store_bytes(data, filename + SUFFIX)
        row = CoreMetadataRow(sha256, metadata_sha256, None)
        await self.store.put_core_metadata(row)
        self._remember(row)
        return metadata_sha256

    def _remember(self, row: CoreMetadataRow) -> None:
        if self.by_wheel.get(row.wheel_sha256, "") == row.metadata_sha256:
            return
        self.by_wheel[row.wheel_sha256] = row.metadata_sha256
        if row.problem:
            self.problems[row.wheel_sha256] = row.problem
        self.generation += 1
