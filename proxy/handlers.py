"""Thin HTTP handlers: validate the request, choose the format, call pages and files."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import hdrs, web

from . import keys
from .errors import BadRequest
from .pages import PageResult
from .scope import Scope
from .simple import Distribution, is_sha256, is_valid_name, normalize, version_of
from .simple_html import render_index_html, render_project_html

MAX_FILENAME_LENGTH = 255
_BAD_FILENAME_RE = re.compile(r"[/\\\x00]|\.\.")

PROJECT_PREFIX = "/api/v4/projects/{id}/packages/pypi"
GROUP_PREFIX = "/api/v4/groups/{id}/-/packages/pypi"


def scope_of(request: web.Request) -> Scope:
    """The scope, with the id exactly as the client encoded it (`grp%2Fproj` stays encoded)."""
    # /api/v4/{projects|groups}/{id}/...: segment 3 is the kind, segment 4 the raw id.
    segments = request.rel_url.raw_path.split("/")
    return Scope.parse(segments[3], segments[4])


def authorization(request: web.Request) -> str | None:
    """The Authorization header that goes upstream for this request."""
    return request.app[keys.UPSTREAM].authorization_for(request.headers.get(hdrs.AUTHORIZATION))


def _base(request: web.Request, scope: Scope) -> str | None:
    """The absolute API prefix from server.public_url, or None for relative links."""
    public_url = request.app[keys.SETTINGS].server.public_url.rstrip("/")
    return f"{public_url}/api/v4/{scope.api_prefix}" if public_url else None


def _file_path(dist: Distribution) -> str:
    return f"files/{dist.sha256}/{quote(dist.filename, safe='')}"


def _page_response(request: web.Request, result: PageResult, body: str) -> web.Response:
    pages = request.app[keys.PAGES]
    headers = {
        "X-Cache": result.state,
        hdrs.CACHE_CONTROL: f"max-age={pages.freshness_left(result.page)}",
    }
    if result.state == "STALE":
        headers["Warning"] = '110 - "Response is Stale"'
    return web.Response(text=body, content_type="text/html", charset="utf-8", headers=headers)


async def simple_index(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    result = await request.app[keys.PAGES].index(scope, authorization(request))
    base = _base(request, scope)
    on_slash = request.path.endswith("/")

    def project_url(name: str) -> str:
        if base is not None:
            return f"{base}/simple/{name}/"
        return f"{name}/" if on_slash else f"simple/{name}/"

    return _page_response(request, result, render_index_html(result.index, project_url))


async def simple_project(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    name = request.match_info["name"]
    if not is_valid_name(name):
        raise BadRequest("malformed package name")
    normalized = normalize(name)
    if name != normalized:
        raise web.HTTPMovedPermanently(_renamed(request, normalized))
    result = await request.app[keys.PAGES].project(scope, normalized, authorization(request))
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
    return _page_response(request, result, render_project_html(project, file_url))


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
    source = upstream.url_for(scope, f"files/{sha256}/{quote(filename, safe='')}")
    return await request.app[keys.FILES].respond(
        request, sha256, filename, source, authorization(request)
    )


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.StreamResponse:
    store = request.app[keys.STORE]
    problems = []
    if not await store.ping():
        problems.append("sqlite does not answer")
    # An unwritable or full cache still serves, as a pass-through: degraded, not unready.
    health = request.app[keys.FILES].health
    if health.writable() and (error := request.app[keys.BLOBS].write_problem()) is not None:
        health.failed(error)
    degraded = [health.problem] if health.problem else []
    status = 503 if problems else 200
    offline = request.app[keys.UPSTREAM].offline
    return web.json_response(
        {"ready": not problems, "offline": offline, "problems": problems, "degraded": degraded},
        status=status,
    )


def add_routes(app: web.Application) -> None:
    for prefix in (PROJECT_PREFIX, GROUP_PREFIX):
        app.router.add_get(f"{prefix}/simple", simple_index)
        app.router.add_get(f"{prefix}/simple/", simple_index)
        app.router.add_get(f"{prefix}/simple/{{name}}", simple_project)
        app.router.add_get(f"{prefix}/simple/{{name}}/", simple_project)
        app.router.add_get(f"{prefix}/files/{{sha256}}/{{filename}}", file_download)
    app.router.add_get("/-/health", health)
    app.router.add_get("/-/ready", ready)
