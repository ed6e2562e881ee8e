"""GitLab as the upstream: its URL shape, redirects (never auth off-host), timeouts, Retry-After,
the proxy token's refusals, and how GitLab's answers read to clients."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import NoReturn

import aiohttp
import yarl
from aiohttp import hdrs

from .config import UpstreamSettings
from .credentials import BARE_REFUSALS, CredentialPolicy, outgoing_headers, refuses_credentials
from .errors import (
    GITLAB_CHALLENGE,
    CredentialsRefused,
    Offline,
    ProxyError,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .metrics import Metrics, UpstreamKind
from .negotiate import UPSTREAM_ACCEPT
from .scope import Scope
from .upstream import (
    MAX_REDIRECTS,
    PROXY_PAGE_HEADER,
    REDIRECTS,
    ApiAnswer,
    PageAnswer,
    RangeIgnored,
    UploadAnswer,
    content_range,
    describe,
    is_listed_host,
    is_stale,
    location_of,
    message_in,
    parse_age,
    read_kept,
    read_limited,
    retry_after_of,
)

log = logging.getLogger(__name__)

# How long a 429 without Retry-After keeps the proxy from asking that host again.
DEFAULT_RETRY_AFTER = 5.0
# A refused proxy token is logged at most this often: loud enough to notice, not a flood.
REFUSAL_LOG_SECONDS = 60.0
# The EE Dependency Firewall's route for a public file: it checks it, then redirects there.
FORWARD_ROUTE = "/packages/pypi/forward/"
_FORWARD_PATH = re.compile(
    r"/api/v4/projects/[^/]+/packages/pypi/forward/[^/]+/(?P<host>[^/]+)/(?P<path>.+)$"
)
# A page is asked for as PEP 691 JSON first: a public index or a parent proxy of this project
# answers with it; GitLab answers HTML (JSON only behind a feature flag of 18.10+).
PAGE_HEADERS = {str(hdrs.ACCEPT): UPSTREAM_ACCEPT}
# Of GitLab's answer to an upload, no more than this is kept and passed on.
MAX_UPLOAD_ANSWER = 64 * 1024


class GitLab:
    """One per process: GitLab's PyPI API over a ClientSession with explicit timeouts."""

    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        offline: bool = False,
    ) -> None:
        self.settings = settings
        self.policy = CredentialPolicy(settings)
        # Checked before every request, so no code path can reach the network when offline.
        self.offline = offline
        self.session = session
        self.metrics = metrics
        self.base = yarl.URL(settings.url.rstrip("/"))
        self._page_timeout = aiohttp.ClientTimeout(total=settings.timeout)
        # Big files may take longer than `timeout` in all; what must not stall is each read.
        self._file_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.timeout, sock_read=settings.timeout
        )
        # A readiness probe must answer well within a probe's own timeout.
        self._probe_timeout = aiohttp.ClientTimeout(total=min(settings.timeout, 3.0))
        # Until when a 429 (or 503 with Retry-After) asked us not to come back, per (host,
        # credential): GitLab throttles authenticated requests per user, so one token's 429 holds
        # that token only. The credential is held as a keyed hash; "" is the whole host.
        self._held_until: dict[tuple[str | None, str], float] = {}
        self._hold_secret = secrets.token_bytes(32)
        self._refusal_logged_at = -REFUSAL_LOG_SECONDS
        # host:port of upstreams that answer a Range request with the whole file.
        self._ignores_range: set[str] = set()

    def _holder(self, url: yarl.URL, authorization: str | None) -> str:
        """Whom an answer to this request holds: its credential's keyed hash, or "" (the host).

        A request that carries no credential to this host is counted by GitLab per address,
        which is the proxy's for every client; so is a 503, GitLab's own health.
        """
        if not authorization or not self.is_upstream_host(url):
            return ""
        return hmac.new(self._hold_secret, authorization.encode(), hashlib.sha256).hexdigest()

    def _held_for(self, url: yarl.URL, authorization: str | None = None) -> tuple[float, str]:
        """Seconds left before a Retry-After lets this request go (0 when free), and whom it
        holds: "" for the whole host, else this request's credential."""
        now = time.monotonic()
        host_left = self._held_until.get((url.host, ""), 0.0) - now
        holder = self._holder(url, authorization)
        own_left = self._held_until.get((url.host, holder), 0.0) - now if holder else 0.0
        if own_left > host_left:
            return own_left, holder
        return max(0.0, host_left), ""

    def may_send(self, url: yarl.URL, authorization: str | None = None) -> None:
        """Raise instead of sending anything: offline, or while a Retry-After holds this request."""
        if self.offline:
            raise Offline()
        self._check_gate(url, authorization)

    def _check_gate(self, url: yarl.URL, authorization: str | None) -> None:
        """Refuse, without a request, while the Retry-After that holds it has not passed."""
        left, holder = self._held_for(url, authorization)
        if left > 0:
            whom = "these credentials" if holder else "the proxy"
            raise UpstreamUnavailable(
                f"GitLab is rate limiting {whom}; not asking again for {left:.0f}s",
                headers={hdrs.RETRY_AFTER: str(max(1, round(left)))},
            )

    def _note_status(
        self, url: yarl.URL, authorization: str | None, status: int, retry_after: float | None
    ) -> None:
        if status == 429 or (status == 503 and retry_after is not None):
            wait = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
            holder = self._holder(url, authorization) if status == 429 else ""
            whom = "one credential" if holder else "the proxy"
            log.warning("%s asked %s to wait %gs (HTTP %d)", url.host, whom, wait, status)
            now = time.monotonic()
            # One entry per throttled credential: the ones that have run out go.
            for key in [k for k, until in self._held_until.items() if until <= now]:
                del self._held_until[key]
            self._held_until[(url.host, holder)] = now + wait

    def url_for(self, scope: Scope, tail: str) -> yarl.URL:
        """GitLab URL for `tail` below the scope's PyPI API; the raw id is kept encoded."""
        return yarl.URL(f"{self.base}{scope.api_path}/{tail}", encoded=True)

    def is_upstream_host(self, url: yarl.URL) -> bool:
        """Credentials go only to the configured GitLab origin (scheme, host and port), or to
        the same host upgraded from http to https on the default ports."""
        origin = (url.scheme, url.host, url.port)
        base = (self.base.scheme, self.base.host, self.base.port)
        return origin == base or (
            base == ("http", url.host, 80) and origin == ("https", url.host, 443)
        )

    def may_be_forward_route(self, link: str) -> bool:
        """A string test, no URL parsing: whether a page's link may name the firewall's route."""
        return FORWARD_ROUTE in link

    def forward_route(self, link: str) -> yarl.URL | None:
        """GitLab's Dependency Firewall route that a link on one of its pages names, at the
        configured origin (links use GitLab's external URL, which may be another one)."""
        if FORWARD_ROUTE not in link:
            return None  # the common case, and no URL parsing for it
        try:
            path = yarl.URL(link, encoded=True).raw_path
        except ValueError:
            return None
        match = _FORWARD_PATH.search(path)
        if match is None:
            return None
        return yarl.URL(f"{self.base}{match[0]}", encoded=True)

    def forward_target(self, url: yarl.URL) -> yarl.URL | None:
        """The public file GitLab's forward route `url` redirects to, if it is one on GitLab:
        `.../api/v4/projects/:id/packages/pypi/forward/<name>/<host>/<path>`."""
        if not self.is_upstream_host(url):
            return None
        match = _FORWARD_PATH.search(url.raw_path)
        if match is None:
            return None
        try:
            return yarl.URL(f"https://{match['host']}/{match['path']}", encoded=True)
        except ValueError:
            return None

    def _headers(self, url: yarl.URL, authorization: str | None) -> dict[str, str]:
        headers: dict[str, str] = {hdrs.USER_AGENT: self.settings.user_agent}
        headers.update(outgoing_headers(authorization, to_origin=self.is_upstream_host(url)))
        return headers

    async def get_page(
        self, url: yarl.URL, authorization: str | None, *, follow_to: tuple[str, ...] = ()
    ) -> PageAnswer:
        """GET a simple page. Redirects are returned, or followed to `follow_to` hosts only."""
        self.may_send(url, authorization)
        hops = 0
        try:
            while True:
                async with await self._send(
                    "page", url, authorization, self._page_timeout, extra=PAGE_HEADERS
                ) as resp:
                    location = location_of(resp)
                    if resp.status in REDIRECTS and location is not None:
                        # GitLab sending us to itself (http to https, a new relative root) is
                        # not forwarding: followed, with the credentials its origin may have.
                        follow = self.is_upstream_host(location) or is_listed_host(
                            location, follow_to
                        )
                        if follow and hops < MAX_REDIRECTS:
                            hops += 1
                            url = location
                            continue
                        return PageAnswer(resp.status, b"", url, location=location)
                    limit = self.settings.max_page_size
                    too_big = UpstreamError(
                        f"GitLab sent a page larger than upstream.max_page_size ({limit} bytes)"
                    )
                    body = await read_limited(resp, limit, too_big)
                    self.metrics.fetched("page", len(body))
                    return PageAnswer(
                        resp.status,
                        body,
                        url,
                        retry_after=retry_after_of(resp),
                        challenge=resp.headers.get(hdrs.WWW_AUTHENTICATE),
                        content_type=resp.headers.get(hdrs.CONTENT_TYPE, ""),
                        from_proxy=PROXY_PAGE_HEADER in resp.headers,
                        stale=is_stale(resp.headers),
                        age=parse_age(resp.headers.get(hdrs.AGE)),
                    )
        except TimeoutError as e:
            raise self._failed("page", UpstreamTimeout(self._timeout_message)) from e
        except aiohttp.ClientError as e:
            raise self._failed("page", UpstreamUnavailable(_unreachable(e))) from e

    async def get_api(
        self, path: str, query: Mapping[str, str], authorization: str | None
    ) -> ApiAnswer:
        """GET GitLab's REST API at `path` with `query`. Redirects are followed on GitLab's own
        origin only (a relative root); any other is an answer, with no credential sent there."""
        url = yarl.URL(f"{self.base}{path}", encoded=True).with_query(dict(query))
        self.may_send(url, authorization)
        hops = 0
        try:
            while True:
                # Its answers never judge the proxy's registry credentials: a deploy token that
                # reads every page is still refused here.
                resp = await self._send(
                    "api", url, authorization, self._page_timeout, notes_own=False
                )
                async with resp:
                    location = location_of(resp)
                    if resp.status in REDIRECTS and location is not None:
                        if self.is_upstream_host(location) and hops < MAX_REDIRECTS:
                            hops += 1
                            url = location
                            continue
                        return ApiAnswer(resp.status, message=f"redirected to {location.host}")
                    if resp.status != 200:
                        return ApiAnswer(resp.status, message=await message_in(resp))
                    limit = self.settings.max_page_size
                    too_big = UpstreamError(
                        f"GitLab sent an API answer over upstream.max_page_size ({limit} bytes)"
                    )
                    body = await read_limited(resp, limit, too_big)
                    pages = resp.headers.get("X-Total-Pages", "")
                    return ApiAnswer(
                        200,
                        body,
                        next_page=resp.headers.get("X-Next-Page", ""),
                        pages=int(pages) if pages.isdigit() else None,
                    )
        except TimeoutError as e:
            raise self._failed("api", UpstreamTimeout(self._timeout_message)) from e
        except aiohttp.ClientError as e:
            raise self._failed("api", UpstreamUnavailable(_unreachable(e))) from e

    @asynccontextmanager
    async def open_file(
        self, url: yarl.URL, authorization: str | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A 200 response for a file, following object-storage redirects without credentials."""
        async with self._follow(url, authorization, {}) as resp:
            if resp.status != 200:
                raise await self.status_error(resp, authorization)
            yield resp

    @asynccontextmanager
    async def _follow(
        self, url: yarl.URL, authorization: str | None, extra: dict[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A file request's last answer after redirects, which get no credentials off-host."""
        self.may_send(url, authorization)
        hops = 0
        try:
            while True:
                # A file body is hashed as sent: it must arrive as stored, not re-encoded.
                resp = await self._send(
                    "file",
                    url,
                    authorization,
                    self._file_timeout,
                    auto_decompress=False,
                    extra=extra,
                )
                location = location_of(resp)
                if resp.status in REDIRECTS and location is not None and hops < MAX_REDIRECTS:
                    resp.release()
                    hops += 1
                    url = location
                    continue
                break
            try:
                yield resp
            finally:
                resp.release()
        except TimeoutError as e:
            raise self._failed("file", UpstreamTimeout(self._timeout_message)) from e
        except aiohttp.ClientError as e:
            raise self._failed("file", UpstreamUnavailable(_unreachable(e))) from e

    @property
    def ignores_range_somewhere(self) -> bool:
        return bool(self._ignores_range)

    def ranges_work(self, url: yarl.URL) -> bool:
        """False once this URL's host answered a Range request with the whole file."""
        return _host_key(url) not in self._ignores_range

    async def read_range(
        self, url: yarl.URL, authorization: str | None, first: int | None, last: int
    ) -> tuple[int, bytes, int]:
        """Bytes first..last of a file (first None: the last `last` bytes), as for files.

        (offset, body, file size). Raises RangeIgnored, remembering the host, when the answer
        is not the one range asked for; a whole file sent instead is not read.
        """
        spec = f"bytes=-{last}" if first is None else f"bytes={first}-{last}"
        wanted = last if first is None else last - first + 1
        headers = {str(hdrs.RANGE): spec, str(hdrs.ACCEPT_ENCODING): "identity"}
        async with self._follow(url, authorization, headers) as resp:
            if resp.status == 200 and (resp.content_length or wanted + 1) <= wanted:
                # The whole file, no bigger than the range: a fair answer (RFC 9110 14.2).
                body = await read_limited(resp, wanted, _file_too_big(wanted))
                self.metrics.fetched("file", len(body))
                return 0, body, len(body)
            if resp.status == 200:
                # Closed, not drained: the whole file is what this was meant to avoid.
                resp.close()
                self._range_ignored(url, "answered a Range request with the whole file")
            if resp.status != 206:
                raise await self.status_error(resp, authorization)
            span = content_range(resp.headers.get(hdrs.CONTENT_RANGE, ""))
            if span is None or span[1] - span[0] + 1 > wanted:
                resp.close()
                self._range_ignored(url, "answered a Range request with another range")
            start, end, size = span
            body = await read_limited(resp, end - start + 1, _file_too_big(end - start + 1))
            self.metrics.fetched("file", len(body))
            if len(body) != end - start + 1 or (first is not None and start != first):
                self._range_ignored(url, "answered a Range request with a short or shifted range")
            return start, body, size

    def _range_ignored(self, url: yarl.URL, how: str) -> NoReturn:
        if self.ranges_work(url):
            log.warning(
                "%s %s: .metadata of uncached wheels from it now downloads the whole wheel",
                url.host,
                how,
            )
            self._ignores_range.add(_host_key(url))
        raise RangeIgnored(how)

    async def _send(
        self,
        kind: UpstreamKind,
        url: yarl.URL,
        authorization: str | None,
        limits: aiohttp.ClientTimeout,
        *,
        auto_decompress: bool = True,
        extra: dict[str, str] | None = None,
        method: str = hdrs.METH_GET,
        notes_own: bool = True,
    ) -> aiohttp.ClientResponse:
        """One request without redirects, timed to its headers; failing answers are remembered.

        `notes_own`: whether its answer settles if GitLab accepts the proxy's own token (the
        /-/ready probe and a HEAD asking about one file do not).
        """
        self._check_gate(url, authorization)
        started = time.monotonic()
        resp = await self.session.request(
            method,
            url,
            headers={**self._headers(url, authorization), **(extra or {})},
            allow_redirects=False,
            timeout=limits,
            auto_decompress=auto_decompress,
        )
        self.metrics.upstream_answered(kind, time.monotonic() - started, resp.status)
        self._note_status(url, authorization, resp.status, retry_after_of(resp))
        # The firewall's 403 on its forward route judges a file, not the proxy's token; the
        # REST API takes fewer kinds of token than the registry does (upload_times.py says why).
        judges_token = FORWARD_ROUTE not in url.path and kind != "api"
        if notes_own and judges_token and self._is_own(url, authorization):
            self._note_own_answer(resp.status)
        if resp.status >= 500 or resp.status == 429:
            self.metrics.upstream_failed(kind, f"{url.host} answered {resp.status} for {url.path}")
        elif (
            resp.status in (401, 403)
            and judges_token
            and self.policy.blames_own_token(to_origin=self.is_upstream_host(url))
        ):
            self.metrics.upstream_failed(
                kind, f"GitLab refused the proxy's credentials ({resp.status}) for {url.path}"
            )
        return resp

    def _is_own(self, url: yarl.URL, authorization: str | None) -> bool:
        return self.policy.carries_own(authorization, to_origin=self.is_upstream_host(url))

    def _note_own_answer(self, status: int) -> None:
        if status not in (401, 403):
            if status < 400:
                self.metrics.token_refused = None
            return
        self.metrics.token_refused = status
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_SECONDS:
            self._refusal_logged_at = now
            log.error(
                "GitLab refused the proxy's own credentials (HTTP %d): check %s; until it "
                "accepts them, clients get only what is cached (logged at most once a minute)",
                status,
                self.policy.token_setting,
            )

    @property
    def _timeout_message(self) -> str:
        return f"GitLab did not answer within {self.settings.timeout:g}s"

    def _failed(self, kind: UpstreamKind, error: ProxyError) -> ProxyError:
        self.metrics.upstream_failed(kind, error.message)
        return error

    async def reachable(self) -> bool:
        """Whether GitLab answers HTTP at all (any status): for /-/ready, without credentials."""
        if self._held_for(self.base)[0] > 0:
            return True  # it answered, asking us to wait: reachable, not to be asked again now
        try:
            resp = await self._send("probe", self.base, None, self._probe_timeout, notes_own=False)
        except (aiohttp.ClientError, TimeoutError) as e:
            message = self._timeout_message if isinstance(e, TimeoutError) else _unreachable(e)
            self.metrics.upstream_failed("probe", message)
            return False
        resp.release()
        return True

    async def probe(
        self, url: yarl.URL, authorization: str | None
    ) -> tuple[int, str, float | None]:
        """HEAD a file with these credentials: GitLab's status, message and Retry-After only."""
        self.may_send(url, authorization)
        try:
            resp = await self._send(
                "file",
                url,
                authorization,
                self._page_timeout,
                method=hdrs.METH_HEAD,
                notes_own=False,
            )
            async with resp:
                message = await message_in(resp)
                if message == str(resp.status) and resp.status in (401, 403, 404, 410):
                    # A HEAD has no body: say what GitLab says to a GET, so a refusal of a cached
                    # file reads like one of a file fetched for the asking.
                    message = f"{resp.status} {HTTPStatus(resp.status).phrase}"
                return resp.status, message, retry_after_of(resp)
        except TimeoutError as e:
            raise self._failed("file", UpstreamTimeout(self._timeout_message)) from e
        except aiohttp.ClientError as e:
            raise self._failed("file", UpstreamUnavailable(_unreachable(e))) from e

    async def post_upload(
        self,
        scope: Scope,
        body: AsyncIterator[bytes],
        *,
        content_type: str,
        content_length: int | None,
        authorization: str | None,
    ) -> UploadAnswer:
        """POST an upload to the scope's PyPI API, streamed; its answer, at most 64 KiB kept.

        Nothing is read from `body` while offline or while a Retry-After holds these credentials.
        Errors raised by `body` itself propagate as they are, or as the transport failure they
        caused (then the caller knows its own reason).
        """
        if self.offline:
            raise UpstreamUnavailable(
                "this proxy is offline (cache.offline): no upload reaches GitLab"
            )
        url = yarl.URL(f"{self.base}{scope.api_path}", encoded=True)
        self.may_send(url, authorization)
        headers: dict[str, str] = {
            hdrs.USER_AGENT: self.settings.user_agent,
            hdrs.CONTENT_TYPE: content_type,
        }
        headers.update(outgoing_headers(authorization, to_origin=True))
        if content_length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(content_length)
        # A big file's bytes go out as fast as the client sends them; GitLab answers only after.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.settings.timeout, sock_read=max(self.settings.timeout, 120)
        )
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                return UploadAnswer(
                    resp.status,
                    resp.headers.get(hdrs.CONTENT_TYPE, "application/json"),
                    resp.headers.get(hdrs.WWW_AUTHENTICATE),
                    await read_kept(resp, MAX_UPLOAD_ANSWER),
                )
        except TimeoutError as e:
            raise UpstreamTimeout("GitLab did not answer the upload in time") from e
        except aiohttp.ClientError as e:
            raise UpstreamUnavailable("GitLab is unreachable; the upload did not complete") from e

    async def status_error(
        self, resp: aiohttp.ClientResponse, authorization: str | None
    ) -> ProxyError:
        """The client-facing error for a non-200 answer to a file request."""
        message = await message_in(resp)
        return self.error_for(
            resp.status,
            message,
            retry_after_of(resp),
            on_upstream=self.is_upstream_host(resp.url),
            authorization=authorization,
        )

    def error_for(
        self,
        status: int,
        message: str,
        retry_after: float | None,
        *,
        authorization: str | None,
        on_upstream: bool = True,
    ) -> ProxyError:
        """GitLab's non-200 answer as the client should see it, keeping its meaning."""
        # A refusal of the proxy's own token is the operator's problem; of a client's, the client's.
        injected = self.policy.refusal_is_operators(authorization)
        # A 403 with a reason (the Dependency Firewall, an IP restriction, the job token
        # policy, a protected package) is about this request, not the token: it goes on as is.
        if on_upstream and injected and refuses_credentials(status, message):
            why = "" if message in BARE_REFUSALS else f": {message}"
            return CredentialsRefused(
                f"GitLab refused the proxy's credentials ({status}{why}); check upstream.token"
            )
        if status in (401, 403, 404, 410) and on_upstream:
            headers: dict[str, str] = {}
            if status == 401:
                headers[hdrs.WWW_AUTHENTICATE] = GITLAB_CHALLENGE
            return UpstreamStatus(status, message, headers=headers)
        # GitLab's Retry-After goes on to the client, and tells the page cache when to retry.
        retry: dict[str, str] = {}
        if retry_after is not None:
            retry[hdrs.RETRY_AFTER] = str(int(retry_after))
        if status == 429:
            return UpstreamUnavailable("GitLab is rate limiting the proxy", headers=retry)
        if status >= 500:
            return UpstreamUnavailable(f"GitLab answered {status}", headers=retry)
        # Object storage answers for itself: its status is not GitLab's.
        return UpstreamError(f"upstream answered {status}")


def _host_key(url: yarl.URL) -> str:
    return f"{url.host}:{url.port}"


def _file_too_big(limit: int) -> UpstreamError:
    return UpstreamError(f"GitLab sent a file larger than {limit} bytes")


def _unreachable(e: aiohttp.ClientError) -> str:
    return f"GitLab is unreachable: {describe(e)}"
