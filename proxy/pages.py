"""The page cache: fresh copies in memory (TTL), last good copies in SQLite, one fetch per key."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import yarl
from cachetools import TLRUCache, TTLCache

from .auth import Caller, Gatekeeper
from .cachehealth import Throttled
from .codec import Model, decode_page, encode_page
from .config import Settings
from .errors import (
    CredentialsRefused,
    NotFound,
    Offline,
    Protected,
    ProxyError,
    Redirect,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .page_key import PageKey
from .policy import Policy, Verdict
from .scope import Scope
from .shared_tier import SharedTier
from .simple import Distribution, Index, PageParseError, Project, is_sha256, project_of
from .simple_html import parse_index_page, parse_project_page
from .simple_json import dumps, is_json_page, parse_index_json, parse_project_json
from .store import ForwardedRow, Store
from .upload_times import UploadTimes
from .upstream import PageAnswer, Upstream, fingerprint, is_listed_host, message_of

log = logging.getLogger(__name__)

CacheState = Literal["HIT", "MISS", "STALE"]
MAX_PRIVATE_PAGES = 2_000
_FAILURES = (UpstreamUnavailable, UpstreamTimeout, UpstreamError)
# Pages from this size on are parsed and (de)serialized in a thread (about 1,000 files).
THREAD_FROM_BYTES = 256 * 1024
T = TypeVar("T")
LISTED_BATCH = 5_000
# What a fetch adds to a parsed page before it is kept: upload times, for project pages.
Learn = Callable[[PageAnswer, Model], Awaitable[Model]]


@dataclass(slots=True)
class _Failing:
    """A page GitLab failed to give: when to ask again, and what to tell a client meanwhile."""

    retry_at: float
    error: ProxyError


@dataclass(frozen=True, slots=True)
class CachedPage:
    model: Model
    fetched_at: float


class _StaleAnswer(UpstreamError):
    """The upstream answered with a copy it marks stale (a parent proxy whose own upstream
    fails): a failure to get the page fresh, asked again after retry_interval, whose copy is
    served stale when it is newer than the stored one. Never reaches a client: it has a page."""

    def __init__(self, page: CachedPage, *, dated: bool) -> None:
        super().__init__("the upstream answered with a stale copy of the page")
        self.page = page
        # The upstream said how old its copy is (Age). Undated, it is newer than none we hold.
        self.dated = dated

    def newer_than(self, stored_at: float) -> bool:
        return self.dated and self.page.fetched_at > stored_at


@dataclass(frozen=True, slots=True)
class PageResult:
    page: CachedPage
    state: CacheState
    # The page's cache key, PageKey.encode(): its view (scope or credential) and name.
    key: str

    @property
    def project(self) -> Project:
        assert isinstance(self.page.model, Project)
        return self.page.model

    @property
    def index(self) -> Index:
        assert isinstance(self.page.model, Index)
        return self.page.model


class PageCache:
    """Owns the TTL cache, the stored last good copies and in-flight page fetches."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        store: Store,
        gate: Gatekeeper,
        *,
        shared: SharedTier | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        # Wall time for freshness (fetched_at is stored and shared by workers); monotonic time
        # for retry and negative-cache deadlines. Tests pass their own.
        self._wall_clock = wall_clock
        self._clock = clock
        self.upstream = upstream
        self.store = store
        self.gate = gate
        # Last good copies go there too, for replicas that never saw a page GitLab now fails.
        self.shared = shared
        self.policy = Policy(settings.policy)
        # The host part of each of upstream.forward_hosts ("host" of "host:port").
        self._forward_host_names = tuple(
            {host.split(":")[0] for host in settings.upstream.forward_hosts}
        )
        # A page is fresh for index_ttl from when GitLab gave it, whichever worker fetched it
        # (a copy another worker stored comes in part-way through). Offline, whatever its age.
        ttl = settings.cache.index_ttl

        def fresh_until(_key: str, page: CachedPage, now: float) -> float:
            return (now if upstream.offline else page.fetched_at) + ttl

        self.fresh: TLRUCache[str, CachedPage] = TLRUCache(
            maxsize=20_000, ttu=fresh_until, timer=wall_clock
        )
        # Group pages as one client's credentials see them: many per-job tokens in CI, so fewer.
        self.private: TLRUCache[str, CachedPage] = TLRUCache(
            maxsize=MAX_PRIVATE_PAGES, ttu=fresh_until, timer=wall_clock
        )
        self._inflight: dict[str, asyncio.Future[CachedPage]] = {}
        # Whose credential (keyed hash; None: the proxy's) each in-flight fetch uses.
        self._starters: dict[str, str | None] = {}
        self._failing: TTLCache[str, _Failing] = TTLCache(maxsize=20_000, ttl=3600, timer=clock)
        # Upstream "absent" answers (404, forwarding) per key and credential.
        self.negative: TTLCache[tuple[str, str], ProxyError] = TTLCache(
            maxsize=20_000, ttl=max(settings.cache.negative_ttl, 1e-9), timer=clock
        )
        self._db_warn = Throttled(log)
        # Upload times and sizes of GitLab's files; a refused token is asked again once the
        # pages it would fill are due again.
        self.times = UploadTimes(
            gate.policy,
            upstream,
            store,
            recheck=settings.cache.index_ttl,
            retry=settings.upstream.retry_interval,
            # A page is not held up long for its times: a sixth of upstream.timeout (5 s).
            wait=settings.upstream.timeout / 6,
            clock=clock,
        )

    def freshness_left(self, page: CachedPage) -> int:
        """Seconds this page stays fresh, for Cache-Control: max-age."""
        return max(0, int(page.fetched_at + self.settings.cache.index_ttl - self._wall_clock()))

    async def project(self, scope: Scope, name: str, caller: Caller) -> PageResult:
        url = self.upstream.url_for(scope, f"simple/{name}")
        protected = self.policy.is_protected(name)

        def parse(answer: PageAnswer) -> Model:
            project = _parse_project(answer, name)
            if not self.upstream.is_upstream_host(answer.url):
                return self._forwarded_project(project, self._public_host)
            if any(self.upstream.may_be_forward_route(dist.url) for dist in project.files):
                if protected:
                    raise _protected(name, "GitLab's Dependency Firewall serves the public page")
                return self._firewall_project(project)
            return project

        async def learn(answer: PageAnswer, model: Model) -> Model:
            # Only GitLab's own pages list its packages; a forwarded one, the public index's.
            # A parent proxy's page (HTML or JSON) gives the times it knows itself, and it has
            # no REST API.
            if (
                isinstance(model, Project)
                and self.upstream.is_upstream_host(answer.url)
                and not answer.from_proxy
            ):
                return await self.times.fill(scope, name, model)
            return model

        page = await self._get(
            scope, name, url, caller, parse, forwarding=True, protected=protected, learn=learn
        )
        # A copy stored before the name was protected may be a forwarded page: never served.
        if protected and any(self._is_public(dist) for dist in page.project.files):
            raise _protected(name, "the cached page is the public index's")
        if page.state == "MISS" and self.settings.upstream.forwarding != "deny":
            await self._remember_sources(scope, page.project)
        return page

    async def file_verdict(
        self, scope: Scope, caller: Caller, sha256: str, filename: str, now: float
    ) -> Verdict:
        """What the age rules say of a file, from this caller's page of its project (fetched if
        need be, the stored copy offline). A file no page lists has no known upload time."""
        name = project_of(filename)
        if name is None:
            return self.policy.verdict(filename, Distribution(filename, ""), now)
        if not self.policy.may_hide(name, filename):
            return self.policy.verdict(name, Distribution(filename, ""), now)
        dist = None
        try:
            dist = (await self.project(scope, name, caller)).project.find(sha256, filename)
        except ProxyError as e:
            log.info("no page of %s to judge %s by: %s", name, filename, e.message)
        return self.policy.verdict(name, dist or Distribution(filename, ""), now)

    async def protected_forwarded(
        self, scope: Scope, caller: Caller, sha256: str, filename: str
    ) -> bool:
        """Whether this is a public-index file of a protected name: once listed on a forwarded
        page of `scope`, or of a name whose page is the public index's. Never served, cached
        or not."""
        name = project_of(filename)
        if name is None or not self.policy.is_protected(name):
            return False
        if await self.store.forwarded_url(scope.key, sha256, filename) is not None:
            return True
        # A parent proxy links its public files on its own origin, where no forwarding shows:
        # only its page's `public` flags tell, and project() refuses such a page.
        try:
            await self.project(scope, name, caller)
        except Protected:
            return True
        except ProxyError as e:
            log.info("no page of %s to check %s against: %s", name, filename, e.message)
        return False

    def _is_public(self, dist: Distribution) -> bool:
        # Pages stored before the `public` flag existed: their links say where files come from.
        return (
            dist.public
            or self.upstream.may_be_forward_route(dist.url)
            or (
                # A substring test first: most links name no public host, and need no parsing.
                any(name in dist.url for name in self._forward_host_names)
                and self._public_host(yarl.URL(dist.url, encoded=True))
            )
        )

    def _with_origins(self, model: Model) -> Model:
        """A stored page with `public` set on every file its links say is the public index's:
        copies stored before the flag existed read as GitLab-hosted, which would give their
        public files min_age_internal and no `_public-index` for a proxy in front."""
        if not isinstance(model, Project) or not any(
            not dist.public and self._is_public(dist) for dist in model.files
        ):
            return model
        return model.with_files(
            tuple(
                dataclasses.replace(dist, public=True) if self._is_public(dist) else dist
                for dist in model.files
            )
        )

    async def forwarded_source(self, scope: Scope, sha256: str, filename: str) -> yarl.URL | None:
        """Where a file of a forwarded page lives, if it is one and may still be fetched there:
        on a public host (forwarding "cache"), or GitLab's Dependency Firewall route."""
        up = self.settings.upstream
        if up.forwarding == "deny":
            return None
        raw = await self.store.forwarded_url(scope.key, sha256, filename)
        if raw is None:
            return None
        url = yarl.URL(raw, encoded=True)
        target = self.upstream.forward_target(url)
        if target is not None:
            return url if up.forwarding == "redirect" or self._public_host(target) else None
        return url if up.forwarding == "cache" and self._public_host(url) else None

    def _public_host(self, url: yarl.URL) -> bool:
        return is_listed_host(url, self.settings.upstream.forward_hosts)

    def _firewall_project(self, project: Project) -> Project:
        """A page GitLab's Dependency Firewall made of the public index's page: forwarding by
        another name, so `upstream.forwarding` decides, as for a redirect. Its files are
        fetched from the forward route at GitLab's configured origin, as files/ ones are."""
        mode = self.settings.upstream.forwarding
        if mode == "deny":
            raise NotFound(
                "package not found in GitLab, whose Dependency Firewall serves the public "
                "index's page instead; this proxy does not follow forwarding "
                "(upstream.forwarding = 'deny')"
            )
        routed = tuple(
            dataclasses.replace(dist, url=str(route))
            for dist in project.files
            if (route := self.upstream.forward_route(dist.url)) is not None
        )

        def allowed(url: yarl.URL) -> bool:
            # "redirect" lets each client go where GitLab's forward route sends it, as it would
            # without the proxy; "cache" fetches only from the public hosts it was told of.
            target = self.upstream.forward_target(url)
            return target is not None and (mode == "redirect" or self._public_host(target))

        forwarded = self._forwarded_project(Project(project.name, routed), allowed)
        if project.files and not forwarded.files:
            raise NotFound(
                "package not found in GitLab, whose Dependency Firewall forwards to hosts "
                "not in upstream.forward_hosts"
            )
        return forwarded

    def _forwarded_project(self, project: Project, allowed: Callable[[yarl.URL], bool]) -> Project:
        """A forwarded page as this proxy can serve it: the files it may fetch, with a sha256."""
        files = tuple(
            dataclasses.replace(dist, public=True)
            for dist in project.files
            if dist.sha256 is not None
            and is_sha256(dist.sha256)
            and allowed(yarl.URL(dist.url, encoded=True))
        )
        return Project(project.name, files)

    async def _remember_sources(self, scope: Scope, project: Project) -> None:
        """Record where each file of a forwarded page comes from, for the files route: a public
        host, or GitLab's Dependency Firewall route."""
        public = self.settings.upstream.forwarding == "cache"
        rows = [
            ForwardedRow(scope.key, dist.sha256, dist.filename, dist.url)
            for dist in project.files
            if dist.sha256 is not None
            # A string test first: a GitLab page's files need no URL parsing in redirect mode.
            and (
                self.upstream.may_be_forward_route(dist.url)
                or (public and not self.upstream.is_upstream_host(yarl.URL(dist.url)))
            )
        ]
        if rows:
            await self.store.put_forwarded(rows)

    async def check_listed(
        self, scope: Scope, sha256: str, filename: str, source: yarl.URL, authorization: str | None
    ) -> None:
        """Raise unless this scope lists the file, or GitLab serves it there.

        The cache holds a file once, whichever scope fetched it; `access.allow` and GitLab's own
        projects decide which scopes may hand it out. A scope's page seen in this process, or
        its stored copy, names its files; else GitLab is asked (a HEAD with these credentials).
        """
        if self.gate.members.get((scope.key, sha256)):
            return
        name = project_of(filename)
        if name is not None and await self._page_lists(scope, name, sha256, filename):
            self.gate.listed(scope.key, (sha256,))
            return
        if self.upstream.offline:
            raise NotFound(f"no cached page of {scope.key} lists {filename}")
        status, message, retry_after = await self.upstream.probe(source, authorization)
        if status not in (200, 301, 302, 303, 307, 308):
            raise self.upstream.error_for(status, message, retry_after, authorization=authorization)
        self.gate.listed(scope.key, (sha256,))

    async def _page_lists(self, scope: Scope, name: str, sha256: str, filename: str) -> bool:
        return await self._listing(scope.key, name, sha256, filename) is not None

    async def listed(
        self, caller: Caller, scope: Scope, sha256: str, filename: str
    ) -> Distribution | None:
        """The file as the caller's page of the scope (in memory, or stored) lists it, if any."""
        name = project_of(filename)
        if name is None:
            return None
        return await self._listing(caller.view(scope), name, sha256, filename)

    async def _listing(
        self, view: str, name: str, sha256: str, filename: str
    ) -> Distribution | None:
        key = PageKey(view, name).encode()
        page = self.fresh.get(key) or self.private.get(key) or await self._stored(key)
        if page is None or not isinstance(page.model, Project):
            return None
        return page.model.find(sha256, filename)

    async def index(self, scope: Scope, caller: Caller) -> PageResult:
        url = self.upstream.url_for(scope, "simple")

        def parse(answer: PageAnswer) -> Model:
            if is_json_page(answer.content_type):
                return parse_index_json(answer.body)
            return parse_index_page(answer.body)

        return await self._get(scope, None, url, caller, parse, forwarding=False)

    async def _get(
        self,
        scope: Scope,
        name: str | None,
        url: yarl.URL,
        caller: Caller,
        parse: Callable[[PageAnswer], Model],
        *,
        forwarding: bool,
        protected: bool = False,
        learn: Learn | None = None,
    ) -> PageResult:
        view = caller.view(scope)
        key = PageKey(view, name or "").encode()
        trust = self.gate.page_trust(caller, scope)
        trusted, shared = trust.cached, trust.shared
        memory = self.fresh if shared else self.private
        page = memory.get(key) if trusted else None
        if page is not None:
            return PageResult(page, "HIT", key)
        negative_key = (key, fingerprint(caller.authorization))
        absent = self.negative.get(negative_key)
        if absent is not None:
            raise absent
        if trusted and shared:
            # Another worker process may have fetched it within index_ttl: its stored copy is
            # as fresh as this worker's own would be, and GitLab need not be asked again.
            stored = await self._stored(key)
            if (
                stored is not None
                and stored.fetched_at + self.settings.cache.index_ttl > self._wall_clock()
            ):
                memory[key] = stored
                return PageResult(stored, "HIT", key)
        flight = trust.flight(key, caller.key)
        may_use_stored = trust.may_use_stored
        # A failure for one credential is served stale to it only after its own failure.
        failing_key = trust.failing(key, caller.key)

        def fetch() -> Awaitable[CachedPage]:
            return self._tracked(
                failing_key,
                self._fetch(
                    scope,
                    key,
                    url,
                    caller,
                    parse,
                    forwarding=forwarding,
                    shared=shared,
                    protected=protected,
                    learn=learn,
                ),
            )

        failing = self._failing.get(failing_key)
        if failing is not None and not self.upstream.offline:
            # GitLab failed this page lately: answer now, and let one request at a time retry.
            stored = _newest(await self._last_good(key) if may_use_stored else None, failing.error)
            due = self._clock() >= failing.retry_at
            if stored is not None:
                if due:
                    self._refresh_in_background(flight, fetch, caller.key)
                return PageResult(stored, "STALE", key)
            if not due:
                raise failing.error
        try:
            page = await self._single_flight(flight, fetch, caller)
        except Offline:
            stored = await self._stored(key) if may_use_stored else None
            if stored is None:
                raise
            # Offline, the stored copy is the truth whatever its age: an air-gapped mirror. Kept
            # in memory too, so the next request does not decode it from SQLite again.
            self.fresh[key] = stored
            return PageResult(stored, "HIT", key)
        except _FAILURES as e:
            stored = _newest(await self._last_good(key) if may_use_stored else None, e)
            if stored is None:
                raise
            log.warning("serving %s stale: %s", key, e.message)
            return PageResult(stored, "STALE", key)
        except ProxyError as e:
            if _is_absence(e):
                self.negative[negative_key] = e
            raise
        return PageResult(page, "MISS", key)

    async def _tracked(self, key: str, fetch: Awaitable[CachedPage]) -> CachedPage:
        """A fetch that records whether GitLab is failing this page, and until when to wait."""
        try:
            page = await fetch
        except CredentialsRefused:
            # About one credential (prefer-client's anonymous callers ride on the proxy's token),
            # not GitLab's health: other callers of this page must not wait on it.
            raise
        except _FAILURES as e:
            # GitLab's own Retry-After, when it gave one, says exactly how long to wait.
            retry_after = e.headers.get("Retry-After", "")
            wait = (
                float(retry_after)
                if retry_after.isdigit()
                else self.settings.upstream.retry_interval
            )
            self._failing[key] = _Failing(self._clock() + wait, e)
            raise
        self._failing.pop(key, None)
        return page

    def _refresh_in_background(
        self, key: str, fetch: Callable[[], Awaitable[CachedPage]], starter: str | None
    ) -> None:
        """One retry for a failing page, while its clients get the stored copy at once."""
        if key in self._inflight:
            return
        future = self._flight(key, fetch, starter)
        # Its outcome is recorded by _tracked; retrieving it keeps asyncio from logging it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _single_flight(
        self, key: str, fetch: Callable[[], Awaitable[CachedPage]], caller: Caller
    ) -> CachedPage:
        """The page from the one fetch of `key`; a client that joined another credential's
        fetch asks with its own when GitLab answered that one with a 429 or 5xx."""
        future = self._flight(key, fetch, caller.key)
        starter = self._starters.get(key)
        try:
            # Shielded: one client going away must not cancel the fetch the others wait on.
            return await asyncio.shield(future)
        except UpstreamUnavailable:
            if not caller.is_client or starter == caller.key:
                raise
        own = f"{key}|{caller.key}"
        return await asyncio.shield(self._flight(own, fetch, caller.key))

    def _flight(
        self, key: str, fetch: Callable[[], Awaitable[CachedPage]], starter: str | None
    ) -> asyncio.Future[CachedPage]:
        """The running fetch of `key`, started (for `starter`'s credential) if there is none."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(fetch())
            self._inflight[key] = future
            self._starters[key] = starter

            def done(_: asyncio.Future[CachedPage]) -> None:
                self._inflight.pop(key, None)
                self._starters.pop(key, None)

            future.add_done_callback(done)
        return future

    async def _fetch(
        self,
        scope: Scope,
        key: str,
        url: yarl.URL,
        caller: Caller,
        parse: Callable[[PageAnswer], Model],
        *,
        forwarding: bool,
        shared: bool,
        protected: bool,
        learn: Learn | None,
    ) -> CachedPage:
        up = self.settings.upstream
        # A protected name's forwarding is never followed: its redirect is answered below.
        follow = (
            up.forward_hosts if forwarding and up.forwarding == "cache" and not protected else ()
        )
        answer = await self.upstream.get_page(url, caller.authorization, follow_to=follow)
        message = message_of(answer.body, answer.status, answer.challenge)
        self._judge(scope, caller, answer, message, index=not forwarding)
        if answer.location is not None and forwarding:
            if protected:
                raise _protected(PageKey.decode(key).name, "GitLab forwards it")
            raise self._forwarded(answer.location)
        on_gitlab = self.upstream.is_upstream_host(answer.url)
        if answer.status in (404, 410) and not on_gitlab:
            # Followed GitLab's forwarding to the public index, which has no such name either.
            raise NotFound(f"{answer.status}: not in GitLab nor on {answer.url.host}")
        if answer.status != 200:
            raise self.upstream.error_for(
                answer.status,
                message,
                answer.retry_after,
                authorization=caller.authorization,
                on_upstream=on_gitlab,
            )
        try:
            model = await _off_the_loop(lambda: parse(answer), len(answer.body))
        except PageParseError as e:
            raise UpstreamError(
                f"{answer.url.host} sent a page that is not a simple index: {e}"
            ) from e
        if learn is not None:
            # Before the copy is kept: stored pages, offline serving and bundles carry them.
            model = await learn(answer, model)
        now = self._wall_clock()
        if answer.stale:
            # As old as the upstream's Age says; without one, at least index_ttl (the oldest a
            # fresh copy is here). Its Cache-Control max-age is not read: GitLab sends 0 on
            # every page, and a fresh parent proxy's is what remains of its own index_ttl.
            age = answer.age if answer.age is not None else self.settings.cache.index_ttl
            page = CachedPage(model, now - age)
        elif (
            learn is not None
            and self.policy.ages_files
            and self.times.pending(scope, PageKey.decode(key).name)
        ):
            # Its upload times are still to come, and the age rules hide files by them: fresh
            # only until they may be in (the next fetch has them), not for index_ttl.
            ttl = self.settings.cache.index_ttl
            page = CachedPage(model, now - max(0.0, ttl - self.times.wait))
        else:
            page = CachedPage(model, now)
        if isinstance(model, Project):
            await self._listed(caller.view(scope), model)
        if answer.stale:
            stale = _StaleAnswer(page, dated=answer.age is not None)
            if shared:
                await self._keep_stale(key, stale, len(answer.body))
            raise stale
        if not shared:
            # A client's own group view is kept in memory only: no per-user copies on disk.
            self.private[key] = page
            return page
        self.fresh[key] = page
        entries = len(model.files) if isinstance(model, Project) else len(model.projects)
        stored = await _off_the_loop(lambda: dumps(encode_page(model), entries), len(answer.body))
        try:
            await self.store.put_page(key, stored, page.fetched_at)
        except sqlite3.Error as e:
            # A full disk must not cost the client the page it is about to get.
            self._db_warn.log(logging.WARNING, "could not store page %s: %s", key, e)
        if self.shared is not None:
            self.shared.upload_page(key, stored, page.fetched_at)
        return page

    async def _keep_stale(self, key: str, stale: _StaleAnswer, size: int) -> None:
        """Store an upstream's stale copy as the last good one, unless the stored copy is as new
        or the same. Dated index_ttl ago at the latest: no worker may take it for fresh."""
        row = await self.store.get_page(key)
        if row is not None and not stale.newer_than(row.fetched_at):
            return
        page = stale.page
        model = page.model
        entries = len(model.files) if isinstance(model, Project) else len(model.projects)
        text = await _off_the_loop(lambda: dumps(encode_page(model), entries), size)
        if row is not None and row.model == text:
            return
        fetched_at = min(page.fetched_at, self._wall_clock() - self.settings.cache.index_ttl)
        try:
            await self.store.put_page(key, text, fetched_at)
        except sqlite3.Error as e:
            self._db_warn.log(logging.WARNING, "could not store page %s: %s", key, e)

    async def _listed(self, view: str, project: Project) -> None:
        """Tell the gate which files GitLab listed, in batches: 100,000 take 0.3 s of the loop."""
        sha256s = [f.sha256 for f in project.files if f.sha256]
        for start in range(0, len(sha256s), LISTED_BATCH):
            if start:
                await asyncio.sleep(0)
            self.gate.listed(view, sha256s[start : start + LISTED_BATCH])

    def _judge(
        self, scope: Scope, caller: Caller, answer: PageAnswer, message: str, *, index: bool
    ) -> None:
        """Remember GitLab's yes or no to this client's credentials for this scope."""
        redirected = answer.location is not None
        self.gate.page_answer(caller, scope, answer.status, message, redirected, index=index)

    async def invalidate(self, name: str) -> None:
        """Drop every cached page that may list `name`: its page in any scope, and every index.

        The proxy cannot know which groups hold a project, nor which ids alias it, without
        asking GitLab; dropping the name everywhere is cheap, since uploads are rare.
        """
        for memory in (self.fresh, self.private):
            for key in [k for k in list(memory.keys()) if PageKey.decode(k).name in ("", name)]:
                memory.pop(key, None)
        # A remembered 404 or forwarding redirect for the name would send installs elsewhere.
        for negative in [k for k in list(self.negative) if PageKey.decode(k[0]).name == name]:
            self.negative.pop(negative, None)
        await self.store.delete_pages_named(name)

    async def expire_all(self) -> None:
        """Treat every cached page as stale: invalidations may have been missed meanwhile.

        Stored copies stay, as the last good copies to serve if GitLab fails.
        """
        self.fresh.clear()
        self.private.clear()
        self.negative.clear()
        try:
            await self.store.age_pages(self._wall_clock() - self.settings.cache.index_ttl)
        except sqlite3.Error as e:
            self._db_warn.log(logging.WARNING, "could not mark stored pages stale: %s", e)

    def _forwarded(self, location: yarl.URL) -> ProxyError:
        if self.settings.upstream.forwarding == "deny":
            return NotFound(
                "package not found in GitLab; this proxy does not follow forwarding "
                "to the public index (upstream.forwarding = 'deny')"
            )
        if self.settings.upstream.forwarding == "cache":
            return NotFound(
                f"package not found in GitLab, which forwards to {location.host}, "
                "a host not in upstream.forward_hosts"
            )
        return Redirect(str(location))

    async def _stored(self, key: str) -> CachedPage | None:
        row = await self.store.get_page(key)
        if row is None:
            return None
        return await self._decoded(key, row.model, row.fetched_at)

    async def _decoded(self, key: str, text: str, fetched_at: float) -> CachedPage | None:
        try:
            model = await _off_the_loop(
                lambda: self._with_origins(decode_page(json.loads(text))), len(text)
            )
        except ValueError:
            log.error("stored page %s is unreadable; ignoring it", key)
            return None
        return CachedPage(model, fetched_at)

    async def _last_good(self, key: str) -> CachedPage | None:
        """The stored copy of a page GitLab fails, else the shared tier's (kept here too)."""
        stored = await self._stored(key)
        if stored is not None or self.shared is None:
            return stored
        found = await self.shared.page(key)
        if found is None:
            return None
        text, fetched_at = found
        page = await self._decoded(key, text, fetched_at)
        if page is not None:
            try:
                await self.store.put_page(key, text, fetched_at)
            except sqlite3.Error as e:
                self._db_warn.log(logging.WARNING, "could not store page %s: %s", key, e)
        return page


