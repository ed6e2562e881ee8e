"""Fake GitLab PyPI registry, object storage and public index, each a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import hashlib
import hmac
import itertools
import json
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from http import HTTPStatus
from types import TracebackType
from typing import Self, TypeVar, Unpack
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from tests.support.wheels import SdistOptions, WheelOptions, make_sdist, make_wheel, wheel_metadata

CHALLENGE = 'Basic realm="GitLab Packages Registry"'
# PEP 508 names; GitLab refuses an upload whose name is not one.
_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
# Outcomes that tests count apart from the route they hit (REST API calls stay "api").
_KIND_BY_STATUS = {401: "unauthorized", 404: "notfound"}
# The REST API's pagination (Grape's `paginate`): 20 rows a page unless asked, at most 100.
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
# Past this many rows GitLab leaves out X-Total and X-Total-Pages (counting costs too much).
COUNTED_ROWS = 10_000
# Package and file ids, unique across every fake, as GitLab's database sequences are.
_IDS = itertools.count(1)
_Item = TypeVar("_Item")
# The relative root `moved` puts GitLab under; its routes exist there too, answering once moved.
MOVED_ROOT = "/gitlab"
# An absolute link on the public page, as the Dependency Firewall rewrites it.
_PUBLIC_LINK = re.compile(r'href="https?://(?P<host>[^/"]+)/(?P<path>[^"]*)"')


@dataclass
class FakeFile:
    filename: str
    content: bytes = field(repr=False)
    sha256: str
    requires_python: str
    name: str
    version: str
    project_id: int | None = None  # None on the public index
    # When it was uploaded (epoch seconds): the Packages API's `created_at`; tests set it.
    uploaded_at: float = field(default_factory=time.time)
    id: int = field(default_factory=lambda: next(_IDS))


@dataclass
class RequestRecord:
    method: str
    path: str  # raw: percent-encoding and query string as the client sent them
    kind: str
    headers: CIMultiDict[str]
    status: int = 0  # stays 0 if the connection was cut instead of answered


@dataclass
class _Group:
    id: int
    full_path: str
    name: str


@dataclass
class _Project:
    id: int
    full_path: str
    name: str
    public: bool


@dataclass
class _Package:
    """One version of one name in one project: a row of GitLab's packages table."""

    project_id: int
    name: str  # as uploaded; GitLab keeps the raw name and normalizes it in queries
    version: str
    # The version's value, which the last upload that sent one set; files keep their own.
    requires_python: str
    files: list[FakeFile] = field(default_factory=list)
    id: int = field(default_factory=lambda: next(_IDS))

    @property
    def normalized(self) -> str:
        return canonicalize_name(self.name)

    @property
    def created_at(self) -> float:
        """The package row is created with its first file."""
        return min((f.uploaded_at for f in self.files), default=time.time())


_Namespace = TypeVar("_Namespace", _Group, _Project)


def _by_id_or_path(namespaces: dict[int, _Namespace], raw_id: str) -> _Namespace | None:
    """By numeric id, or by full path, which GitLab matches in any case."""
    if raw_id.isdigit():
        return namespaces.get(int(raw_id))
    return next((n for n in namespaces.values() if n.full_path.lower() == raw_id.lower()), None)


@dataclass(frozen=True)
class _Caller:
    projects: frozenset[int] | None  # None: every project
    can_write: bool


class Reply(Exception):
    """Ends a request with GitLab's JSON error shape; the middleware renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        key: str = "message",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.key = key


def _json(
    status: int, message: str, headers: dict[str, str] | None = None, *, key: str = "message"
) -> web.Response:
    """GitLab's error (and upload) body, compact as Rails renders it: under `message`, or
    under `error` for OAuth, parameter and Dependency Firewall errors."""
    body = json.dumps({key: message}, separators=(",", ":"))
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _unauthorized() -> Reply:
    return Reply(401, "401 Unauthorized", {"WWW-Authenticate": CHALLENGE})


class _Raw(Exception):
    """Ends a request with a response GitLab does not render as JSON (Rack::Attack's 429, the
    OAuth challenge of a revoked token)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


REVOKED_DESCRIPTION = "Token was revoked. You have to re-authorize from the user."


def _revoked() -> _Raw:
    """GitLab's answer to a revoked or expired personal token, even on a public project."""
    challenge = (
        'Bearer realm="Protected by OAuth 2.0", error="invalid_token", '
        f'error_description="{REVOKED_DESCRIPTION}"'
    )
    body = json.dumps(
        {"error": "invalid_token", "error_description": REVOKED_DESCRIPTION},
        separators=(",", ":"),
    )
    return _Raw(
        web.Response(
            status=401,
            text=body,
            content_type="application/json",
            headers={"WWW-Authenticate": challenge},
        )
    )


def _insufficient_scope() -> _Raw:
    """A token without `api` / `write_package_registry` scope, on an upload."""
    body = json.dumps(
        {
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the "
            "access token.",
            "scope": "api",
        },
        separators=(",", ":"),
    )
    challenge = 'Bearer realm="Protected by OAuth 2.0", error="insufficient_scope"'
    return _Raw(
        web.Response(
            status=403,
            text=body,
            content_type="application/json",
            headers={"WWW-Authenticate": challenge},
        )
    )


def rate_limited(retry_after: int) -> web.Response:
    """Rack::Attack's throttle answer (lib/gitlab/rack_attack.rb): plain text, with the
    RateLimit-* headers and Retry-After in seconds."""
    reset = int(time.time()) + retry_after
    headers = {
        "Retry-After": str(retry_after),
        "RateLimit-Name": "throttle_authenticated_packages_api",
        "RateLimit-Limit": "1000",
        "RateLimit-Observed": "1001",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(reset),
        "RateLimit-ResetTime": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(reset)),
    }
    return web.Response(
        status=429, text="Retry later\n", content_type="text/plain", headers=headers
    )


