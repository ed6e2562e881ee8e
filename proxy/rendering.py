"""Served pages: the model as clients see it, rendered once per fetch, format and link base."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from cachetools import LRUCache

from .files import FileCache
from .metadata import CoreMetadata
from .negotiate import HTML_LEGACY, HTML_V1, JSON_V1
from .policy import Policy
from .simple import Distribution, Index, Project, is_sha256
from .simple_html import render_index_html, render_project_html
from .simple_json import render_index_json, render_project_json

Format = Literal["html", "json"]
FORMAT_OF: dict[str, Format] = {HTML_LEGACY: "html", HTML_V1: "html", JSON_V1: "json"}
# Content-Type is part of the representation, so each one gets its own ETag.
_ETAG_CODES = {HTML_LEGACY: "h", HTML_V1: "v", JSON_V1: "j"}
MAX_RENDERED_BYTES = 64 * 1024 * 1024
# Bigger pages render and compress in a thread: 20,000 files take ~0.2 s the loop cannot spare.
THREAD_FROM_FILES = 500
# What a page says per file beyond the stored model: (core-metadata, size).
Details = tuple[tuple[bool | str, int | None], ...]


@dataclass(frozen=True, slots=True)
class Rendered:
    """One page body, as sent and gzipped, and a digest of it for the ETag."""

    body: bytes
    gzipped: bytes
    digest: str
    # When a file the age rules hide becomes old enough: the page changes then, unfetched.
    until: float = math.inf

    def etag(self, media_type: str, gzipped: bool) -> str:
        # Strong ETags must differ between content codings (RFC 9110 8.8.3).
        return f'"{self.digest}-{_ETAG_CODES[media_type]}{"z" if gzipped else ""}"'


@dataclass(slots=True)
class _Entry:
    fetched_at: float
    generation: tuple[int, int]
    # A hash, not the tuple: on a 20,000-file page that would outweigh the body.
    details: int
    rendered: Rendered


def file_path(dist: Distribution) -> str:
    """A file's path below the API prefix: `files/<sha256>/<filename>`."""
    return f"files/{dist.sha256}/{quote(dist.filename, safe='')}"


