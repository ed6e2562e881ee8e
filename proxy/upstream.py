"""The upstream seam: what the proxy asks of the index it fronts, and shared HTTP helpers."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl
from aiohttp import hdrs
from multidict import CIMultiDictProxy

from .errors import ProxyError, UpstreamError
from .scope import Scope

MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
# The longest a Retry-After may hold a host: past that, asking again costs less than waiting.
MAX_RETRY_AFTER = 3600.0
# A warn-code saying an answer is past its freshness (RFC 7234 5.5): 110 Response is Stale,
# 111 Revalidation Failed, 112 Disconnected Operation. RFC 9111 dropped Warning; caches,
# this proxy among them, still send 110.
_STALE_WARNING = re.compile(r"(?:^|,)\s*11[012]\s")
# The largest Age a cache must pass on (RFC 9111 1.2.2: 2^31 seconds).
MAX_AGE_SECONDS = 2**31


class RangeIgnored(Exception):
    """The upstream does not answer Range requests as asked; the message says how."""


# Sent with every simple page this proxy serves, so a proxy in front tells a parent tier's pages
# (which carry the upload times it knows) from GitLab's own, JSON or not (GitLab 18.10+ has PEP
# 691 JSON behind a feature flag).
PROXY_PAGE_HEADER = "X-Gitlab-Pypi-Proxy"


@dataclass(frozen=True, slots=True)
class PageAnswer:
    """What the upstream said to a simple-page request."""

    status: int
    body: bytes
    url: yarl.URL
    # Set on a redirect: where the upstream pointed (package forwarding).
    location: yarl.URL | None = None
    retry_after: float | None = None
    # WWW-Authenticate: a revoked token's Bearer challenge says why GitLab refused it.
    challenge: str | None = None
    # Content-Type: whether the page is HTML or PEP 691 JSON.
    content_type: str = ""
    # Whether a proxy of this project served it (PROXY_PAGE_HEADER): a parent tier's page.
    from_proxy: bool = False
    # A cache on the way (a parent proxy of this project whose own upstream fails) said its
    # copy is stale, and how old it is (Age) if it said.
    stale: bool = False
    age: float | None = None


@dataclass(frozen=True, slots=True)
class ApiAnswer:
    """What the upstream's REST API said to one GET: its status, and a 200's JSON body."""

    status: int
    body: bytes = b""
    # What a refusal or failure said (upstream.message_of), empty on a 200.
    message: str = ""
    # The next page of a paginated list (GitLab's X-Next-Page), empty on the last one.
    next_page: str = ""
    # How many pages the list has (X-Total-Pages), when GitLab counts them (to 10,000 rows).
    pages: int | None = None


@dataclass(frozen=True, slots=True)
class UploadAnswer:
    """What the upstream said to an upload: its status, and at most a short body."""

    status: int
    content_type: str
    challenge: str | None
    body: bytes


class Upstream(Protocol):
    """An index the proxy sits in front of. GitLab (gitlab.py) is the one there is today."""

    @property
    def offline(self) -> bool:
        """Checked before every request, so no code path can reach the network when offline."""
        ...

    @property
    def ignores_range_somewhere(self) -> bool: ...

    def url_for(self, scope: Scope, tail: str) -> yarl.URL:
        """The upstream URL for `tail` below the scope's PyPI API."""
        ...

    def is_upstream_host(self, url: yarl.URL) -> bool:
        """Whether `url` is on the upstream's own origin, the only one credentials go to."""
        ...

    def may_be_forward_route(self, link: str) -> bool:
        """A cheap test, run on every link of a page: whether `link` may name a forward route."""
        ...

    def forward_route(self, link: str) -> yarl.URL | None:
        """The upstream's own route for a public file that a link on its page names, if any."""
        ...

    def forward_target(self, url: yarl.URL) -> yarl.URL | None:
        """The public file the upstream's forward route `url` redirects to, if it is one."""
        ...

    def ranges_work(self, url: yarl.URL) -> bool: ...

    async def get_page(
        self, url: yarl.URL, authorization: str | None, *, follow_to: tuple[str, ...] = ()
    ) -> PageAnswer: ...

    async def get_api(
        self, path: str, query: Mapping[str, str], authorization: str | None
    ) -> ApiAnswer:
        """GET the upstream's REST API at `path` (absolute, e.g. `/api/v4/projects/42/packages`);
        transport failures raise ProxyErrors, refusals are answers."""
        ...

    def open_file(
        self, url: yarl.URL, authorization: str | None
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """A 200 response for a file, following redirects without credentials off the origin."""
        ...

    async def read_range(
        self, url: yarl.URL, authorization: str | None, first: int | None, last: int
    ) -> tuple[int, bytes, int]: ...

    async def probe(
        self, url: yarl.URL, authorization: str | None
    ) -> tuple[int, str, float | None]:
        """HEAD a file with these credentials: the status, message and Retry-After only."""
        ...

    async def post_upload(
        self,
        scope: Scope,
        body: AsyncIterator[bytes],
        *,
        content_type: str,
        content_length: int | None,
        authorization: str | None,
    ) -> UploadAnswer:
        """Stream an upload to the scope; transport failures raise ProxyErrors."""
        ...

    async def reachable(self) -> bool:
        """Whether the upstream answers HTTP at all (any status), without credentials."""
        ...

    def error_for(
        self,
        status: int,
        message: str,
        retry_after: float | None,
        *,
        authorization: str | None,
        on_upstream: bool = True,
    ) -> ProxyError:
        """A non-200 answer as the client should see it, keeping its meaning."""
        ...


def is_listed_host(url: yarl.URL, hosts: tuple[str, ...]) -> bool:
    """True for an http(s) URL whose host, or host:port, is one of `hosts`."""
    if url.scheme not in ("http", "https") or not url.host:
        return False
    return url.host in hosts or f"{url.host}:{url.port}" in hosts


def fingerprint(authorization: str | None) -> str:
    """A short digest of a credential, to key per-credential answers without keeping it."""
    if not authorization:
        return ""
    return hashlib.sha256(authorization.encode()).hexdigest()[:32]


def message_of(body: bytes, status: int, challenge: str | None = None) -> str:
    """What GitLab said, short: its JSON `message`, or `error` (OAuth, parameter and Dependency
    Firewall errors), or the bare status; a revoked token's challenge says so."""
    message = str(status)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        message = str(data["message"])
    elif isinstance(data, dict) and isinstance(data.get("error"), str):
        message = str(data["error"])
        if isinstance(data.get("error_description"), str):
            message += f": {data['error_description']}"
    if status == 401 and challenge and 'error="invalid_token"' in challenge:
        message = f"the token is revoked or expired ({message})"
    return message[:500]


def location_of(resp: aiohttp.ClientResponse) -> yarl.URL | None:
    """Where a redirect points, resolved against the request; refused if it names a user."""
    raw = resp.headers.get(hdrs.LOCATION)
    if not raw:
        return None
    try:
        location = resp.url.join(yarl.URL(raw))
    except ValueError:
        return None
    if location.user is not None or location.password is not None:
        # aiohttp would send them as Basic credentials, or refuse them beside ours (ValueError).
        raise UpstreamError(
            "GitLab redirected to a URL with a user name or password in it; not followed"
        )
    return location


def parse_retry_after(raw: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After asks for, at most MAX_RETRY_AFTER; None if absent or malformed.

    RFC 9110 10.2.3 allows delta-seconds (digits only) or an HTTP-date, nothing else: `inf`,
    `1e999` or `-5` are nonsense, as if there were no header.
    """
    value = (raw or "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        # Compared as text first: int() of thousands of digits is slow, then refused.
        return MAX_RETRY_AFTER if len(value) > 5 else min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)  # "-0000": still UTC (RFC 5322 3.3)
    wait = when.timestamp() - (time.time() if now is None else now)
    return min(max(0.0, wait), MAX_RETRY_AFTER)


def is_stale(headers: CIMultiDictProxy[str]) -> bool:
    """Whether an answer says it is a stale copy: `X-Cache: STALE` (this project's proxies, and
    other caches) or a Warning 110, 111 or 112."""
    if headers.get("X-Cache", "").strip().upper() == "STALE":
        return True
    return any(_STALE_WARNING.search(value) for value in headers.getall(hdrs.WARNING, []))


def parse_age(raw: str | None) -> float | None:
    """The seconds an Age header gives (RFC 9111 5.1: digits only); None if absent or malformed."""
    value = (raw or "").strip()
    if not (value.isascii() and value.isdigit()):
        return None
    # Compared as text first: int() of thousands of digits is slow.
    return float(MAX_AGE_SECONDS if len(value) > 10 else min(int(value), MAX_AGE_SECONDS))


def retry_after_of(resp: aiohttp.ClientResponse) -> float | None:
    return parse_retry_after(resp.headers.get(hdrs.RETRY_AFTER))


def content_range(raw: str) -> tuple[int, int, int] | None:
    """(first, last, size) of `bytes first-last/size`, or None if it is not that."""
    unit, _, rest = raw.strip().partition(" ")
    span, _, size = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (first.isdigit() and last.isdigit() and size.isdigit()):
        return None
    if int(first) > int(last) or int(last) >= int(size):
        return None
    return int(first), int(last), int(size)


async def read_limited(resp: aiohttp.ClientResponse, limit: int, too_big: ProxyError) -> bytes:
    """The body, refused with `too_big` as soon as it is known to pass `limit`: no more is
    ever kept."""
    # Content-Length of a compressed body is not the page's size, but bigger still says no.
    if resp.content_length is not None and resp.content_length > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def read_kept(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, of which no more than `limit` bytes are kept; the rest is read and dropped."""
    kept = bytearray()
    async for chunk in resp.content.iter_chunked(256 * 1024):
        kept += chunk[: limit - len(kept)]
    return bytes(kept)


async def message_in(resp: aiohttp.ClientResponse) -> str:
    """What an error answer says (see message_of), reading at most 64 KiB for at most 5 s."""
    try:
        body = await asyncio.wait_for(resp.content.read(64 * 1024), timeout=5)
    except (aiohttp.ClientError, TimeoutError):
        return str(resp.status)
    return message_of(body, resp.status, resp.headers.get(hdrs.WWW_AUTHENTICATE))


def describe(e: aiohttp.ClientError) -> str:
    """A short reason that names no URL, so no signed query or credential leaks."""
    if isinstance(e, aiohttp.ClientConnectorError):
        return "connection refused or host unknown"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(e, aiohttp.ClientPayloadError):
        return "incomplete body"
    return type(e).__name__
