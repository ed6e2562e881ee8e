"""`upstream.forwarding = "cache"`: GitLab's forwarding followed to listed hosts, files verified."""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiohttp
import pytest

from proxy import keys
from tests.support.clients import installed
from tests.support.fake_gitlab import FakeGitLab, FakePublicIndex
from tests.support.harness import ProxyFactory, pip_install, uv_pip_install
from tests.support.http import PROJECT, PROJECT_PAGE, fetch_as_written, get, host_of, page
from tests.support.pep691 import check_project_page


async def test_pip_installs_private_and_forwarded_public_packages(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["tiny-json>=1.1"])
    public.add_wheel("tiny-json", "1.0.0")
    public.add_wheel("tiny-json", "1.1.0", requires=["tiny-util"])
    public.add_wheel("tiny-util", "0.5")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})

    result = await pip_install(proxy.index_url("projects/42"), tmp_path / "one", "corp-app")
    result.check()
    assert installed(tmp_path / "one") == {
        "corp_app-1.0.0.dist-info",
        "tiny_json-1.1.0.dist-info",
        "tiny_util-0.5.dist-info",
    }
    # Each wheel once, and before it the .metadata the public index publishes (PEP 714).
    fetched = [r.path for r in public.requests if r.kind == "file"]
    assert len(fetched) == 4
    assert len([path for path in fetched if path.endswith(".whl.metadata")]) == 2
    assert public.requests, "nothing was forwarded"
    # GitLab's credentials went to GitLab only.
    assert not any("Authorization" in r.headers for r in public.requests)
    assert all(r.headers.get("Authorization") for r in gitlab.requests if r.kind == "page")

    # The page the proxy renders links files to the proxy, not to the public index.
    _, _, body = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert public.url not in body.decode()
    assert 'href="../../files/' in body.decode()

    # Cached like any other file: a second install fetches nothing from the public index.
    result = await pip_install(proxy.index_url("projects/42"), tmp_path / "two", "corp-app")
    result.check()
    assert public.counts["file"] == 4


async def test_forwarded_file_that_does_not_verify_is_not_stored(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    wheel = public.add_wheel("tiny-json", "1.0.0")
    wheel.content = wheel.content + b"tampered"
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    status, _, _ = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert status == 200
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    with contextlib.suppress(aiohttp.ClientPayloadError):
        status, _, body = await get(url)
        # The last byte is held back and the connection cut: never the whole file.
        assert len(body) < len(wheel.content)
    assert public.counts["file"] == 1
    assert wheel.sha256 not in proxy.app[keys.FILES].known
    assert not list((proxy.settings.cache.dir / "blobs").rglob(wheel.sha256))


async def test_forwarding_to_an_unlisted_host_is_refused(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    public.add_wheel("tiny-json", "1.0.0")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": ("pypi.org",)})
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert status == 404
    assert b"forward_hosts" in body
    assert not public.requests


async def test_a_name_neither_gitlab_nor_the_public_index_has_is_a_404(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    status, _, body = await fetch_as_written(f"{proxy.url}{PROJECT}/simple/no-such-thing/")
    assert status == 404, body
    # The public index was asked, and said no: that is an answer, not an outage.
    assert [r.status for r in public.requests] == [404]


async def test_json_pages_of_a_forwarded_package_carry_the_public_upload_times_and_sizes(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    old = public.add_wheel("tiny-json", "1.0.0", upload_time="2024-01-02T03:04:05.678901Z")
    new = public.add_wheel("tiny-json", "1.1.0", upload_time="2024-06-01T00:00:00.000000Z")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})

    answer = await page(proxy, "tiny-json")
    assert answer.status == 200
    body = answer.json()
    check_project_page(body)
    assert body["meta"]["api-version"] == "1.1"
    files = {f["filename"]: f for f in body["files"]}
    assert files[old.filename]["upload-time"] == "2024-01-02T03:04:05.678901Z"
    assert files[new.filename]["upload-time"] == "2024-06-01T00:00:00.000000Z"
    assert files[old.filename]["size"] == len(old.content)
    assert files[new.filename]["size"] == len(new.content)
    assert files[old.filename]["url"].startswith("../../files/")
    # The public index was asked for JSON, and answered it.
    (asked,) = [r for r in public.requests if r.kind == "page"]
    assert asked.headers["Accept"].startswith("application/vnd.pypi.simple.v1+json")
    assert "Authorization" not in asked.headers
    # Stored as read: after a restart, the stored copy (fresh still, GitLab down) says the same.
    await proxy.stop()
    gitlab.down = True
    again = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    answer = await page(again, "tiny-json")
    assert answer.headers["X-Cache"] == "HIT"
    assert answer.json()["files"] == body["files"]


async def test_an_html_only_public_index_still_forwards(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    public.offers_json = False
    wheel = public.add_wheel("tiny-json", "1.0.0")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    body = (await page(proxy, "tiny-json")).json()
    assert body["meta"]["api-version"] == "1.0"
    assert [f["filename"] for f in body["files"]] == [wheel.filename]
    assert "upload-time" not in body["files"][0]


async def test_uv_exclude_newer_installs_the_newest_public_version_before_the_date(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    public.add_wheel("tiny-json", "1.0.0", upload_time="2024-01-01T00:00:00.000000Z")
    public.add_wheel("tiny-json", "1.1.0", upload_time="2024-06-01T00:00:00.000000Z")
    public.add_wheel("tiny-json", "1.2.0", upload_time="2025-01-01T00:00:00.000000Z")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    index = proxy.index_url("projects/42")

    for date, version in (("2024-09-01T00:00:00Z", "1.1.0"), ("2024-03-01T00:00:00Z", "1.0.0")):
        target = tmp_path / version
        result = await uv_pip_install(
            index,
            target,
            "tiny-json",
            cache_dir=tmp_path / f"uv-{version}",
            extra=("--exclude-newer", date),
        )
        result.check()
        assert installed(target) == {f"tiny_json-{version}.dist-info"}
    result = await uv_pip_install(index, tmp_path / "all", "tiny-json", cache_dir=tmp_path / "uv")
    result.check()
    assert installed(tmp_path / "all") == {"tiny_json-1.2.0.dist-info"}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"meta": {"api-version": "2.0"}, "files": []}', "not a version 1 JSON page"),
        (b"<html>not json</html>", "not JSON"),
        (b'{"meta": {"api-version": "1.1"}, "files": {"a": 1}}', "files must be a list"),
    ],
)
async def test_a_json_page_the_proxy_cannot_read_is_a_clear_502_then_the_stored_copy(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, body: bytes, why: str
) -> None:
    wheel = public.add_wheel("tiny-json", "1.0.0")
    # Asked every time, and again at once after a failure.
    upstream = {"forwarding": "cache", "forward_hosts": (host_of(public),), "retry_interval": 0.0}
    proxy = await make_proxy(upstream=upstream, cache={"index_ttl": 0.0})
    public.json_body = body
    answer = await page(proxy, "tiny-json")
    assert answer.status == 502
    assert why in answer.json()["message"]
    assert host_of(public).partition(":")[0] in answer.json()["message"]
    # A good page, then a bad one again: the good one is served stale meanwhile.
    public.json_body = None
    assert (await page(proxy, "tiny-json")).status == 200
    public.json_body = body
    answer = await page(proxy, "tiny-json")
    assert (answer.status, answer.headers["X-Cache"]) == (200, "STALE")
    assert [f["filename"] for f in answer.json()["files"]] == [wheel.filename]