class PageRenderer:
    """Owns the rendered bodies: reused until the page is refetched or what it shows changes."""

    def __init__(
        self,
        files: FileCache,
        metadata: CoreMetadata,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files = files
        self.metadata = metadata
        self.policy = policy
        self._clock = clock
        self.cache: LRUCache[tuple[str, Format, str], _Entry] = LRUCache(
            maxsize=MAX_RENDERED_BYTES,
            getsizeof=lambda entry: len(entry.rendered.body) + len(entry.rendered.gzipped),
        )
        self._inflight: dict[tuple[str, Format, str, float, int], asyncio.Future[Rendered]] = {}
        self.renders = 0

    async def project(
        self, key: str, fetched: Project, fetched_at: float, fmt: Format, prefix: str
    ) -> Rendered:
        """The page `key` as fetched at `fetched_at`; links are `prefix` + `files/<sha>/<name>`."""
        generation = (self.files.generation, self.metadata.generation)
        now = self._clock()
        entry = self.cache.get((key, fmt, prefix))
        if (
            entry is not None
            and (entry.fetched_at, entry.generation) == (fetched_at, generation)
            and now < entry.rendered.until
        ):
            return entry.rendered

        def view() -> tuple[Shown, Details]:
            # Offline, a mirror lists only what it holds: a client never picks a file it cannot
            # have.
            known = self.files.known if self.files.upstream.offline else None
            shown = view_of(fetched, known, self.policy, now)
            return shown, tuple(self._details(dist) for dist in shown.project.files)

        big = len(fetched.files) >= THREAD_FROM_FILES
        # A thread may read `known` and the metadata map: the loop only ever adds to them there.
        shown, details = await asyncio.to_thread(view) if big else view()
        # What changed may concern other pages only; then this page's bytes stand.
        details_hash = hash((details, shown.hidden))
        if entry is not None and (entry.fetched_at, entry.details) == (fetched_at, details_hash):
            entry.generation = generation
            entry.rendered = dataclasses.replace(entry.rendered, until=shown.until)
            return entry.rendered

        def render() -> Rendered:
            return _render_project(shown.project, details, fmt, prefix)

        return await self._render(
            (key, fmt, prefix), fetched_at, generation, details_hash, render, big, shown.until
        )

    async def index(
        self, key: str, index: Index, fetched_at: float, fmt: Format, prefix: str
    ) -> Rendered:
        """The index page `key`; project links are `prefix` + `<normalized name>/`."""
        entry = self.cache.get((key, fmt, prefix))
        if entry is not None and entry.fetched_at == fetched_at:
            return entry.rendered

        def render() -> Rendered:
            return _render_index(index, fmt, prefix)

        big = len(index.projects) >= THREAD_FROM_FILES
        return await self._render((key, fmt, prefix), fetched_at, (0, 0), 0, render, big)

    def _details(self, dist: Distribution) -> tuple[bool | str, int | None]:
        # A size is known for a cached blob (its sha256 fixes its length) or if upstream said it.
        blob = self.files.known.get(dist.sha256 or "")
        return self.metadata.advertised(dist), blob.size if blob is not None else dist.size

    async def _render(
        self,
        cache_key: tuple[str, Format, str],
        fetched_at: float,
        generation: tuple[int, int],
        details: int,
        render: Callable[[], Rendered],
        big: bool,
        until: float = math.inf,
    ) -> Rendered:
        flight = (*cache_key, fetched_at, details)
        future = self._inflight.get(flight)
        if future is None:
            work: Awaitable[Rendered] = asyncio.to_thread(render) if big else _now(render)
            future = asyncio.ensure_future(work)
            self._inflight[flight] = future
            future.add_done_callback(lambda _: self._inflight.pop(flight, None))
            self.renders += 1
        rendered = await asyncio.shield(future)
        if until != rendered.until:
            rendered = dataclasses.replace(rendered, until=until)
        entry = _Entry(fetched_at, generation, details, rendered)
        if self.cache.getsizeof(entry) <= self.cache.maxsize:
            self.cache[cache_key] = entry
        return rendered


async def _now(render: Callable[[], Rendered]) -> Rendered:
    return render()


@dataclass(frozen=True, slots=True)
class Shown:
    """A page as clients see it (`explain` shows it too), which files of the fetched one the
    policy hides (by index), and when the first of those becomes old enough to show."""

    project: Project
    hidden: tuple[int, ...]
    until: float


def view_of(project: Project, cached: Container[str] | None, policy: Policy, now: float) -> Shown:
    """The page's files that have a sha256 (only those can go through the files route), when
    `cached` is given are among those sha256s, and that the policy shows; with local yanks."""
    servable = []
    hidden = []
    until = math.inf
    changed = False
    for index, dist in enumerate(project.files):
        if not (dist.sha256 and is_sha256(dist.sha256)) or (
            cached is not None and dist.sha256 not in cached
        ):
            changed = True
            continue
        if policy.ages_files:
            verdict = policy.verdict(project.name, dist, now)
            if not verdict.visible:
                hidden.append(index)
                changed = True
                if verdict.available_at is not None:
                    until = min(until, verdict.available_at)
                continue
        if policy.yanks:
            yanked = policy.yanked(project.name, dist)
            if yanked != dist.yanked:
                dist = dataclasses.replace(dist, yanked=yanked)
                changed = True
        servable.append(dist)
    # Usually all of them as they are: then the fetched model, whose parsed versions are kept.
    shown = Project(project.name, tuple(servable)) if changed else project
    return Shown(shown, tuple(hidden), until)


def _render_project(project: Project, details: Details, fmt: Format, prefix: str) -> Rendered:
    files = tuple(
        dataclasses.replace(dist, core_metadata=metadata, size=size)
        for dist, (metadata, size) in zip(project.files, details, strict=True)
    )
    view = project.with_files(files)

    def file_url(dist: Distribution) -> str:
        return prefix + file_path(dist)

    if fmt == "json":
        return _finish(render_project_json(view, file_url))
    return _finish(render_project_html(view, file_url).encode())


def _render_index(index: Index, fmt: Format, prefix: str) -> Rendered:
    if fmt == "json":
        return _finish(render_index_json(index))
    return _finish(render_index_html(index, lambda name: f"{prefix}{name}/").encode())


def _finish(body: bytes) -> Rendered:
    # mtime=0: the same body always compresses to the same bytes, in every worker process.
    compressed = gzip.compress(body, compresslevel=6, mtime=0)
    return Rendered(body, compressed, hashlib.blake2b(body, digest_size=16).hexdigest())