def _created_at(epoch: float) -> str:
    """A REST API timestamp as GitLab renders one: UTC, milliseconds, `Z`."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _upload_time(epoch: float) -> str:
    """A PEP 700 upload time as PyPI renders one: UTC, microseconds, `Z`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _paginated(
    request: web.Request,
    items: Sequence[_Item],
    row: Callable[[_Item], dict[str, object]],
    claimed_pages: int | None = None,
    endless: bool = False,
) -> web.Response:
    """One page of a REST list, each item made a `row`, and GitLab's pagination headers
    (X-Total-Pages says `claimed_pages` instead of the truth when that is given, and
    X-Next-Page always names a next page when `endless`)."""
    try:
        page = max(1, int(request.query.get("page", "1")))
        per_page = int(request.query.get("per_page", str(DEFAULT_PER_PAGE)))
    except ValueError:
        raise Reply(400, "page is invalid, per_page is invalid", key="error") from None
    per_page = DEFAULT_PER_PAGE if per_page < 1 else min(per_page, MAX_PER_PAGE)
    pages = max(1, -(-len(items) // per_page))
    headers = {
        "X-Page": str(page),
        "X-Per-Page": str(per_page),
        "X-Next-Page": str(page + 1) if page < pages or endless else "",
        "X-Prev-Page": str(page - 1) if page > 1 else "",
    }
    if len(items) <= COUNTED_ROWS:
        headers.update({"X-Total": str(len(items)), "X-Total-Pages": str(pages)})
    if claimed_pages is not None:
        headers["X-Total-Pages"] = str(claimed_pages)
    rows = [row(item) for item in items[(page - 1) * per_page : page * per_page]]
    return web.json_response(rows, headers=headers)


def _requires_python(options: SdistOptions) -> str:
    """What the index shows for a made distribution: its Requires-Python, or nothing."""
    return options.get("requires_python") or ""


def _erb_escape(text: str) -> str:
    """ERB::Util.html_escape, which GitLab uses: `'` becomes `&#39;`, not Python's `&#x27;`."""
    return escape(text, quote=True).replace("&#x27;", "&#39;")


def _gitlab_page(title: str, anchors: Iterable[str]) -> web.Response:
    # GitLab's `<<-HTML.lstrip` heredoc: only the first line loses its Ruby indentation.
    body = (
        "<!DOCTYPE html>\n"
        "        <html>\n"
        "          <head>\n"
        f"            <title>Links for {_erb_escape(title)}</title>\n"
        "          </head>\n"
        "          <body>\n"
        f"            <h1>Links for {_erb_escape(title)}</h1>\n"
        f"            {''.join(anchors)}\n"
        "          </body>\n"
        "        </html>\n"
    )
    return web.Response(text=body, content_type="text/html")


def _gitlab_json_page(name: str, files: list[tuple[str, FakeFile, str]]) -> web.Response:
    """GitLab's PEP 691 page behind its feature flag: api-version 1.0, four keys per file."""
    page = {
        "meta": {"api-version": "1.0"},
        "name": name,
        "files": [
            {
                "filename": file.filename,
                "url": url,
                "hashes": {"sha256": file.sha256},
                "requires-python": requires_python or None,
            }
            for url, file, requires_python in files
        ],
    }
    return web.json_response(
        page, content_type="application/vnd.pypi.simple.v1+json", headers={"Vary": "Accept"}
    )


def _gitlab_anchor(url: str, requires_python: str, text: str) -> str:
    return f'<a href="{url}" data-requires-python="{_erb_escape(requires_python)}">{text}</a>'


class _Server:
    """A real aiohttp server on 127.0.0.1 that records every request before answering it."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        # Requests to the registry routes, in order; REST API calls (kind "api") are kept apart
        # in `api_requests`, so tests about what pip's requests became see only those.
        self.requests: list[RequestRecord] = []
        self.api_requests: list[RequestRecord] = []
        # Body bytes of files sent, so tests can assert what the proxy pulled from upstream.
        self.file_bytes_sent = 0
        self._runner: web.AppRunner | None = None
        self._port = 0

    def _routes(self) -> list[web.RouteDef]:
        """Routes named `kind` or `kind.variant`: the kind is what `counts` counts."""
        raise NotImplementedError

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse | None:
        """The response, or None once the connection has been cut; fakes hook faults in here."""
        return await handler(request)

    @property
    def server_url(self) -> str:
        """Where the server really listens."""
        if not self._port:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return self.server_url

    async def start(self) -> None:
        """Listen on a free port; after `stop()`, on the same port again, as a restart would."""
        if self._runner is not None:
            return

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._record(request, handler)

        app = web.Application(middlewares=[record])
        app.add_routes(self._routes())
        # A short shutdown_timeout: stop() must not wait out a handler sleeping in `delay`.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        await web.SockSite(runner, sock).start()
        self._port = sock.getsockname()[1]
        self._runner = runner

    async def stop(self) -> None:
        """Close the listener and every connection; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name
        kind = route.partition(".")[0] if route else "notfound"
        # Recorded before answering: a streamed body may reach the client before this returns.
        record = RequestRecord(request.method, request.raw_path, kind, CIMultiDict(request.headers))
        (self.api_requests if kind == "api" else self.requests).append(record)
        self.counts[kind] += 1
        try:
            response = await self._answer(request, handler)
        except Reply as reply:
            response = _json(reply.status, reply.message, reply.headers, key=reply.key)
        except _Raw as raw:
            response = raw.response
        except web.HTTPException as exc:  # the router's own 404 and 405
            response = _json(exc.status, f"{exc.status} {exc.reason}")
        if response is None:
            return web.Response()  # never sent: the transport is already gone
        record.status = response.status
        outcome = kind if kind == "api" else _KIND_BY_STATUS.get(response.status, kind)
        if kind == "page" and response.status == 302:
            outcome = "forward"
        if outcome != kind:
            self.counts[kind] -= 1
            self.counts[outcome] += 1
            record.kind = outcome
        return response


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def byte_range(header: str | None, size: int) -> range | None:
    """The bytes one `Range: bytes=a-b | a- | -n` asks for, empty if none exist (416).

    None means send the whole file: no Range, or one this fake (like S3) does not honour,
    such as several ranges or a last byte before the first.
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1, 2) == ("", ""):
        return None
    first, last = match.group(1, 2)
    if not first:
        suffix = int(last)
        return range(max(0, size - suffix), size) if suffix else range(0)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return range(0)
    return range(start, min(int(last) + 1, size) if last else size)


async def _send_file(
    request: web.Request, file: FakeFile, gitlab: FakeGitLab
) -> web.StreamResponse:
    """Send a file as Workhorse (local storage) or S3 does: HEAD, one byte range, and the body
    faults `gitlab` asks for; the faults cut, corrupt and pace whatever part of the file is sent.
    """
    body = memoryview(file.content)
    if gitlab.corrupt_files and body:
        middle = len(body) // 2
        flipped = bytes([body[middle] ^ 0xFF])
        body = memoryview(b"".join([body[:middle], flipped, body[middle + 1 :]]))
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": (
            f"attachment; filename=\"{file.filename}\"; filename*=UTF-8''{quote(file.filename)}"
        ),
        "Accept-Ranges": "bytes",
    }
    response = web.StreamResponse(headers=headers)
    # ignore_range: a server (or a proxy before it) that answers every Range with the whole file.
    wanted = None if gitlab.ignore_range else byte_range(request.headers.get("Range"), len(body))
    if wanted is not None and not wanted:
        return web.Response(
            status=416,
            text="416 Range Not Satisfiable",
            headers={"Content-Range": f"bytes */{len(body)}"},
        )
    if wanted is not None:
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {wanted.start}-{wanted.stop - 1}/{len(body)}"
        body = body[wanted.start : wanted.stop]
    if not gitlab.chunked_files:
        response.content_length = len(body)
    await response.prepare(request)
    if request.method == "HEAD":
        # aiohttp would send what is written even to a HEAD; GitLab sends headers only.
        await response.write_eof()
        return response
    cut = gitlab.truncate_files or gitlab.drop_files
    end = len(body) // 2 if cut else len(body)
    step = max(1, gitlab.file_chunk_size)
    for start in range(0, end, step):
        if start and gitlab.file_chunk_delay:
            await asyncio.sleep(gitlab.file_chunk_delay)
        await response.write(body[start : min(start + step, end)])
        gitlab.file_bytes_sent += min(step, end - start)
    if gitlab.drop_files and request.transport is not None:
        # A reset mid-body, as when a load balancer or GitLab's worker dies under the download.
        request.transport.abort()
        return response
    if gitlab.truncate_files and request.transport is not None:
        # Closing (not aborting) flushes the half already written, then the client sees EOF
        # before Content-Length is reached.
        request.transport.close()
        return response
    await response.write_eof()
    return response


class FakeObjectStorage(_Server):
    """S3-like host GitLab redirects file downloads to; requests count on the GitLab's `counts`."""

    def __init__(self, gitlab: FakeGitLab) -> None:
        super().__init__()
        self.counts = gitlab.counts
        self.requests = gitlab.requests
        self._gitlab = gitlab
        self._secret = secrets.token_bytes(32)

    def _routes(self) -> list[web.RouteDef]:
        return [web.get("/packages/{sha256}/{filename}", self._object, name="object")]

    def _signature(self, method: str, path: str, date: str, expires: str) -> str:
        message = f"{method}\n{path}\n{date}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, file: FakeFile, method: str = "GET") -> str:
        """A pre-signed URL for `file`, valid for the GitLab's `signed_url_ttl` seconds.

        As in S3 (signature version 4) the signature covers the method: a URL signed for GET
        refuses a HEAD, which is why GitLab redirects a HEAD to a URL signed for HEAD.
        """
        path = f"/packages/{file.sha256}/{file.filename}"
        date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        expires = str(self._gitlab.signed_url_ttl)
        query = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Date": date,
            "X-Amz-Expires": expires,
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": self._signature(method, path, date, expires),
        }
        return f"{self.server_url}{quote(path)}?{urlencode(query)}"

    async def _object(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            return _s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
            )
        date = request.query.get("X-Amz-Date", "")
        expires = request.query.get("X-Amz-Expires", "")
        expected = self._signature(request.method, request.path, date, expires)
        if not hmac.compare_digest(request.query.get("X-Amz-Signature", ""), expected):
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature does not match.")
        # The signature covers date and expiry, so both parse; a ttl of 0 is born expired.
        signed_at = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
        if time.time() >= signed_at + int(expires):
            return _s3_error(403, "AccessDenied", "Request has expired")
        file = self._gitlab.find_file(
            request.match_info["sha256"], request.match_info["filename"], None
        )
        if file is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return await _send_file(request, file, self._gitlab)


def _s3_error(status: int, code: str, message: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    )
    return web.Response(status=status, text=body, content_type="application/xml")


class FakeGitLab(_Server):
    """GitLab's PyPI registry API as /work/shared/GITLAB_PYPI.md describes it."""

    def __init__(
        self,
        *,
        token: str = "glpat-secret-token",  # noqa: S107 - a fake's token, meant to be seen
        external_url: str | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.external_url = external_url.rstrip("/") if external_url else None
        # Access: `token` reads and writes everything; these narrow or widen that per test.
        self.tokens: dict[str, set[int] | None] = {}  # extra token -> readable project ids
        self.job_tokens: set[str] = set()  # valid only with username gitlab-ci-token
        # Deploy tokens read every project on the PyPI routes; the REST API refuses them.
        self.deploy_tokens: set[str] = set()
        self.read_only_tokens: set[str] = set()
        self.revoked: set[str] = set()
        # Behaviour switches.
        self.object_storage = False
        self.ignore_range = False
        self.signed_url_ttl = 300
        self.forwarding = True
        self.public_index_url = "https://pypi.org"
        # EE Dependency Firewall: project package pages of unknown names answer 200 with the
        # public page, its links rewritten to the `forward/` route; these filenames it blocks.
        self.firewall = False
        self.firewall_blocked: set[str] = set()
        # GitLab moved under MOVED_ROOT: the old paths answer a 301 to the new ones.
        self.moved = False
        self.max_upload_size: int | None = None
        # GitLab 18.10+'s `pypi_pep_691_json` feature flag (off by default): PEP 691 JSON pages
        # to a client that prefers them, with only filename, url, hashes and requires-python.
        self.pep691_json = False
        # Names under a package protection rule: uploads of them are 403 for this fake's users.
        self.protected: set[str] = set()
        # Faults. down/delay/fail_status hit GitLab only; the file faults also hit object storage.
        self.down = False
        self.delay = 0.0
        # While set, every request waits for this event: GitLab slow for exactly as long as a
        # test needs, not for a delay guessed long enough.
        self.hold: asyncio.Event | None = None
        self.fail_status: int | None = None
        # The REST API's status for every request while set (its own outage); the registry
        # routes still answer.
        self.api_fail_status: int | None = None
        # Seconds the REST API takes to answer (a slow one); the registry routes do not wait.
        self.api_delay = 0.0
        # The X-Total-Pages every REST list claims while set: an answer that lies about its size.
        self.api_claimed_pages: int | None = None
        # While set, a version's list of files never ends (X-Next-Page on every page).
        self.api_endless_files = False
        self.retry_after: int | str = 1  # sent as is: tests give odd values too
        # Per-credential faults: token (the Basic password or token header) -> the status GitLab
        # answers its every request with; a 429 is a per-user throttle, as GitLab's are.
        self.token_faults: dict[str, int] = {}
        self.file_chunk_delay = 0.0
        self.file_chunk_size = 65536
        self.truncate_files = False
        self.drop_files = False
        self.corrupt_files = False
        # No Content-Length, chunked instead (as behind some proxies and object stores).
        self.chunked_files = False
        self.object_store = FakeObjectStorage(self)
        self._groups: dict[int, _Group] = {}
        self._projects: dict[int, _Project] = {}
        self._packages: list[_Package] = []  # in creation order, which is GitLab's page order

    @property
    def url(self) -> str:
        """The external URL: what absolute links on pages start with."""
        return (self.external_url or self.server_url) + (MOVED_ROOT if self.moved else "")

    async def start(self) -> None:
        await self.object_store.start()
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.object_store.stop()

    # Test setup.

    def add_group(self, group_id: int, full_path: str, *, name: str | None = None) -> None:
        self._groups[group_id] = _Group(group_id, full_path, name or full_path.rsplit("/", 1)[-1])

    def add_project(
        self,
        project_id: int,
        full_path: str,
        *,
        group_id: int | None = None,
        public: bool = False,
        name: str | None = None,
    ) -> None:
        """A project; it belongs to every group whose full path prefixes its own."""
        if group_id is not None and not full_path.startswith(
            self._groups[group_id].full_path + "/"
        ):
            raise ValueError(f"{full_path!r} is not under group {group_id}")
        project_name = name or full_path.rsplit("/", 1)[-1]
        self._projects[project_id] = _Project(project_id, full_path, project_name, public)

    def add_file(
        self,
        project_id: int,
        name: str,
        version: str,
        filename: str,
        content: bytes,
        *,
        requires_python: str = "",
        sha256: str | None = None,
    ) -> FakeFile:
        """Store a file as an upload would; `sha256` lets a test store a lying digest."""
        if project_id not in self._projects:
            raise ValueError(f"no project {project_id}")
        digest = sha256 or hashlib.sha256(content).hexdigest()
        return self._store(project_id, name, version, filename, content, requires_python, digest)

    def add_wheel(
        self, project_id: int, name: str, version: str, **options: Unpack[WheelOptions]
    ) -> FakeFile:
        filename, content = make_wheel(name, version, **options)
        return self.add_file(
            project_id, name, version, filename, content, requires_python=_requires_python(options)
        )

    def add_many_files(
        self, project_id: int, name: str, version: str, count: int
    ) -> list[FakeFile]:
        """`count` tiny wheels of one version, in linear time: a page with thousands of links."""
        package = _Package(project_id, name, version, "")
        for build in range(count):
            content = f"{name} {version} {build}".encode()
            filename = f"{name.replace('-', '_')}-{version}-{build}-py3-none-any.whl"
            digest = hashlib.sha256(content).hexdigest()
            package.files.append(FakeFile(filename, content, digest, "", name, version, project_id))
        self._packages.append(package)
        return package.files

    def add_sdist(
        self, project_id: int, name: str, version: str, **options: Unpack[SdistOptions]
    ) -> FakeFile:
        filename, content = make_sdist(name, version, **options)
        return self.add_file(
            project_id, name, version, filename, content, requires_python=_requires_python(options)
        )

    def revoke(self, token: str) -> None:
        """From now on GitLab answers 401 to this token, even on public projects."""
        self.tokens.pop(token, None)
        self.job_tokens.discard(token)
        self.revoked.add(token)

    def find_file(
        self, sha256: str, filename: str, project_ids: set[int] | None
    ) -> FakeFile | None:
        """The file with this exact name and stored digest, in `project_ids` (None: anywhere)."""
        for package in self._packages:
            if project_ids is not None and package.project_id not in project_ids:
                continue
            for file in package.files:
                if file.filename == filename and file.sha256 == sha256:
                    return file
        return None

    def _store(
        self,
        project_id: int,
        name: str,
        version: str,
        filename: str,
        content: bytes,
        requires_python: str,
        sha256: str,
    ) -> FakeFile:
        # GitLab finds the package by the exact raw name, not the normalized one.
        package = next(
            (
                p
                for p in self._packages
                if (p.project_id, p.name, p.version) == (project_id, name, version)
            ),
            None,
        )
        if package is None:
            package = _Package(project_id, name, version, requires_python)
            self._packages.append(package)
        if any(f.filename == filename for f in package.files):
            raise Reply(
                400, "400 Bad request - Validation failed: File name has already been taken"
            )
        if requires_python:
            package.requires_python = requires_python
        file = FakeFile(filename, content, sha256, requires_python, name, version, project_id)
        package.files.append(file)
        return file

    # Access control, as GitLab's packages API helpers decide it.

    def _caller(self, request: web.Request) -> _Caller | None:
        """Who is asking; None is anonymous, which is also what an unknown token counts as."""
        credentials = _credentials(request)
        if credentials is None:
            return None
        username, secret = credentials
        if secret in self.revoked:
            raise _revoked()
        can_write = secret not in self.read_only_tokens
        if username == "gitlab-ci-token":
            # Basic gitlab-ci-token:<job token> is the one form a job token takes here, and a
            # bad one is refused outright, even where anonymous is welcome.
            if secret not in self.job_tokens:
                raise _unauthorized()
            return _Caller(None, can_write)
        if secret == self.token or secret in self.deploy_tokens:
            return _Caller(None, can_write)
        if secret in self.tokens:
            allowed = self.tokens[secret]
            return _Caller(None if allowed is None else frozenset(allowed), can_write)
        return None

    def _rest_caller(self, request: web.Request) -> _Caller | None:
        """Who calls the REST API: a `Private-Token` header or Bearer token, else anonymous.

        Basic auth and deploy tokens (which only the package registry routes take) are 401.
        """
        self._rest_fault()
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic" or "Deploy-Token" in request.headers:
            raise Reply(401, "401 Unauthorized")
        secret = value.strip() if scheme.lower() == "bearer" else ""
        secret = secret or request.headers.get("Private-Token", "")
        if not secret:
            return None
        if secret in self.revoked:
            raise _revoked()
        if secret in self.deploy_tokens:
            raise Reply(401, "401 Unauthorized")
        if secret == self.token:
            return _Caller(None, secret not in self.read_only_tokens)
        if secret in self.tokens:
            allowed = self.tokens[secret]
            readable = None if allowed is None else frozenset(allowed)
            return _Caller(readable, secret not in self.read_only_tokens)
        raise Reply(401, "401 Unauthorized")

    async def _rest_delay(self) -> None:
        if self.api_delay:
            await asyncio.sleep(self.api_delay)

    def _rest_fault(self) -> None:
        if self.api_fail_status is not None:
            status = self.api_fail_status
            raise Reply(status, f"{status} {HTTPStatus(status).phrase}")

    def _rest_project(self, request: web.Request) -> _Project:
        """The project the REST caller may read; the REST API hides others as 404."""
        caller = self._rest_caller(request)
        project = _by_id_or_path(self._projects, request.match_info["id"])
        if project is None or not self._can_read(caller, project):
            raise Reply(404, "404 Project Not Found")
        return project

    @staticmethod
    def _is_member(caller: _Caller | None, project: _Project) -> bool:
        return caller is not None and (caller.projects is None or project.id in caller.projects)

    def _can_read(self, caller: _Caller | None, project: _Project) -> bool:
        return project.public or self._is_member(caller, project)

    def _project(self, request: web.Request) -> tuple[_Project, _Caller | None]:
        """The readable project; 401 for anonymous and 404 for others, so nothing leaks.

        An id GitLab does not know is 404 for everyone, anonymous included.
        """
        caller = self._caller(request)
        project = _by_id_or_path(self._projects, request.match_info["id"])
        if project is None:
            raise Reply(404, "404 Project Not Found")
        if not self._can_read(caller, project):
            raise _unauthorized() if caller is None else Reply(404, "404 Not Found")
        return project, caller

    def _group(self, request: web.Request) -> tuple[_Group, list[_Project]]:
        """The group and the projects of its subtree the caller can read."""
        caller = self._caller(request)
        group = _by_id_or_path(self._groups, request.match_info["id"])
        projects = [
            p
            for p in self._projects.values()
            if group is not None
            and p.full_path.startswith(group.full_path + "/")
            and self._can_read(caller, p)
        ]
        sees_group = caller is not None and caller.projects is None
        if group is None:
            raise Reply(404, "404 Group Not Found")
        if not (projects or sees_group):
            raise _unauthorized() if caller is None else Reply(404, "404 Not Found")
        return group, projects

    # Faults, then routes.

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hold is not None:
            await self.hold.wait()
        if self.down:
            if request.transport is not None:
                request.transport.abort()
            return None
        status = self.fail_status
        if status is None and self.token_faults:
            credentials = _credentials(request)
            status = self.token_faults.get(credentials[1]) if credentials else None
        if status == 429:
            # Rack::Attack sends whole seconds; odd Retry-After values are for the 503 below.
            return rate_limited(int(self.retry_after))
        if status is not None:
            headers = {"Retry-After": str(self.retry_after)} if status == 503 else {}
            raise Reply(status, f"{status} {HTTPStatus(status).phrase}", headers)
        under_root = request.path.startswith(MOVED_ROOT + "/")
        if self.moved and not under_root:
            # The front proxy of a GitLab moved under a relative root sends old paths there.
            return web.Response(status=301, headers={"Location": MOVED_ROOT + request.path_qs})
        if under_root and not self.moved:
            raise Reply(404, "404 Not Found")
        return await handler(request)

    def _routes(self) -> list[web.RouteDef]:
        # Twice: at the root, and under the relative root a test may move GitLab to.
        return self._api_routes("", "") + self._api_routes(MOVED_ROOT, ".moved")

    def _api_routes(self, root: str, variant: str) -> list[web.RouteDef]:
        project = root + "/api/v4/projects/{id}/packages/pypi"
        group = root + "/api/v4/groups/{id}/-/packages/pypi"
        routes = [
            web.get(project + "/simple{slash:/?}", self._project_index, name="index.project"),
            web.get(project + "/simple/{name}{slash:/?}", self._project_page, name="page.project"),
            web.get(
                project + "/files/{sha256}/{filename}", self._project_file, name="file.project"
            ),
            web.get(project + "/forward/{name}/{host}/{path:.+}", self._forward, name="firewall"),
            web.post(project, self._upload, name="upload"),
            web.get(group + "/simple{slash:/?}", self._group_index, name="index.group"),
            web.get(group + "/simple/{name}{slash:/?}", self._group_page, name="page.group"),
            web.get(group + "/files/{sha256}/{filename}", self._group_file, name="file.group"),
            # The REST Packages API, beside the registry routes.
            web.get(
                root + "/api/v4/projects/{id}/packages", self._project_packages, name="api.list"
            ),
            web.get(root + "/api/v4/groups/{id}/packages", self._group_packages, name="api.group"),
            web.get(
                root + "/api/v4/projects/{id}/packages/{package_id:\\d+}/package_files",
                self._package_files,
                name="api.files",
            ),
        ]
        return [
            web.RouteDef(r.method, r.path, r.handler, {"name": r.kwargs["name"] + variant})
            for r in routes
        ]

    def _index(self, title: str, base: str, project_ids: set[int]) -> web.Response:
        # One anchor per package version, so a name repeats once per version.
        return _gitlab_page(
            title,
            (
                _gitlab_anchor(f"{base}/simple/{p.normalized}", p.requires_python, p.name)
                for p in self._packages
                if p.project_id in project_ids
            ),
        )

    def _package_page(self, request: web.Request, base: str, project_ids: set[int]) -> web.Response:
        requested = request.match_info["name"]
        # GitLab lowercases the request and nothing else, so `my.pkg` misses `my-pkg`.
        packages = [
            p
            for p in self._packages
            if p.project_id in project_ids and p.normalized == requested.lower()
        ]
        if not packages:
            if self.forwarding:
                location = f"{self.public_index_url.rstrip('/')}/simple/{requested}/"
                return web.Response(status=302, headers={"Location": location})
            raise Reply(404, "404 Package Not Found")
        if self.pep691_json and _prefers_json(request.headers.get("Accept", "")):
            return _gitlab_json_page(
                packages[0].name,
                [
                    (
                        f"{base}/files/{f.sha256}/{f.filename}",
                        f,
                        f.requires_python or p.requires_python,
                    )
                    for p in packages
                    for f in p.files
                ],
            )
        return _gitlab_page(
            packages[0].name,
            (
                # Newest GitLab keeps requires_python per file, falling back to the version's.
                # A file stored without a digest (NULL) gets an empty sha256 segment [inferred].
                _gitlab_anchor(
                    f"{base}/files/{f.sha256}/{f.filename}#sha256={f.sha256}",
                    f.requires_python or p.requires_python,
                    f.filename,
                )
                for p in packages
                for f in p.files
            ),
        )

    async def _firewall_page(self, request: web.Request, base: str) -> web.StreamResponse:
        """The EE Dependency Firewall's 200: the public page GitLab fetched itself, each
        absolute link rewritten to the project's `forward/<name>/<host>/<path>` route."""
        requested = request.match_info["name"].lower()
        url = f"{self.public_index_url.rstrip('/')}/simple/{requested}/"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            if resp.status != 200:
                raise Reply(404, "404 Package Not Found")
            public = await resp.text()
        rewritten = _PUBLIC_LINK.sub(
            lambda m: f'href="{base}/forward/{requested}/{m["host"]}/{m["path"]}"', public
        )
        return web.Response(
            text=rewritten,
            content_type="text/html",
            headers={"Content-Disposition": "attachment", "Vary": "Accept"},
        )

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        """The firewall's check of one public file: 302 to the public file host, or 403."""
        self._project(request)
        path = request.match_info["path"]
        filename = path.rpartition("/")[2].removesuffix(".metadata")
        if filename in self.firewall_blocked:
            raise Reply(403, "Dependency Firewall policy violation", key="error")
        scheme = self.public_index_url.partition("://")[0]
        location = f"{scheme}://{request.match_info['host']}/{path}"
        return web.Response(status=302, headers={"Location": location})

    async def _file(self, request: web.Request, project_ids: set[int]) -> web.StreamResponse:
        file = self.find_file(
            request.match_info["sha256"], request.match_info["filename"], project_ids
        )
        if file is None:
            raise Reply(404, "404 Not Found")
        if self.object_storage:
            location = self.object_store.signed_url(file, request.method)
            return web.Response(status=302, headers={"Location": location})
        return await _send_file(request, file, self)

    def _project_base(self, project: _Project) -> str:
        return f"{self.url}/api/v4/projects/{project.id}/packages/pypi"

    def _group_base(self, group: _Group) -> str:
        return f"{self.url}/api/v4/groups/{group.id}/-/packages/pypi"

    async def _project_index(self, request: web.Request) -> web.StreamResponse:
        project, _ = self._project(request)
        return self._index(project.name, self._project_base(project), {project.id})

    async def _project_page(self, request: web.Request) -> web.StreamResponse:
        project, _ = self._project(request)
        base = self._project_base(project)
        if self.firewall and not any(
            p.project_id == project.id and p.normalized == request.match_info["name"].lower()
            for p in self._packages
        ):
            return await self._firewall_page(request, base)
        return self._package_page(request, base, {project.id})

    async def _project_file(self, request: web.Request) -> web.StreamResponse:
        project, _ = self._project(request)
        return await self._file(request, {project.id})

    async def _group_index(self, request: web.Request) -> web.StreamResponse:
        group, projects = self._group(request)
        return self._index(group.name, self._group_base(group), {p.id for p in projects})

    async def _group_page(self, request: web.Request) -> web.StreamResponse:
        group, projects = self._group(request)
        return self._package_page(request, self._group_base(group), {p.id for p in projects})

    async def _group_file(self, request: web.Request) -> web.StreamResponse:
        _, projects = self._group(request)
        return await self._file(request, {p.id for p in projects})

    def _package_rows(self, request: web.Request, project_ids: set[int]) -> list[_Package]:
        """The Packages API's rows: `package_name` matches a substring in any case (GitLab's
        fuzzy search), `order_by` created_at (default), name or version, `sort` asc or desc."""
        wanted_type = request.query.get("package_type", "pypi")
        fragment = request.query.get("package_name", "").lower()
        packages = [
            p
            for p in self._packages
            if p.project_id in project_ids and wanted_type == "pypi" and fragment in p.name.lower()
        ]
        order_by = request.query.get("order_by", "created_at")
        orders: dict[str, Callable[[_Package], tuple[object, int]]] = {
            "created_at": lambda p: (p.created_at, p.id),
            "name": lambda p: (p.name, p.id),
            "version": lambda p: (p.version, p.id),
        }
        if order_by not in orders:
            raise Reply(400, "order_by does not have a valid value", key="error")
        packages.sort(key=orders[order_by], reverse=request.query.get("sort") == "desc")
        return packages

    def _package_row(self, p: _Package) -> dict[str, object]:
        return {
            "id": p.id,
            "name": p.name,
            "version": p.version,
            "package_type": "pypi",
            "status": "default",
            "created_at": _created_at(p.created_at),
            "project_id": p.project_id,
            "project_path": self._projects[p.project_id].full_path,
            "tags": [],
        }

    async def _project_packages(self, request: web.Request) -> web.StreamResponse:
        await self._rest_delay()
        project = self._rest_project(request)
        return _paginated(
            request,
            self._package_rows(request, {project.id}),
            self._package_row,
            self.api_claimed_pages,
        )

    async def _group_packages(self, request: web.Request) -> web.StreamResponse:
        """A group's packages in the projects of its subtree the caller may read."""
        await self._rest_delay()
        caller = self._rest_caller(request)
        group = _by_id_or_path(self._groups, request.match_info["id"])
        if group is None:
            raise Reply(404, "404 Group Not Found")
        readable = {
            p.id
            for p in self._projects.values()
            if p.full_path.startswith(group.full_path + "/") and self._can_read(caller, p)
        }
        if not readable and not (caller is not None and caller.projects is None):
            raise Reply(404, "404 Group Not Found")
        return _paginated(
            request,
            self._package_rows(request, readable),
            self._package_row,
            self.api_claimed_pages,
        )

    async def _package_files(self, request: web.Request) -> web.StreamResponse:
        await self._rest_delay()
        project = self._rest_project(request)
        package_id = int(request.match_info["package_id"])
        package = next(
            (p for p in self._packages if (p.id, p.project_id) == (package_id, project.id)), None
        )
        if package is None:
            raise Reply(404, "404 Not found")

        def row(f: FakeFile) -> dict[str, object]:
            return {
                "id": f.id,
                "package_id": package.id,
                "created_at": _created_at(f.uploaded_at),
                "file_name": f.filename,
                "size": len(f.content),
                "file_md5": None,
                "file_sha1": None,
                # A file uploaded without a digest has none here either.
                "file_sha256": f.sha256 or None,
                "pipelines": [],
            }

        return _paginated(
            request,
            sorted(package.files, key=lambda f: f.id),
            row,
            self.api_claimed_pages,
            endless=self.api_endless_files,
        )

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        project, caller = self._project(request)
        if caller is None:
            raise _unauthorized()
        if not caller.can_write:
            raise _insufficient_scope()
        if not self._is_member(caller, project):
            raise Reply(403, "403 Forbidden")
        fields, filename, content, size = await _read_upload(request, self.max_upload_size)
        missing = [
            key
            for key, value in [
                ("content", filename),
                ("name", fields.get("name")),
                ("version", fields.get("version")),
            ]
            if not value
        ]
        if missing:
            # Grape's own parameter check, which answers under `error`.
            raise Reply(400, ", ".join(f"{m} is missing" for m in missing), key="error")
        if self.max_upload_size is not None and size > self.max_upload_size:
            raise Reply(400, "File is too large")
        name, version = fields["name"], fields["version"]
        if not _VALID_NAME.match(name):
            raise Reply(400, "Validation failed: Name is invalid")
        if canonicalize_name(name) in self.protected:
            raise Reply(403, "403 Forbidden - Package protected.")
        try:
            Version(version)
        except InvalidVersion:
            raise Reply(400, "Validation failed: Version is invalid") from None
        # GitLab stores the digest the uploader claims and never hashes the file itself:
        # without one the digest is NULL (""), and no download by hash ever finds the file.
        sha256 = fields.get("sha256_digest", "")
        requires_python = fields.get("requires_python", "")
        self._store(project.id, name, version, filename, content, requires_python, sha256)
        return _json(201, "201 Created")


def _credentials(request: web.Request) -> tuple[str, str] | None:
    """(username, secret) from Basic or Bearer auth or GitLab's token headers.

    The `Job-Token` header is not read on the PyPI routes: such a caller is anonymous.
    """
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return username, password
    if scheme.lower() == "bearer" and value.strip():
        return "", value.strip()
    for header in ("Private-Token", "Deploy-Token"):
        if secret := request.headers.get(header):
            return "", secret
    return None


async def _read_upload(
    request: web.Request, limit: int | None
) -> tuple[dict[str, str], str, bytes, int]:
    """Form fields, filename, content (cut at the size limit) and the content's full size."""
    fields: dict[str, str] = {}
    filename = ""
    content = bytearray()
    size = 0
    if not request.content_type.startswith("multipart/"):
        return fields, filename, bytes(content), size
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue  # a nested multipart: no uploader sends one
        if part.name != "content":
            fields[part.name or ""] = await part.text()
            continue
        filename = part.filename or ""
        while chunk := await part.read_chunk(65536):
            size += len(chunk)
            # Past the limit keep reading but not storing, so the client gets to read our 400.
            if limit is None or size <= limit:
                content += chunk
    return fields, filename, bytes(content), size


JSON_PAGE = "application/vnd.pypi.simple.v1+json"


def _prefers_json(accept: str) -> bool:
    """Whether an Accept header rates PEP 691 JSON above every HTML type, as PyPI decides."""
    quality: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        quality[media.lower()] = max(q, quality.get(media.lower(), 0.0))
    html = max(
        quality.get("text/html", 0.0), quality.get("application/vnd.pypi.simple.v1+html", 0.0)
    )
    return quality.get(JSON_PAGE, 0.0) > html


class FakePublicIndex(_Server):
    """The public PyPI index's shape: where GitLab's forwarding sends pip, and never a token."""

    def __init__(self) -> None:
        super().__init__()
        self._files: list[FakeFile] = []
        # PEP 658/714, as PyPI does: each wheel's METADATA beside it, its hash on the page.
        self.offers_metadata = True
        # PEP 691 JSON to a client that prefers it, as PyPI does; False: HTML only.
        self.offers_json = True
        # Fault: sent, as a JSON page, instead of the real one.
        self.json_body: bytes | None = None

    @property
    def files_url(self) -> str:
        """Where file links point; the same server here, a separate host on the real PyPI."""
        return self.server_url

    def add_file(
        self, name: str, version: str, filename: str, content: bytes, *, requires_python: str = ""
    ) -> FakeFile:
        sha256 = hashlib.sha256(content).hexdigest()
        file = FakeFile(filename, content, sha256, requires_python, name, version)
        self._files.append(file)
        return file

    def add_wheel(
        self,
        name: str,
        version: str,
        *,
        upload_time: str | None = None,
        **options: Unpack[WheelOptions],
    ) -> FakeFile:
        filename, content = make_wheel(name, version, **options)
        file = self.add_file(
            name, version, filename, content, requires_python=_requires_python(options)
        )
        if upload_time is not None:
            file.uploaded_at = datetime.fromisoformat(upload_time).timestamp()
        return file

    def file_url(self, file: FakeFile) -> str:
        sha = file.sha256
        return f"{self.files_url}/packages/{sha[:2]}/{sha[2:4]}/{sha}/{file.filename}#sha256={sha}"

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.get("/simple/{name}{slash:/?}", self._page, name="page"),
            web.get("/packages/{a}/{b}/{sha256}/{filename}", self._file, name="file"),
        ]

    async def _page(self, request: web.Request) -> web.StreamResponse:
        requested = request.match_info["name"]
        normalized = canonicalize_name(requested)
        # Like PyPI: one canonical URL per project, everything else redirects to it.
        if requested != normalized or not request.match_info["slash"]:
            return web.Response(status=301, headers={"Location": f"/simple/{normalized}/"})
        files = [f for f in self._files if canonicalize_name(f.name) == normalized]
        if not files:
            raise Reply(404, "404 Not Found")
        if self.offers_json and _prefers_json(request.headers.get("Accept", "")):
            return self._json_page(normalized, files)
        anchors = "".join(
            f'    <a href="{self.file_url(f)}"'
            + (f' data-requires-python="{escape(f.requires_python)}"' if f.requires_python else "")
            + self._core_metadata(f)
            + f">{f.filename}</a><br />\n"
            for f in files
        )
        body = (
            "<!DOCTYPE html>\n<html>\n  <head>\n"
            '    <meta name="pypi:repository-version" content="1.0">\n'
            f"    <title>Links for {escape(files[0].name)}</title>\n"
            f"  </head>\n  <body>\n    <h1>Links for {escape(files[0].name)}</h1>\n"
            f"{anchors}  </body>\n</html>\n<!--SERIAL {len(self._files)}-->\n"
        )
        return web.Response(text=body, content_type="text/html")

    def _json_page(self, name: str, files: list[FakeFile]) -> web.Response:
        """PyPI's PEP 691 page: api-version 1.1, with PEP 700's size and upload-time."""
        entries = []
        for f in files:
            entry: dict[str, object] = {
                "filename": f.filename,
                "url": self.file_url(f).partition("#")[0],
                "hashes": {"sha256": f.sha256},
                "requires-python": f.requires_python or None,
                "yanked": False,
                "size": len(f.content),
                "upload-time": _upload_time(f.uploaded_at),
            }
            metadata = self._core_metadata(f)
            if metadata:
                digest = {"sha256": hashlib.sha256(wheel_metadata(f.content)).hexdigest()}
                entry["core-metadata"] = entry["dist-info-metadata"] = digest
            else:
                entry["core-metadata"] = entry["dist-info-metadata"] = False
            entries.append(entry)
        versions = sorted({f.version for f in files}, key=Version)
        page = {
            "meta": {"api-version": "1.1", "_last-serial": len(self._files)},
            "name": name,
            "versions": versions,
            "files": entries,
        }
        # PyPI names no charset: JSON is UTF-8 by definition.
        return web.Response(
            body=json.dumps(page).encode() if self.json_body is None else self.json_body,
            headers={"Content-Type": JSON_PAGE, "Vary": "Accept, Accept-Encoding"},
        )

    def _core_metadata(self, file: FakeFile) -> str:
        if not self.offers_metadata or not file.filename.endswith(".whl"):
            return ""
        digest = hashlib.sha256(wheel_metadata(file.content)).hexdigest()
        return f' data-core-metadata="sha256={digest}"'

    async def _file(self, request: web.Request) -> web.StreamResponse:
        sha256, filename = request.match_info["sha256"], request.match_info["filename"]
        wheel_name = filename.removesuffix(".metadata")
        for file in self._files:
            if (file.sha256, file.filename) != (sha256, wheel_name):
                continue
            if filename == wheel_name:
                body = file.content
            elif self._core_metadata(file):
                body = wheel_metadata(file.content)
            else:
                break
            self.file_bytes_sent += len(body)
            return web.Response(body=body, content_type="application/octet-stream")
        raise Reply(404, "404 Not Found")
