"""Thin HTTP handlers: validate the request, choose the format, call pages and files."""

from __future__ import annotations

import asyncio
import math
import time
from urllib.parse import quote, unquote

import yarl
from aiohttp import hdrs, web

from . import keys, uploads
from .auth import Caller
from .errors import (
    BadRequest,
    NotAcceptable,
    NotFound,
    PolicyRefused,
    Protected,
    RangeNotSatisfiable,
    UpstreamError,
)
from .metadata import SUFFIX as METADATA_SUFFIX
from .negotiate import accepts_gzip, choose, none_match, parse_accept
from .pages import PageResult
from .policy import Verdict, iso
from .rendering import FORMAT_OF, Rendered
from .scope import Scope
from .shared_tier import SharedTier
from .simple import is_distribution_filename, is_sha256, is_valid_name, normalize
from .status import render_home, render_status
from .upstream import PROXY_PAGE_HEADER, message_of

MAX_FILENAME_LENGTH = 255

PROJECT_PREFIX = "/api/v4/projects/{id}/packages/pypi"
GROUP_PREFIX = "/api/v4/groups/{id}/-/packages/pypi"
RECENT_OK_SECONDS = 10.0


def scope_of(request: web.Request) -> Scope:
    """The scope, with the id exactly as the client encoded it (`grp%2Fproj` stays encoded)."""
    return Scope.of_route(request.rel_url.raw_path)


def caller(request: web.Request) -> Caller:
    """Whom this request acts as upstream: the proxy's token or the client's credentials."""
    return request.app[keys.GATE].caller(request.headers)


def _base(request: web.Request, scope: Scope) -> str | None:
    """The absolute API prefix from server.public_url, or None for relative links."""
    public_url = request.app[keys.SETTINGS].server.public_url.rstrip("/")
    return f"{public_url}{scope.api_path}" if public_url else None


# Pages differ by these request headers; shared caches must key on them too.
VARY = "Accept, Accept-Encoding"


def _media_type(request: web.Request) -> str:
    """The representation the client asked for; PyPI's `?format=` stands in for `Accept`."""
    wanted = _format_parameter(request)
    if wanted is not None and not parse_accept(wanted):
        media_type = None
    else:
        media_type = choose(wanted or request.headers.get(hdrs.ACCEPT))
    if media_type is None:
        raise NotAcceptable(
            "none of text/html, application/vnd.pypi.simple.v1+html or "
            "application/vnd.pypi.simple.v1+json is acceptable to the client",
            headers={hdrs.VARY: VARY},
        )
    return media_type


def _format_parameter(request: web.Request) -> str | None:
    # Read raw: people write `?format=application/vnd.pypi.simple.v1+json` by hand, and form
    # decoding would turn that `+` into a space.
    for pair in request.rel_url.raw_query_string.split("&"):
        key, _, value = pair.partition("=")
        if key == "format" and value:
            return unquote(value)
    return None


def _page_response(
    request: web.Request, result: PageResult, media_type: str, rendered: Rendered, who: Caller
) -> web.Response:
    pages = request.app[keys.PAGES]
    gzipped = accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING))
    etag = rendered.etag(media_type, gzipped)
    # A page GitLab showed one client's credentials is not for a shared HTTP cache.
    private = "private, " if who.is_client else ""
    request.app[keys.METRICS].page_result(result.state)
    # A stale copy is fresh for no one: a proxy in front sees that, and asks again soon.
    max_age = 0 if result.state == "STALE" else pages.freshness_left(result.page)
    if rendered.until != math.inf:
        # A hidden file shows from then on: no cache may keep the page past that.
        max_age = min(max_age, max(0, math.ceil(rendered.until - time.time())))
    headers = {
        PROXY_PAGE_HEADER: "1",
        "X-Cache": result.state,
        hdrs.CACHE_CONTROL: f"{private}max-age={max_age}",
        hdrs.VARY: VARY,
        hdrs.ETAG: etag,
    }
    if result.state == "STALE":
        headers[hdrs.WARNING] = '110 - "Response is Stale"'
        # Rounded up: a proxy in front must never think it newer than a copy it holds.
        headers[hdrs.AGE] = str(max(0, math.ceil(time.time() - result.page.fetched_at)))
    if none_match(request.headers.get(hdrs.IF_NONE_MATCH), etag):
        return web.Response(status=304, headers=headers)
    # JSON is UTF-8 by definition (RFC 8259); HTML says so in the header.
    headers[hdrs.CONTENT_TYPE] = (
        media_type if FORMAT_OF[media_type] == "json" else f"{media_type}; charset=utf-8"
    )
    if gzipped:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
    return web.Response(body=rendered.gzipped if gzipped else rendered.body, headers=headers)


