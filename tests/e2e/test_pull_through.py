"""Issue 2 end to end: real pip through the proxy in front of a fake GitLab on real ports."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import aiohttp
import pytest

from tests.support.clients import installed, publish_app_with_dependency
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, pip_install
from tests.support.http import PROJECT, PROJECT_PAGE, fetch_as_written, get

GROUP_PAGE = "/api/v4/groups/7/-/packages/pypi/simple/"


@pytest.mark.parametrize("scope", ["projects/42", "groups/7", "projects/platform%2Ftools"])
async def test_pip_installs_through_proxy_and_second_install_never_fetches_files(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path, scope: str
) -> None:
    publish_app_with_dependency(gitlab)
    index = proxy.index_url(scope)

    first = await pip_install(index, tmp_path / "one", "corp-app")
    first.check()
    assert installed(tmp_path / "one") == {
        "corp_app-2.0.0.dist-info",
        "corp_util-1.1.0.dist-info",
    }
    files_after_first = gitlab.counts["file"]
    assert files_after_first == 2

    second = await pip_install(index, tmp_path / "two", "corp-app")
    second.check()
    assert installed(tmp_path / "two") == installed(tmp_path / "one")
    assert gitlab.counts["file"] == files_after_first, "a warm install fetched files upstream"
    # pip had no credentials; every upstream request carried the proxy's.
    assert all(r.headers.get("Authorization") for r in gitlab.requests)


async def test_encoded_project_path_is_forwarded_exactly(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    status, _, _ = await get(
        f"{proxy.url}/api/v4/projects/platform%2Ftools/packages/pypi/simple/corp-util/"
    )
    assert status == 200
    assert (
        gitlab.requests[-1].path
        == "/api/v4/projects/platform%2Ftools/packages/pypi/simple/corp-util"
    )


async def test_package_page_links_point_at_the_proxy(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", requires_python=">=3.9,<4")
    status, headers, body = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert '<meta name="pypi:repository-version" content="1.0">' in page
    assert gitlab.url not in page, "upstream links leaked into the page"
    href = f"../../files/{wheel.sha256}/{wheel.filename}#sha256={wheel.sha256}"
    assert f'href="{href}"' in page
    assert 'data-requires-python="&gt;=3.9,&lt;4"' in page

    # Without the trailing slash the relative links still resolve to the same file URL.
    _, _, body = await get(f"{proxy.url}{PROJECT_PAGE}corp-util")
    assert f'href="../files/{wheel.sha256}/{wheel.filename}#sha256=' in body.decode()


async def test_public_url_gives_absolute_links_and_host_header_changes_nothing(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(server={"public_url": "https://pypi-cache.example.com/"})
    _, _, body = await get(
        f"{proxy.url}{PROJECT_PAGE}corp-util/",
        headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    )
    page = body.decode()
    assert "evil.example" not in page
    assert (
        f'href="https://pypi-cache.example.com/api/v4/projects/42/packages/pypi/files/'
        f'{wheel.sha256}/{wheel.filename}#sha256={wheel.sha256}"'
    ) in page


async def test_index_lists_each_name_once(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    publish_app_with_dependency(gitlab)
    status, headers, body = await get(f"{proxy.url}{GROUP_PAGE}")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert page.count('href="corp-util/"') == 1
    assert page.count('href="corp-app/"') == 1
    assert ">Corp.Util<" in page


async def test_non_normalized_name_redirects_and_upstream_gets_normalized(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    status, headers, _ = await get(f"{proxy.url}{PROJECT_PAGE}Corp_Util/")
    assert status == 301
    assert headers["Location"] == f"{PROJECT_PAGE}corp-util/"
    assert gitlab.counts["page"] == 0
    status, _, _ = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
    assert status == 200
    assert gitlab.requests[-1].path.endswith("/simple/corp-util")


async def test_pages_are_cached_for_index_ttl(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    for _ in range(3):
        status, headers, _ = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
        assert status == 200
    assert gitlab.counts["page"] == 1
    assert headers["X-Cache"] == "HIT"
    assert 0 < int(headers["Cache-Control"].removeprefix("max-age=")) <= 300


async def test_object_storage_redirect_is_followed_without_credentials(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    gitlab.object_storage = True
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    status, headers, body = await get(url)
    assert status == 200, body
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert "Location" not in headers
    assert gitlab.counts["object"] == 1
    assert not [r for r in gitlab.requests if r.kind == "object" and "Authorization" in r.headers]
    # The signed URL is not in the cache, nor in what the client saw.
    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"X-Amz-Signature" not in stored
    assert b"X-Amz-Signature" not in body
    # A hit: no request upstream at all.
    before = len(gitlab.requests)
    status, headers, again = await get(url)
    assert (status, again) == (200, body)
    assert headers["X-Cache"] == "HIT"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert len(gitlab.requests) == before


async def test_corrupt_file_is_not_stored_and_cut(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    gitlab.corrupt_files = True
    with caplog.at_level(logging.WARNING), pytest.raises(aiohttp.ClientPayloadError):
        await get(url)
    assert "sha256 mismatch" in caplog.text
    assert not list((tmp_path / "cache" / "blobs").rglob("*.*")) and not [
        p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()
    ]
    # The next request tries again, and a good upstream answer is then stored.
    gitlab.corrupt_files = False
    status, headers, body = await get(url)
    assert status == 200
    assert headers["X-Cache"] == "MISS"
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert gitlab.counts["file"] == 2


async def test_truncated_file_is_not_stored(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", payload_size=300_000)
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    gitlab.truncate_files = True
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(url)
    gitlab.truncate_files = False
    status, headers, body = await get(url)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert hashlib.sha256(body).hexdigest() == wheel.sha256


@pytest.mark.parametrize(("forwarding", "status"), [("redirect", 302), ("deny", 404)])
async def test_forwarding_modes(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, forwarding: str, status: int
) -> None:
    proxy = await make_proxy(upstream={"forwarding": forwarding})
    got, headers, body = await get(f"{proxy.url}{PROJECT_PAGE}requests/")
    assert got == status
    if status == 302:
        assert headers["Location"] == f"{gitlab.public_index_url}/simple/requests/"
    else:
        assert b"forwarding" in body


async def test_upstream_404_stays_404(gitlab: FakeGitLab, make_proxy: ProxyFactory) -> None:
    gitlab.forwarding = False
    proxy = await make_proxy()
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}nothing-here/")
    assert status == 404
    assert b"404" in body
    sha = "0" * 64
    status, _, _ = await get(
        f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{sha}/x-1.0.tar.gz"
    )
    assert status == 404


async def test_refused_token_is_a_502_that_never_echoes_it(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await make_proxy(upstream={"token": "glpat-wrong-token-abcdef"})
    with caplog.at_level(logging.DEBUG):
        status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
    assert status == 502
    assert b"proxy's credentials" in body
    assert b"glpat-wrong-token-abcdef" not in body
    assert "glpat-wrong-token-abcdef" not in caplog.text


async def test_upstream_down_and_slow(gitlab: FakeGitLab, make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(upstream={"timeout": 0.5})
    gitlab.delay = 2.0
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
    assert status == 504
    assert b'"message"' in body
    gitlab.delay = 0.0
    await gitlab.stop()
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}other/")
    assert status in (502, 503)
    assert b"unreachable" in body


@pytest.mark.parametrize(
    "path",
    [
        "files/abc/corp_util-1.0.0-py3-none-any.whl",
        "files/" + "g" * 64 + "/corp_util-1.0.0-py3-none-any.whl",
        "files/" + "a" * 64 + "/..%2Fetc%2Fpasswd",
        "files/" + "a" * 64 + "/corp_util-1.0.0-py3-none-any.whl%00",
        "files/" + "a" * 64 + "/a%5C..%5Cb-1.0.tar.gz",
        "files/" + "a" * 64 + "/notes.txt",
        "files/" + "a" * 64 + "/" + "x" * 300 + "-1.0.tar.gz",
        "simple/-bad-name-/",
        "simple/" + "a" * 300 + "/",
    ],
)
async def test_bad_input_is_a_clear_400_and_stores_nothing(
    gitlab: FakeGitLab, proxy: RunningProxy, path: str, tmp_path: Path
) -> None:
    status, headers, body = await get(f"{proxy.url}/api/v4/projects/42/packages/pypi/{path}")
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/json")
    assert b'"message"' in body
    assert len(gitlab.requests) == 0
    assert not [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/api/v4/projects/42/packages/npm/foo",
        "/api/v4/projects/42/packages/pypi/simple/a/b",
    ],
)
async def test_unknown_routes_are_404_json(proxy: RunningProxy, path: str) -> None:
    status, headers, _ = await get(f"{proxy.url}{path}")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")


async def test_token_never_in_logs_bodies_or_cache(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish_app_with_dependency(gitlab)
    with caplog.at_level(logging.DEBUG):
        bodies = []
        for path in [PROJECT_PAGE, f"{PROJECT_PAGE}corp-app/", f"{PROJECT_PAGE}missing/"]:
            bodies.append((await get(f"{proxy.url}{path}"))[2])
        page = bodies[1].decode()
        for href in re.findall(r'href="([^"#]+)', page):
            bodies.append((await get(f"{proxy.url}{PROJECT_PAGE}corp-app/{href}"))[2])
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    for where in [caplog.text.encode(), *bodies, blobs]:
        assert TOKEN.encode() not in where


async def test_small_files_are_served_with_the_memory_cache_off(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(cache={"memory_size": 0})
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    for expected in ("MISS", "HIT"):
        status, headers, body = await fetch_as_written(url)
        assert (status, headers["X-Cache"]) == (200, expected)
        assert hashlib.sha256(body).hexdigest() == wheel.sha256
