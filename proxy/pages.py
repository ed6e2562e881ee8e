"""The page cache: fresh copies in memory (TTL), last good copies in SQLite, one fetch per key."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import yarl
from cachetools import TTLCache

from .cachehealth import Throttled
from .config import Settings
from .errors import (
    NotFound,
    Offline,
    ProxyError,
    Redirect,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .scope import Scope
from .simple import Index, Project
from .simple_html import PageParseError, parse_index_page, parse_project_page
from .simple_json import index_from_dict, index_to_dict, project_from_dict, project_to_dict
from .store import Store
from .upstream import PageAnswer, Upstream, fingerprint, message_of

log = logging.getLogger(__name__)

CacheState = Literal["HIT", "MISS", "STALE"]
Model = Project | Index
_FAILURES = (UpstreamUnavailable, UpstreamTimeout, UpstreamError)


@dataclass(slots=True)
class _Failing:
    """A page GitLab failed to give: when to ask again, and what to tell a client meanwhile."""

    retry_at: float
    error: ProxyError


@dataclass(frozen=True, slots=True)
class CachedPage:
    model: Model
    fetched_at: float


@dataclass(frozen=True, slots=True)
class PageResult:
    page: CachedPage
    state: CacheState

    @property
    def project(self) -> Project:
        assert isinstance(self.page.model, Project)
        return self.page.model

    @property
    def index(self) -> Index:
        assert isinstance(self.page.model, Index)
        return self.page.model


def page_key(scope: Scope, name: str | None) -> str:
    """SQLite and memory key of a page: the scope and the normalized name ('' for the index)."""
    return f"{scope.key}:{name or ''}"


class PageCache:
    """Owns the TTL cache, the stored last good copies and in-flight page fetches."""

    def __init__(self, settings: Settings, upstream: Upstream, store: Store) -> None:
        self.settings = settings
        self.upstream = upstream
        self.store = store
        self.fresh: TTLCache[str, CachedPage] = TTLCache(
            maxsize=20_000, ttl=settings.cache.index_ttl, timer=time.time
        )
        self._inflight: dict[str, asyncio.Future[CachedPage]] = {}
        self._failing: TTLCache[str, _Failing] = TTLCache(maxsize=20_000, ttl=3600)
        # Upstream "absent" answers (404, forwarding) per key and credential.
        self.negative: TTLCache[tuple[str, str], ProxyError] = TTLCache(
            maxsize=20_000, ttl=max(settings.cache.negative_ttl, 1e-9), timer=time.monotonic
        )
        self._db_warn = Throttled(log)

    def freshness_left(self, page: CachedPage) -> int:
        """Seconds this page stays fresh, for Cache-Control: max-age."""
        return max(0, int(page.fetched_at + self.settings.cache.index_ttl - time.time()))

    async def project(self, scope: Scope, name: str, authorization: str | None) -> PageResult:
        url = self.upstream.url_for(scope, f"simple/{name}")

        def parse(answer: PageAnswer) -> Model:
            return parse_project_page(answer.body, str(answer.url), name)

        return await self._get(page_key(scope, name), url, authorization, parse, forwarding=True)

    async def index(self, scope: Scope, authorization: str | None) -> PageResult:
        url = self.upstream.url_for(scope, "simple")

        def parse(answer: PageAnswer) -> Model:
            return parse_index_page(answer.body)

        return await self._get(page_key(scope, None), url, authorization, parse, forwarding=False)

    async def _get(
        self,
        key: str,
        url: yarl.URL,
        authorization: str | None,
        parse: Callable[[PageAnswer], Model],
        *,
        forwarding: bool,
    ) -> PageResult:
        page = self.fresh.get(key)
        if page is not None:
            return PageResult(page, "HIT")
        negative_key = (key, fingerprint(authorization))
        absent = self.negative.get(negative_key)
        if absent is not None:
            raise absent

        def fetch() -> Awaitable[CachedPage]:
            return self._tracked(
                key, self._fetch(key, url, authorization, parse, forwarding=forwarding)
            )

        failing = self._failing.get(key)
        if failing is not None and not self.upstream.offline:
            # GitLab failed this page lately: answer now, and let one request at a time retry.
            stored = await self._stored(key)
            due = time.monotonic() >= failing.retry_at
            if stored is not None:
                if due:
                    self._refresh_in_background(key, fetch)
                return PageResult(stored, "STALE")
            if not due:
                raise failing.error
        try:
            page = await self._single_flight(key, fetch)
        except Offline:
            stored = await self._stored(key)
            if stored is None:
                raise
            # Offline, the stored copy is the truth whatever its age: an air-gapped mirror.
            return PageResult(stored, "HIT")
        except _FAILURES as e:
            stored = await self._stored(key)
            if stored is None:
                raise
            log.warning("serving %s stale: %s", key, e.message)
            return PageResult(stored, "STALE")
        except ProxyError as e:
            if _is_absence(e):
                self.negative[negative_key] = e
            raise
        return PageResult(page, "MISS")

    async def _tracked(self, key: str, fetch: Awaitable[CachedPage]) -> CachedPage:
        """A fetch that records whether GitLab is failing this page, and until when to wait."""
        try:
            page = await fetch
        except _FAILURES as e:
            # GitLab's own Retry-After, when it gave one, says exactly how long to wait.
            retry_after = e.headers.get("Retry-After", "")
            wait = (
                float(retry_after)
                if retry_after.isdigit()
                else self.settings.upstream.retry_interval
            )
            self._failing[key] = _Failing(time.monotonic() + wait, e)
            raise
        self._failing.pop(key, None)
        return page

    def _refresh_in_background(self, key: str, fetch: Callable[[], Awaitable[CachedPage]]) -> None:
        """One retry for a failing page, while its clients get the stored copy at once."""
        if key in self._inflight:
            return
        future = self._flight(key, fetch)
        # Its outcome is recorded by _tracked; retrieving it keeps asyncio from logging it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _single_flight(
        self, key: str, fetch: Callable[[], Awaitable[CachedPage]]
    ) -> CachedPage:
        # Shielded: one client going away must not cancel the fetch the others wait on.
        return await asyncio.shield(self._flight(key, fetch))

    def _flight(
        self, key: str, fetch: Callable[[], Awaitable[CachedPage]]
    ) -> asyncio.Future[CachedPage]:
        """The running fetch of `key`, started if there is none."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(fetch())
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
        return future

    async def _fetch(
        self,
        key: str,
        url: yarl.URL,
        authorization: str | None,
        parse: Callable[[PageAnswer], Model],
        *,
        forwarding: bool,
    ) -> CachedPage:
        answer = await self.upstream.get_page(url, authorization)
        if answer.location is not None and forwarding:
            raise self._forwarded(answer.location)
        if answer.status != 200:
            raise self.upstream.error_for(
                answer.status, message_of(answer.body, answer.status), answer.retry_after
            )
        try:
            model = parse(answer)
        except PageParseError as e:
            raise UpstreamError("GitLab sent a page that is not a simple index") from e
        page = CachedPage(model, time.time())
        self.fresh[key] = page
        try:
            await self.store.put_page(key, json.dumps(_to_dict(model)), page.fetched_at)
        except sqlite3.Error as e:
            # A full disk must not cost the client the page it is about to get.
            self._db_warn.log(logging.WARNING, "could not store page %s: %s", key, e)
        return page

    def _forwarded(self, location: yarl.URL) -> ProxyError:
        if self.settings.upstream.forwarding == "deny":
            return NotFound(
                "package not found in GitLab; this proxy does not follow forwarding "
                "to the public index (upstream.forwarding = 'deny')"
            )
        return Redirect(str(location))

    async def _stored(self, key: str) -> CachedPage | None:
        row = await self.store.get_page(key)
        if row is None:
            return None
        try:
            model = _from_dict(json.loads(row.model))
        except ValueError:
            log.error("stored page %s is unreadable; ignoring it", key)
            return None
        return CachedPage(model, row.fetched_at)


def _is_absence(error: ProxyError) -> bool:
    """Whether GitLab said the page does not exist (404, 410, or forwarding elsewhere)."""
    if isinstance(error, Offline):
        return False
    if isinstance(error, UpstreamStatus):
        return error.status in (404, 410)
    return isinstance(error, Redirect | NotFound)


def _to_dict(model: Model) -> dict[str, object]:
    if isinstance(model, Project):
        return {"kind": "project", "model": project_to_dict(model)}
    return {"kind": "index", "model": index_to_dict(model)}


def _from_dict(data: object) -> Model:
    if not isinstance(data, dict) or data.get("kind") not in ("project", "index"):
        raise ValueError("not a stored page model")
    if data["kind"] == "project":
        return project_from_dict(data["model"])
    return index_from_dict(data["model"])
