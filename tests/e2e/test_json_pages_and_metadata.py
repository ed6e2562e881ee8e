"""Issue 5 end to end: JSON pages, core metadata, Range, HEAD and revalidation through the proxy."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy import keys
from proxy.app import create_app
from proxy.pages import CachedPage
from proxy.rendering import THREAD_FROM_FILES
from proxy.scope import Scope
from proxy.simple import Distribution, Project
from tests.support.clients import PIP_ACCEPT, UV_ACCEPT
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import (
    TOKEN,
    ProxyFactory,
    RunningProxy,
    make_settings,
    pip_install,
    uv_pip_install,
)
from tests.support.http import fetch, page, project_file_url
from tests.support.pep691 import advertised, check_index_page, check_project_page
from tests.support.polling import eventually
from tests.support.wheels import wheel_metadata, zipped

API = "/api/v4/projects/42/packages/pypi"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
IDENTITY = {"Accept-Encoding": "identity"}


# --- negotiation ---


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (PIP_ACCEPT, JSON_V1),
        (UV_ACCEPT, JSON_V1),
        (None, "text/html; charset=utf-8"),
        ("text/html", "text/html; charset=utf-8"),
        (HTML_V1, f"{HTML_V1}; charset=utf-8"),
        (f"{JSON_V1};q=0.1, text/html", "text/html; charset=utf-8"),
    ],
)
async def test_accept_chooses_the_representation(
    gitlab: FakeGitLab, proxy: RunningProxy, accept: str | None, content_type: str
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    headers = {"Accept": accept} if accept is not None else {}
    for path in ("simple/corp-util/", "simple/"):
        got = await fetch(f"{proxy.url}{API}/{path}", **headers, **IDENTITY)
        assert got.status == 200
        assert got.headers["Content-Type"] == content_type
        assert got.headers["Vary"] == "Accept, Accept-Encoding"
        if content_type == JSON_V1:
            assert got.body.startswith(b'{"meta":{"api-version":')
        else:
            assert got.body.startswith(b"<!DOCTYPE html>")
            assert b'<meta name="pypi:repository-version" content="1.0">' in got.body


@pytest.mark.parametrize(
    ("query", "content_type"),
    [
        # As typed by hand: a raw `+`, which form decoding would turn into a space.
        ("format=application/vnd.pypi.simple.v1+json", JSON_V1),
        ("format=application%2Fvnd.pypi.simple.v1%2Bjson", JSON_V1),
        ("format=application/vnd.pypi.simple.latest+json", JSON_V1),
        ("format=text/html", "text/html; charset=utf-8"),
    ],
)
async def test_format_parameter_overrides_accept(
    gitlab: FakeGitLab, proxy: RunningProxy, query: str, content_type: str
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    got = await fetch(f"{proxy.url}{API}/simple/corp-util/?{query}", Accept="text/html")
    assert (got.status, got.headers["Content-Type"]) == (200, content_type)


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"Accept": "text/html;q=0, */*;q=0"},
        {"Accept": f"{JSON_V1};q=0"},
        {"Accept": "text/html", "format": "application/json"},
        {"Accept": "text/html", "format": "not a media type"},
    ],
)
async def test_nothing_acceptable_is_406(
    gitlab: FakeGitLab, proxy: RunningProxy, headers: dict[str, str]
) -> None:
    query = f"?format={headers.pop('format')}" if "format" in headers else ""
    for path in ("simple/corp-util/", "simple/"):
        got = await fetch(f"{proxy.url}{API}/{path}{query}", **headers)
        assert got.status == 406
        assert got.headers["Content-Type"].startswith("application/json")
        assert got.headers["Vary"] == "Accept, Accept-Encoding"
        assert b"acceptable" in got.body
    assert gitlab.counts["page"] + gitlab.counts["index"] == 0


async def test_html_and_json_are_never_served_for_each_other(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0", requires_python=">=3.8,<4")
    first_json = await page(proxy, "corp-util", JSON_V1)
    html = await page(proxy, "corp-util", "text/html")
    html_v1 = await page(proxy, "corp-util", HTML_V1)
    again_json = await page(proxy, "corp-util", PIP_ACCEPT)
    assert gitlab.counts["page"] == 1, "one upstream fetch serves every representation"
    assert first_json.headers["X-Cache"] == "MISS"
    assert html.headers["X-Cache"] == "HIT"
    assert first_json.body == again_json.body
    assert first_json.headers["ETag"] == again_json.headers["ETag"]
    assert html.body == html_v1.body
    etags = {r.headers["ETag"] for r in (first_json, html, html_v1)}
    assert len(etags) == 3, "each representation has its own ETag"
    assert b'data-requires-python="&gt;=3.8,&lt;4"' in html.body
    assert first_json.json()["files"][0]["requires-python"] == ">=3.8,<4"


# --- JSON schema (PEP 691, PEP 700) ---


async def test_json_pages_meet_pep_691_and_700(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    # A deploy token cannot ask the Packages API: sizes come from cached files only.
    gitlab.deploy_tokens.add(TOKEN)
    wheel = gitlab.add_wheel(42, "Corp.Util", "1.0.0", requires_python=">=3.8")
    sdist = gitlab.add_sdist(42, "Corp.Util", "1.0.0")
    gitlab.add_wheel(42, "Corp.Util", "1.1.0")
    gitlab.add_wheel(42, "corp-app", "2.0")

    index = await fetch(f"{proxy.url}{API}/simple/", Accept=UV_ACCEPT, **IDENTITY)
    check_index_page(index.json())
    assert index.json()["projects"] == [{"name": "Corp.Util"}, {"name": "corp-app"}]

    got = (await page(proxy, "corp-util")).json()
    check_project_page(got)
    assert got["name"] == "corp-util"
    assert got["versions"] == ["1.0.0", "1.1.0"]
    assert got["meta"] == {"api-version": "1.0"}
    # No size is known before the files are cached, and none is guessed.
    assert not any("size" in f or "upload-time" in f for f in got["files"])

    for file in (wheel, sdist):
        assert (await fetch(project_file_url(proxy, file.sha256, file.filename))).status == 200
    got = (await page(proxy, "corp-util")).json()
    check_project_page(got)
    sizes = {f["filename"]: f.get("size") for f in got["files"]}
    assert sizes[wheel.filename] == len(wheel.content)
    assert sizes[sdist.filename] == len(sdist.content)
    assert got["meta"] == {"api-version": "1.0"}, "one file still has no known size"

    rest = next(f for f in got["files"] if f.get("size") is None)
    assert (await fetch(f"{proxy.url}{API}/simple/corp-util/{rest['url']}")).status == 200
    got = (await page(proxy, "corp-util")).json()
    check_project_page(got)
    assert got["meta"] == {"api-version": "1.1"}
    assert all(f["size"] > 0 for f in got["files"])


async def test_non_normalized_name_redirect_keeps_the_format(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.add_wheel(42, "Corp.Util", "1.0.0")
    got = await fetch(f"{proxy.url}{API}/simple/Corp.Util/?format={JSON_V1}")
    assert got.status == 301
    assert got.headers["Location"] == f"{API}/simple/corp-util/?format={JSON_V1}"


# --- revalidation, compression, rendering once ---


async def test_etag_revalidation_per_representation(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cache={"index_ttl": 120})
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    first = await page(proxy, "corp-util", PIP_ACCEPT)
    etag = first.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}-j"', etag)
    assert 0 < int(first.headers["Cache-Control"].removeprefix("max-age=")) <= 120

    again = await page(proxy, "corp-util", PIP_ACCEPT, If_None_Match=etag)
    assert again.status == 304
    assert again.body == b""
    assert again.headers["ETag"] == etag
    assert again.headers["Vary"] == "Accept, Accept-Encoding"
    assert again.headers["Cache-Control"].startswith("max-age=")
    weak = await page(proxy, "corp-util", PIP_ACCEPT, If_None_Match=f'"x", W/{etag}')
    assert weak.status == 304

    # The JSON validator does not validate the HTML representation.
    html = await page(proxy, "corp-util", "text/html", If_None_Match=etag)
    assert html.status == 200
    assert html.headers["ETag"] != etag

    # A changed page gets a new ETag once refetched.
    gitlab.add_wheel(42, "corp-util", "1.1.0")
    await proxy.app[keys.PAGES].invalidate("corp-util")
    changed = await page(proxy, "corp-util", PIP_ACCEPT, If_None_Match=etag)
    assert changed.status == 200
    assert changed.headers["ETag"] != etag


async def test_pages_are_gzipped_when_accepted(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    plain = await page(proxy, "corp-util", UV_ACCEPT)
    assert "Content-Encoding" not in plain.headers
    zipped_page = await fetch(
        f"{proxy.url}{API}/simple/corp-util/", Accept=UV_ACCEPT, Accept_Encoding="gzip, deflate"
    )
    assert zipped_page.headers["Content-Encoding"] == "gzip"
    assert zipped_page.headers["Content-Type"] == JSON_V1
    assert gzip.decompress(zipped_page.body) == plain.body
    assert zipped_page.headers["ETag"] != plain.headers["ETag"]
    revalidated = await fetch(
        f"{proxy.url}{API}/simple/corp-util/",
        Accept=UV_ACCEPT,
        Accept_Encoding="gzip",
        If_None_Match=zipped_page.headers["ETag"],
    )
    assert revalidated.status == 304

    head = await fetch(f"{proxy.url}{API}/simple/corp-util/", "HEAD", Accept=UV_ACCEPT)
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Type"] == JSON_V1


async def test_hits_are_not_rendered_again(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    # A deploy token cannot ask the Packages API: sizes come from cached files only.
    gitlab.deploy_tokens.add(TOKEN)
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    other = gitlab.add_wheel(42, "corp-app", "1.0.0")
    renderer = proxy.app[keys.RENDERER]
    first = await page(proxy, "corp-util")
    rendered = renderer.renders
    for accept in (JSON_V1, PIP_ACCEPT, UV_ACCEPT):
        assert (await page(proxy, "corp-util", accept)).body == first.body
    assert renderer.renders == rendered

    # Another project's file entering the cache leaves this page's bytes as they are...
    assert (await fetch(project_file_url(proxy, other.sha256, other.filename))).status == 200
    assert (await page(proxy, "corp-util")).body == first.body
    assert renderer.renders == rendered
    # ...its own file changes what it says (a size), so it is rendered again.
    assert (await fetch(project_file_url(proxy, wheel.sha256, wheel.filename))).status == 200
    assert (await page(proxy, "corp-util")).json()["files"][0]["size"] == len(wheel.content)
    assert renderer.renders == rendered + 1


async def test_big_pages_render_the_same_off_the_loop(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    count = THREAD_FROM_FILES + 10
    for n in range(count):
        name = f"corp_big-{n}.0-py3-none-any.whl"
        gitlab.add_file(42, "corp-big", f"{n}.0", name, name.encode())
    json_page = (await page(proxy, "corp-big")).json()
    check_project_page(json_page)
    assert len(json_page["files"]) == count
    assert json_page["versions"][-1] == f"{count - 1}.0"
    html = await page(proxy, "corp-big", "text/html")
    assert html.body.count(b'data-core-metadata="true"') == count
    renders = proxy.app[keys.RENDERER].renders
    assert (await page(proxy, "corp-big")).json() == json_page
    assert proxy.app[keys.RENDERER].renders == renders


async def test_group_pages_negotiate_too(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    group = f"{proxy.url}/api/v4/groups/7/-/packages/pypi"
    got = await fetch(f"{group}/simple/corp-util/", Accept=PIP_ACCEPT, **IDENTITY)
    assert got.headers["Content-Type"] == JSON_V1
    (entry,) = got.json()["files"]
    assert entry["url"] == f"../../files/{wheel.sha256}/{wheel.filename}"
    metadata = await fetch(f"{group}/simple/corp-util/{entry['url']}.metadata")
    assert metadata.body == wheel_metadata(wheel.content)
    assert [r.path.split("/pypi/")[1] for r in gitlab.requests if r.kind == "file"] == [
        f"files/{wheel.sha256}/{wheel.filename}"
    ]


# --- PEP 658 / 714 core metadata ---


async def both(proxy: RunningProxy, name: str) -> tuple[Any, bytes]:
    return (await page(proxy, name)).json(), (await page(proxy, name, "text/html")).body


async def test_core_metadata_is_served_from_the_cached_wheel(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy()
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", requires=["six>=1.0"])
    sdist = gitlab.add_sdist(42, "corp-util", "1.0.0")
    metadata = wheel_metadata(wheel.content)
    metadata_sha256 = hashlib.sha256(metadata).hexdigest()

    json_page, html_page = await both(proxy, "corp-util")
    assert advertised(json_page, html_page, wheel.filename) == (True, "true")
    assert advertised(json_page, html_page, sdist.filename) == (None, None)

    url = project_file_url(proxy, wheel.sha256, wheel.filename) + ".metadata"
    got = await fetch(url, Accept_Encoding="gzip")
    assert got.status == 200
    assert got.body == metadata
    assert "Content-Encoding" not in got.headers
    assert got.headers["X-Checksum-Sha256"] == metadata_sha256
    assert gitlab.counts["file"] == 1, "the wheel was fetched once, to read its METADATA"

    json_page, html_page = await both(proxy, "corp-util")
    expected = ({"sha256": metadata_sha256}, f"sha256={metadata_sha256}")
    assert advertised(json_page, html_page, wheel.filename) == expected
    assert wheel.sha256 not in json.dumps(json_page["files"][0].get("core-metadata"))
    assert advertised(json_page, html_page, sdist.filename) == (None, None)

    # The wheel itself is now a hit; metadata again needs no upstream either.
    assert (await fetch(project_file_url(proxy, wheel.sha256, wheel.filename))).headers[
        "X-Cache"
    ] == "HIT"
    head = await fetch(url, "HEAD")
    assert (head.status, head.headers["Content-Length"]) == (200, str(len(metadata)))
    ranged = await fetch(url, Range="bytes=0-9")
    assert (ranged.status, ranged.body) == (206, metadata[:10])
    assert gitlab.counts["file"] == 1

    # A restarted proxy knows the metadata from SQLite.
    await proxy.stop()
    proxy = await make_proxy(cache_dir=tmp_path / "cache")
    json_page, html_page = await both(proxy, "corp-util")
    assert advertised(json_page, html_page, wheel.filename) == expected
    url = project_file_url(proxy, wheel.sha256, wheel.filename) + ".metadata"
    assert (await fetch(url)).body == metadata
    assert gitlab.counts["file"] == 1


async def test_a_downloaded_wheel_advertises_its_metadata_hash(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    metadata_sha256 = hashlib.sha256(wheel_metadata(wheel.content)).hexdigest()
    assert (await fetch(project_file_url(proxy, wheel.sha256, wheel.filename))).status == 200

    # Read in the background right after the download verified; a few milliseconds here.
    async def hashed() -> bool:
        return (await page(proxy, "corp-util")).json()["files"][0]["core-metadata"] is not True

    await eventually(hashed, "the page advertises the metadata's hash", interval=0.02)
    json_page = (await page(proxy, "corp-util")).json()
    assert json_page["files"][0]["core-metadata"] == {"sha256": metadata_sha256}


async def test_upstream_metadata_claims_are_replaced_by_the_proxys_own(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    """What upstream says of its metadata file is passed on only until the proxy knows its own:
    a claim that no metadata file upstream bears out gives way to what the wheel holds."""
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    sdist = gitlab.add_sdist(42, "corp-util", "1.0.0")
    claimed = f"sha256={'c' * 64}"
    files = tuple(
        Distribution(
            f.filename, f"{gitlab.url}/x/{f.filename}", {"sha256": f.sha256}, core_metadata=claimed
        )
        for f in (wheel, sdist)
    )
    # As a page from an upstream with PEP 658 files (the public index) would be stored.
    scope = Scope.parse("projects", "42")
    # A shared page's cache key: the scope, then the normalized name.
    proxy.app[keys.PAGES].fresh[f"{scope.key}:corp-util"] = CachedPage(
        Project("corp-util", files), time.time()
    )
    json_page, html_page = await both(proxy, "corp-util")
    assert advertised(json_page, html_page, wheel.filename) == ({"sha256": "c" * 64}, claimed)
    assert advertised(json_page, html_page, sdist.filename) == (None, None)
    got = await fetch(project_file_url(proxy, wheel.sha256, wheel.filename) + ".metadata")
    assert got.status == 200
    json_page, html_page = await both(proxy, "corp-util")
    own = hashlib.sha256(got.body).hexdigest()
    assert advertised(json_page, html_page, wheel.filename) == ({"sha256": own}, f"sha256={own}")


async def test_metadata_errors_are_clear_404s(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    bad_name = "corp_bad-1.0-py3-none-any.whl"
    bad = gitlab.add_file(
        42,
        "corp-bad",
        "1.0",
        bad_name,
        zipped(tmp_path, {"corp_bad-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n"}).read_bytes(),
    )
    sdist = gitlab.add_sdist(42, "corp-bad", "1.0")
    assert (await page(proxy, "corp-bad")).json()["files"][0]["core-metadata"] is True

    got = await fetch(project_file_url(proxy, bad.sha256, bad_name) + ".metadata")
    assert got.status == 404
    assert b"has no corp_bad-1.0.dist-info/METADATA" in got.body
    # Known for good now: the page stops offering it, and asking again costs no download.
    assert "core-metadata" not in (await page(proxy, "corp-bad")).json()["files"][0]
    assert (await fetch(project_file_url(proxy, bad.sha256, bad_name) + ".metadata")).status == 404
    assert gitlab.counts["file"] == 1

    got = await fetch(project_file_url(proxy, sdist.sha256, sdist.filename) + ".metadata")
    assert got.status == 404
    assert b"wheels only" in got.body
    missing = await fetch(
        project_file_url(proxy, "0" * 64, "corp_bad-1.0-py3-none-any.whl.metadata")
    )
    assert missing.status == 404
    nonsense = await fetch(project_file_url(proxy, "0" * 64, "notes.txt.metadata"))
    assert nonsense.status == 400


# --- files: HEAD, Range, never gzip ---


@pytest.mark.parametrize("payload_size", [0, 400_000], ids=["memory", "disk"])
async def test_head_and_range_on_misses_and_hits(
    gitlab: FakeGitLab, proxy: RunningProxy, payload_size: int
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", payload_size=payload_size)
    size = len(wheel.content)
    url = project_file_url(proxy, wheel.sha256, wheel.filename)

    head = await fetch(url, "HEAD")
    assert (head.status, head.headers["X-Cache"]) == (200, "MISS")
    assert head.headers["Content-Length"] == str(size)
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.body == b""

    # A range on a miss waits for the verified file, then is answered like a hit.
    ranged = await fetch(url, Range="bytes=100-199")
    assert ranged.status == 206
    assert ranged.body == wheel.content[100:200]
    assert ranged.headers["Content-Range"] == f"bytes 100-199/{size}"

    head = await fetch(url, "HEAD")
    assert (head.status, head.headers["X-Cache"]) == (200, "HIT")
    assert head.headers["Content-Length"] == str(size)
    assert head.headers["Accept-Ranges"] == "bytes"
    # uv and pip's lazy wheel read a zip's end first.
    tail = await fetch(url, Range="bytes=-22")
    assert (tail.status, tail.body) == (206, wheel.content[-22:])
    full = await fetch(url)
    assert (full.status, full.body, full.headers["Accept-Ranges"]) == (200, wheel.content, "bytes")
    assert gitlab.counts["file"] == 1


async def test_file_bodies_are_never_gzip_encoded(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = project_file_url(proxy, wheel.sha256, wheel.filename)
    for state in ("MISS", "HIT"):
        got = await fetch(url, Accept_Encoding="gzip, deflate, br, zstd")
        assert got.headers["X-Cache"] == state
        assert "Content-Encoding" not in got.headers
        assert hashlib.sha256(got.body).hexdigest() == wheel.sha256


# --- real pip and uv ---


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    status: int
    content_type: str


@pytest.fixture
async def logged_proxy(
    gitlab: FakeGitLab, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[RunningProxy]:
    """The real app with aiohttp's access log naming each response's Content-Type."""
    settings = make_settings(gitlab.url, tmp_path / "cache", TOKEN)
    runner = web.AppRunner(
        create_app(settings),
        handler_cancellation=False,
        access_log_format='"%r" %s "%{Content-Type}o"',
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    try:
        yield RunningProxy(runner, f"http://127.0.0.1:{port}", settings)
    finally:
        await runner.cleanup()


def access_log(caplog: pytest.LogCaptureFixture) -> list[Served]:
    served = []
    for record in caplog.records:
        if record.name != "aiohttp.access":
            continue
        match = re.fullmatch(r'"(\S+) (\S+) [^"]*" (\d+) "([^"]*)"', record.getMessage())
        assert match is not None, record.getMessage()
        served.append(Served(match[1], match[2], int(match[3]), match[4]))
    return served


def publish_versions(gitlab: FakeGitLab) -> None:
    """corp-app 3.0 needs a corp-util that does not exist, so resolvers settle on 2.0."""
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        gitlab.add_wheel(42, "corp-util", version)
    gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["corp-util>=1.0"])
    gitlab.add_wheel(42, "corp-app", "2.0.0", requires=["corp-util>=1.1,<1.2"])
    gitlab.add_wheel(42, "corp-app", "3.0.0", requires=["corp-util>=9"])


@pytest.mark.parametrize("client", ["pip", "uv"])
async def test_real_clients_use_json_and_metadata_and_download_only_the_chosen_wheels(
    gitlab: FakeGitLab,
    logged_proxy: RunningProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    client: str,
) -> None:
    publish_versions(gitlab)
    index = logged_proxy.index_url("projects/42")

    async def install(target: Path) -> None:
        if client == "pip":
            done = await pip_install(index, target, "corp-app")
        else:
            done = await uv_pip_install(index, target, "corp-app", cache_dir=target / ".uv")
        done.check()
        assert {p.name for p in target.iterdir() if p.name.endswith(".dist-info")} == {
            "corp_app-2.0.0.dist-info",
            "corp_util-1.1.0.dist-info",
        }

    await install(tmp_path / "cold")
    served = access_log(caplog)
    pages = [s for s in served if "/simple/" in s.path]
    assert pages and all(s.content_type == JSON_V1 for s in pages), pages
    assert {s.path.rsplit("/simple/", 1)[1] for s in pages} >= {"corp-app/", "corp-util/"}
    metadata = {s.path.rsplit("/", 1)[1] for s in served if s.path.endswith(".metadata")}
    # The resolver looked at 3.0.0 through its metadata, found it unsatisfiable, and moved on.
    assert metadata >= {
        "corp_app-3.0.0-py3-none-any.whl.metadata",
        "corp_app-2.0.0-py3-none-any.whl.metadata",
    }
    wheels = [
        s.path.rsplit("/", 1)[1]
        for s in served
        if "/files/" in s.path and not s.path.endswith(".metadata") and s.method == "GET"
    ]
    assert sorted(wheels) == [
        "corp_app-2.0.0-py3-none-any.whl",
        "corp_util-1.1.0-py3-none-any.whl",
    ]
    assert all(s.status in (200, 206) for s in served), served

    # Through the warm proxy a second client costs GitLab nothing at all.
    upstream = len(gitlab.requests)
    await install(tmp_path / "warm")
    assert len(gitlab.requests) == upstream