async def simple_index(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    media_type = _media_type(request)
    who = caller(request)
    result = await request.app[keys.PAGES].index(scope, who)
    base = _base(request, scope)
    if base is not None:
        prefix = f"{base}/simple/"
    else:
        prefix = "" if request.path.endswith("/") else "simple/"
    rendered = await request.app[keys.RENDERER].index(
        result.key, result.index, result.page.fetched_at, FORMAT_OF[media_type], prefix
    )
    return _page_response(request, result, media_type, rendered, who)


async def simple_project(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    name = request.match_info["name"]
    if not is_valid_name(name):
        raise BadRequest("malformed package name")
    normalized = normalize(name)
    if name != normalized:
        raise web.HTTPMovedPermanently(_renamed(request, normalized))
    media_type = _media_type(request)
    who = caller(request)
    try:
        result = await request.app[keys.PAGES].project(scope, normalized, who)
    except Protected:
        request.app[keys.METRICS].policy_blocked("protected", normalized)
        raise
    request.app[keys.METRICS].package_requested(normalized)
    base = _base(request, scope)
    # Relative to the page's own URL: .../simple/NAME/ is two levels below .../pypi/.
    relative = "../../" if request.path.endswith("/") else "../"
    prefix = f"{base}/" if base is not None else relative
    rendered = await request.app[keys.RENDERER].project(
        result.key, result.project, result.page.fetched_at, FORMAT_OF[media_type], prefix
    )
    return _page_response(request, result, media_type, rendered, who)


def _renamed(request: web.Request, normalized: str) -> str:
    """The same URL with the normalized name, path-only so no Host header shapes it."""
    path = request.rel_url.raw_path
    head, sep, _ = path.rstrip("/").rpartition("/simple/")
    location = f"{head}{sep}{quote(normalized)}" + ("/" if path.endswith("/") else "")
    if request.rel_url.raw_query_string:
        location += f"?{request.rel_url.raw_query_string}"
    return location


def _checked_file(request: web.Request) -> tuple[str, str, bool]:
    """(sha256, the distribution's filename, whether its PEP 658 `.metadata` is asked for)."""
    sha256 = request.match_info["sha256"].lower()
    filename = request.match_info["filename"]
    if not is_sha256(sha256):
        raise BadRequest("malformed sha256: expected 64 hex digits")
    if len(filename) > MAX_FILENAME_LENGTH:
        raise BadRequest("malformed filename: too long")
    wants_metadata = filename.endswith(METADATA_SUFFIX)
    filename = filename.removesuffix(METADATA_SUFFIX)
    # Its characters too: no slash, backslash or NUL can reach a path or an upstream URL.
    if not is_distribution_filename(filename):
        raise BadRequest("malformed filename: not a wheel or sdist name")
    try:
        # The file paths read it deep down, where aiohttp's ValueError would be a 500.
        _ = request.http_range
    except ValueError as e:
        raise RangeNotSatisfiable(f"malformed Range header: {e}; send one bytes=A-B") from None
    return sha256, filename, wants_metadata


async def file_download(request: web.Request) -> web.StreamResponse:
    scope = scope_of(request)
    sha256, filename, wants_metadata = _checked_file(request)
    upstream = request.app[keys.UPSTREAM]
    files = request.app[keys.FILES]
    # For `.metadata` too, the sha256 in the path is the wheel's own (PEP 658 URLs).
    source = upstream.url_for(scope, f"files/{sha256}/{quote(filename, safe='')}")
    who = caller(request)
    auth = who.authorization
    gate = request.app[keys.GATE]
    gate.refuse_if_refused(who, scope)
    pages = request.app[keys.PAGES]
    await _apply_policy(request, scope, sha256, filename)
    admission = gate.admission(who, scope, sha256, source)
    forwarded = None
    if files.hit(sha256, filename) is None and not upstream.offline:
        forwarded = await pages.forwarded_source(scope, sha256, filename)
        if forwarded is not None and upstream.is_upstream_host(forwarded):
            # GitLab's Dependency Firewall route: it checks the file, then redirects to the
            # public host (followed without credentials); GitLab judges each client there.
            if request.app[keys.SETTINGS].upstream.forwarding == "redirect":
                return await _firewall_redirect(request, forwarded, wants_metadata, auth)
            source, admission = forwarded, gate.admission(who, scope, sha256, forwarded)
        elif forwarded is not None:
            # A public index's file: fetched from there, never with GitLab's credentials, and
            # public, so there is no GitLab decision to wait for.
            auth = gate.policy.forwarded_file_authorization(auth, on_origin=False)
            source, admission = forwarded, None
    # The proxy's own credentials: bytes cached (or coming) through one scope go out through
    # another only if that one lists them too. Clients' admissions ask the same of GitLab.
    scoped = admission is None and forwarded is None
    metadata = request.app[keys.METADATA]
    fill = files.fills.get(sha256)
    # Bytes another worker process cached, or is downloading, would be taken over unasked.
    checked = scoped and (
        (await files.learn(sha256) and files.hit(sha256, filename) is not None)
        or (fill is not None and fill.source != source)
        or (fill is None and files.filling_elsewhere(sha256))
        # The shared tier may hold it from another replica, fetched through another scope.
        or (
            fill is None
            and files.hit(sha256, filename) is None
            and await files.in_shared_tier(sha256, filename)
        )
        or (wants_metadata and await metadata.knows(sha256))
    )
    if checked:
        await pages.check_listed(scope, sha256, filename, source, auth)
    if wants_metadata:
        if not filename.endswith(".whl"):
            raise NotFound("core metadata is served for wheels only")
        # What upstream's page says of it decides whether upstream serves it (PEP 658/714).
        listed = (
            None
            if sha256 in metadata.by_wheel
            else await pages.listed(who, scope, sha256, filename)
        )
        offered = False if listed is None else listed.core_metadata
        response = await metadata.respond(
            request, sha256, filename, source, auth, admission, offered=offered
        )
    else:
        response = await files.respond(request, sha256, filename, source, auth, admission)
    if scoped and not checked:
        # Served through this scope by GitLab: remembered as its file.
        gate.listed(scope.key, (sha256,))
    return response


async def _apply_policy(request: web.Request, scope: Scope, sha256: str, filename: str) -> None:
    """Refuse a file the [policy] rules keep from clients, as its pages leave it out."""
    pages = request.app[keys.PAGES]
    policy = pages.policy
    verdict = None
    if policy.protects and await pages.protected_forwarded(
        scope, caller(request), sha256, filename
    ):
        verdict = Verdict(False, "protected")
    elif policy.ages_files:
        verdict = await pages.file_verdict(scope, caller(request), sha256, filename, time.time())
    if verdict is None or verdict.visible:
        return
    assert verdict.rule is not None
    request.app[keys.METRICS].policy_blocked(verdict.rule, filename)
    available_at = iso(verdict.available_at) if verdict.available_at is not None else None
    raise PolicyRefused(policy.message(filename, verdict), verdict.rule, available_at)


async def _firewall_redirect(
    request: web.Request, forward: yarl.URL, wants_metadata: bool, authorization: str | None
) -> web.StreamResponse:
    """What GitLab answers this client for a file its Dependency Firewall forwards: a redirect
    to the public host (with forwarding "redirect" nothing is cached), or GitLab's refusal."""
    if wants_metadata:
        # The forward route serves the public index's `.metadata` files too.
        forward = forward.with_path(forward.raw_path + METADATA_SUFFIX, encoded=True)
    upstream = request.app[keys.UPSTREAM]
    answer = await upstream.get_page(forward, authorization)
    if answer.location is not None:
        raise web.HTTPFound(str(answer.location))
    message = message_of(answer.body, answer.status, answer.challenge)
    if answer.status == 200:
        raise UpstreamError("GitLab's Dependency Firewall route answered 200, not a redirect")
    raise upstream.error_for(
        answer.status, message, answer.retry_after, authorization=authorization
    )


async def health(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.StreamResponse:
    store = request.app[keys.STORE]
    problems = []
    if not await store.ping():
        problems.append("sqlite does not answer")
    if not request.app[keys.SETTINGS].cache.offline and not await _upstream_reachable(request):
        problems.append("upstream is unreachable")
    # An unwritable or full cache still serves, as a pass-through: degraded, not unready.
    health = request.app[keys.FILES].health
    if (
        health.writable()
        and (error := await asyncio.to_thread(request.app[keys.BLOBS].write_problem)) is not None
    ):
        health.failed(error)
    degraded = [health.problem] if health.problem else []
    if (cluster := request.app[keys.CLUSTER].problem) is not None:
        degraded.append(cluster)
    if (times := request.app[keys.PAGES].times.problem) is not None:
        degraded.append(times)
    if (tier := request.app[keys.SHARED]) is not None and not await _tier_answers(tier):
        degraded.append(tier.problem or "shared tier failed")
    if (refusal := token_refusal(request.app)) is not None:
        # Cached content still serves; with nothing cached an inject-mode proxy serves nothing.
        nothing_cached = request.app[keys.METRICS].cache_size()[1] == 0
        unready = request.app[keys.GATE].policy.unready_when_refused(nothing_cached=nothing_cached)
        (problems if unready else degraded).append(refusal)
    status = 503 if problems else 200
    offline = request.app[keys.UPSTREAM].offline
    return web.json_response(
        {
            "ready": not problems,
            "offline": offline,
            # read-write, read-only (served as it is) or pass-through (nothing on disk used).
            "cache": health.mode.value,
            "problems": problems,
            "degraded": degraded,
        },
        status=status,
    )


def token_refusal(app: web.Application) -> str | None:
    """What to tell an operator while GitLab refuses the proxy's own credentials."""
    refused = app[keys.METRICS].totals().token_refused
    if refused is None:
        return None
    setting = app[keys.GATE].policy.token_setting
    return f"GitLab refuses the proxy's credentials (HTTP {refused}): check {setting}"


async def _tier_answers(tier: SharedTier) -> bool:
    """Whether the shared tier answers: as it did moments ago, else asked now (not while it is
    left alone after a failure)."""
    if tier.skipping or time.monotonic() - tier.last_answer < RECENT_OK_SECONDS:
        return tier.problem is None
    return await tier.reachable()


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
    settings = app[keys.SETTINGS]
    # In inject mode every caller the access guard admits reads the proxy's whole view through
    # it anyway; with clients' own credentials, names are theirs and shown to operators only.
    full = settings.upstream.credentials == "inject" or await app[keys.ACCESS].is_operator(
        request.headers.get(hdrs.AUTHORIZATION)
    )
    alerts = [refusal] if (refusal := token_refusal(app)) is not None else []
    if (cluster := app[keys.CLUSTER].problem) is not None:
        alerts.append(cluster)
    if (times := app[keys.PAGES].times.problem) is not None:
        alerts.append(times)
    if (tier := app[keys.SHARED]) is not None and tier.problem is not None:
        alerts.append(tier.problem)
    page = render_status(settings, app[keys.METRICS], alerts=alerts, full=full)
    headers = {hdrs.CACHE_CONTROL: "private, no-store", hdrs.VARY: "Authorization"}
    return web.Response(text=page, content_type="text/html", charset="utf-8", headers=headers)


async def home(request: web.Request) -> web.StreamResponse:
    """`/`: which URLs to give pip, uv and twine."""
    return _home_response(request, 200)


async def bare_simple(request: web.Request) -> web.StreamResponse:
    """`/simple/` is PyPI's layout, not GitLab's: a 404 that shows the layout to use."""
    return _home_response(request, 404)


def _home_response(request: web.Request, status: int) -> web.Response:
    settings = request.app[keys.SETTINGS]
    page = render_home(settings, request.host, request.scheme)
    # Without server.public_url the page repeats the Host header: no shared cache may keep it.
    headers = {} if settings.server.public_url else {hdrs.CACHE_CONTROL: "no-store"}
    return web.Response(
        status=status, text=page, content_type="text/html", charset="utf-8", headers=headers
    )


def add_routes(app: web.Application) -> None:
    for prefix in (PROJECT_PREFIX, GROUP_PREFIX):
        # The router tries a prefix's routes in this order: the most requested first.
        app.router.add_get(f"{prefix}/files/{{sha256}}/{{filename}}", file_download)
        app.router.add_get(f"{prefix}/simple/{{name}}/", simple_project)
        app.router.add_get(f"{prefix}/simple/{{name}}", simple_project)
        app.router.add_get(f"{prefix}/simple/", simple_index)
        app.router.add_get(f"{prefix}/simple", simple_index)
    for path in (PROJECT_PREFIX, f"{PROJECT_PREFIX}/"):
        app.router.add_post(path, uploads.upload, expect_handler=uploads.expect_continue)
    app.router.add_get("/", home)
    app.router.add_get("/simple", bare_simple)
    app.router.add_get("/simple/", bare_simple)
    app.router.add_get("/-/health", health)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/metrics", metrics)
    app.router.add_get("/-/status", status)
