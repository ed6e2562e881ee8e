"""Thin HTTP handlers: validate the request, choose the format, call pages and files."""

from __future__ import annotations

import re
import time
from urllib.parse import quote

from aiohttp import hdrs, web

from . import keys, uploads
from .auth import Caller
from .errors import BadRequest
from .pages import PageResult
from .scope import Scope
from .simple import Distribution, is_sha256, is_valid_name, normalize, version_of
from .simple_html import render_index_html, render_project_html
from .status import render_status

MAX_FILENAME_LENGTH = 255
_BAD_FILENAME_RE = re.compile(r"[/\\\x00]|\.\.")

PROJECT_PREFIX = "/api/v4/projects/{id}/packages/pypi"
GROUP_PREFIX = "/api/v4/groups/{id}/-/packages/pypi"
RECENT_OK_SECONDS = 10.0


def scope_of(request: web.Request) -> Scope:
    """The scope, with the id exactly as the client encoded it (`grp%2Fproj` stays encoded)."""
    # /api/v4/{projects|groups}/{id}/...: segment 3 is the kind, segment 4 the raw id.
    segments = request.rel_url.raw_path.split("/")
    return Scope.parse(segments[3], segments[4])


def caller(request: web.Request) -> Caller:
    """Whom this request acts as upstream: the proxy's token or the client's credentials."""
    return request.app[keys.GATE].caller(request.headers)


def _base(request: web.Request, scope: Scope) -> str | None:
    """The absolute API prefix from server.public_url, or None for relative links."""
    public_url = request.app[keys.SETTINGS].server.public_url.rstrip("/")
    return f"{public_url}/api/v4/{scope.api_prefix}" if public_url else None


def _file_path(dist: Distribution) -> str:
    return f"files/{dist.sha256}/{quote(dist.filename, safe='')}"


def _page_response(
    request: web.Request, result: PageResult, body: str, who: Caller
) -> web.Response:
    pages = request.app[keys.PAGES]
    # A page GitLab showed one client's credentials is not for a shared HTTP cache.
    private = "private, " if who.is_client else ""
    request.app[keys.METRICS].page_result(result.state)
    headers = {
        "X-Cache": result.state,
        hdrs.CACHE_CONTROL: f"{private}max-age={pages.freshness_left(result.page)}",
    }
    if result.state == "STALE":
        headers["Warning"] = '110 - "Response is Stale"'
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=headers)


async def simple_index(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    who = caller(request)
    result = await request.app[keys.PAGES].index(scope, who)
    base = _base(request, scope)
    on_slash = request.path.endswith("/")

    def project_url(name: str) -> str:
        if base is not None:
            return f"{base}/simple/{name}/"
        return f"{name}/" if on_slash else f"simple/{name}/"

    return _page_response(request, result, render_index_html(result.index, project_url), who)


async def simple_project(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    name = request.match_info["name"]
    if not is_valid_name(name):
        raise BadRequest("malformed package name")
    normalized = normalize(name)
    if name != normalized:
        raise web.HTTPMovedPermanently(_renamed(request, normalized))
    who = caller(request)
    result = await request.app[keys.PAGES].project(scope, normalized, who)
    request.app[keys.METRICS].package_requested(normalized)
    base = _base(request, scope)
    # Relative to the page's own URL: .../simple/NAME/ is two levels below .../pypi/.
    up = "../../" if request.path.endswith("/") else "../"

    def file_url(dist: Distribution) -> str:
        if base is not None:
            return f"{base}/{_file_path(dist)}"
        return up + _file_path(dist)

    # A file without a sha256 cannot be fetched through the content-addressed files route.
    project = result.project
    servable = tuple(f for f in project.files if f.sha256 and is_sha256(f.sha256))
    if len(servable) != len(project.files):
        project = type(project)(project.name, servable)
    return _page_response(request, result, render_project_html(project, file_url), who)


def _renamed(request: web.Request, normalized: str) -> str:
    """The same URL with the normalized name, path-only so no Host header shapes it."""
    path = request.rel_url.raw_path
    head, sep, _ = path.rstrip("/").rpartition("/simple/")
    location = f"{head}{sep}{quote(normalized)}" + ("/" if path.endswith("/") else "")
    if request.rel_url.raw_query_string:
        location += f"?{request.rel_url.raw_query_string}"
    return location


def _checked_file(request: web.Request) -> tuple[str, str]:
    sha256 = request.match_info["sha256"].lower()
    filename = request.match_info["filename"]
    if not is_sha256(sha256):
        raise BadRequest("malformed sha256: expected 64 hex digits")
    if len(filename) > MAX_FILENAME_LENGTH or _BAD_FILENAME_RE.search(filename):
        raise BadRequest("malformed filename")
    if version_of(filename) is None:
        raise BadRequest("filename is not a wheel or sdist name")
    return sha256, filename


async def file_download(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    sha256, filename = _checked_file(request)
    upstream = request.app[keys.UPSTREAM]
    files = request.app[keys.FILES]
    source = upstream.url_for(scope, f"files/{sha256}/{quote(filename, safe='')}")
    who = caller(request)
    auth = who.authorization
    admission = request.app[keys.GATE].admission(who, scope, sha256, source)
    if files.hit(sha256, filename) is None and not upstream.offline:
        forwarded = await request.app[keys.PAGES].forwarded_source(scope, sha256, filename)
        if forwarded is not None:
            # A public index's file: fetched from there, never with GitLab's credentials, and
            # public, so there is no GitLab decision to wait for.
            source, auth, admission = forwarded, None, None
    return await files.respond(request, sha256, filename, source, auth, admission)


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.StreamResponse:
    store = request.app[keys.STORE]
    problems = []
    if not await store.ping():
        problems.append("sqlite does not answer")
    if not request.app[keys.BLOBS].writable():
        problems.append("cache directory is not writable")
    if not request.app[keys.SETTINGS].cache.offline and not await _upstream_reachable(request):
        problems.append("upstream is unreachable")
    status = 503 if problems else 200
    offline = request.app[keys.UPSTREAM].offline
    return web.json_response(
        {"ready": not problems, "offline": offline, "problems": problems}, status=status
    )


async def _upstream_reachable(request: web.Request) -> bool:
    # Real traffic that GitLab answered moments ago says enough; no need to ask it again.
    last_ok = request.app[keys.METRICS].upstream_last_ok
    if last_ok is not None and time.time() - last_ok < RECENT_OK_SECONDS:
        return True
    return await request.app[keys.UPSTREAM].reachable()


async def metrics(request: web.Request) -> web.StreamResponse:
    return request.app[keys.METRICS].render()


async def status(request: web.Request) -> web.StreamResponse:
    app = request.app
    page = render_status(app[keys.SETTINGS], app[keys.METRICS])
    return web.Response(text=page, content_type="text/html", charset="utf-8")


def add_routes(app: web.Application) -> None:
    for prefix in (PROJECT_PREFIX, GROUP_PREFIX):
        app.router.add_get(f"{prefix}/simple", simple_index)
        app.router.add_get(f"{prefix}/simple/", simple_index)
        app.router.add_get(f"{prefix}/simple/{{name}}", simple_project)
        app.router.add_get(f"{prefix}/simple/{{name}}/", simple_project)
        app.router.add_get(f"{prefix}/files/{{sha256}}/{{filename}}", file_download)
    for path in (PROJECT_PREFIX, f"{PROJECT_PREFIX}/"):
        app.router.add_post(path, uploads.upload, expect_handler=uploads.expect_continue)
    app.router.add_get("/-/health", health)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/metrics", metrics)
    app.router.add_get("/-/status", status)