def _newest(stored: CachedPage | None, error: ProxyError) -> CachedPage | None:
    """The page to serve stale: the stored copy, or the upstream's stale one if newer."""
    if not isinstance(error, _StaleAnswer):
        return stored
    if stored is None or error.newer_than(stored.fetched_at):
        return error.page
    return stored


def _parse_project(answer: PageAnswer, name: str) -> Project:
    """The project an upstream page lists, read as the format its Content-Type names."""
    if is_json_page(answer.content_type):
        return parse_project_json(answer.body, str(answer.url), name)
    return parse_project_page(answer.body, str(answer.url), name)


async def _off_the_loop(work: Callable[[], T], size: int) -> T:
    """`work()` on a page of `size` bytes: in a thread when big, so hits are served meanwhile.

    20,000 files take over a second of parsing; lxml lets go of the GIL for much of it, and the
    rest is shared with the event loop every switch interval (5 ms).
    """
    if size < THREAD_FROM_BYTES:
        return work()
    return await asyncio.to_thread(work)


def _protected(name: str, why: str) -> Protected:
    return Protected(
        f"{name} is a protected name (policy.protected): never taken from the public index, "
        f"and GitLab does not host it here ({why})"
    )


def _is_absence(error: ProxyError) -> bool:
    """Whether GitLab said the page does not exist (404, 410, or forwarding elsewhere)."""
    if isinstance(error, Offline):
        return False
    if isinstance(error, UpstreamStatus):
        return error.status in (404, 410)
    return isinstance(error, Redirect | NotFound)
