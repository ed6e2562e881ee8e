"""Issue 15 part 1: JSON pages carry the upload times and sizes of GitLab's Packages API."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import installed
from tests.support.fake_gitlab import FakeFile, FakeGitLab, FakePublicIndex
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, pip_install, uv_pip_install
from tests.support.http import JSON_V1, PROJECT_PAGE, basic, get, host_of, wheel_url

GROUP_PAGE = "/api/v4/groups/7/-/packages/pypi/simple/"
DEPLOY_TOKEN = "gldt-deploy-token-abcdef123456"
# Short enough to refetch within a test; long enough for one page fetch to stay fresh meanwhile.
TTL = 0.3


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def uploaded(gitlab: FakeGitLab, version: str, when: str, name: str = "corp-util") -> FakeFile:
    wheel = gitlab.add_wheel(42, name, version)
    wheel.uploaded_at = epoch(when)
    return wheel


async def json_page(proxy: RunningProxy, path: str) -> Any:
    status, headers, body = await get(proxy.url + path, headers={"Accept": JSON_V1})
    assert status == 200, body
    assert headers["Content-Type"] == JSON_V1
    return json.loads(body)


def api_calls(gitlab: FakeGitLab) -> int:
    return gitlab.counts["api"]


async def test_json_page_carries_upload_time_and_size(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    old = uploaded(gitlab, "1.0", "2026-01-15T08:30:00.125+00:00")
    gitlab.add_wheel(42, "corp-util-extra", "1.0")
    sdist = gitlab.add_sdist(42, "corp-util", "1.0")
    sdist.uploaded_at = epoch("2026-01-15T08:31:00+00:00")
    new = uploaded(gitlab, "2.0", "2026-11-30T10:00:00+00:00")
    page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
    assert page["meta"]["api-version"] == "1.1"
    got = {f["filename"]: (f["upload-time"], f["size"]) for f in page["files"]}
    assert got == {
        old.filename: ("2026-01-15T08:30:00.125000Z", len(old.content)),
        sdist.filename: ("2026-01-15T08:31:00.000000Z", len(sdist.content)),
        new.filename: ("2026-11-30T10:00:00.000000Z", len(new.content)),
    }
    # The REST API was asked with the proxy's token as Private-Token, never as Basic.
    rest = list(gitlab.api_requests)
    assert rest and all(r.status == 200 for r in rest)
    assert all(r.headers.get("Private-Token") == TOKEN for r in rest)
    assert not any("Authorization" in r.headers for r in rest)
    # GitLab's substring search finds `corp-util-extra` too; its files are not asked for.
    assert all("package_name=corp&" in r.path for r in rest if "package_files" not in r.path)
    assert len([r for r in rest if "package_files" in r.path]) == 2


async def test_gitlabs_own_json_pages_get_times_too(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    """GitLab 18.10+ answers PEP 691 JSON behind a feature flag: still GitLab's registry, whose
    Packages API knows the times, not a parent proxy that gave the times it knows."""
    wheel = uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    gitlab.pep691_json = True
    proxy = await make_proxy()
    entry = (await json_page(proxy, PROJECT_PAGE + "corp-util/"))["files"][0]
    assert entry["filename"] == wheel.filename
    assert entry["upload-time"] == "2026-02-01T00:00:00.000000Z"
    assert entry["size"] == len(wheel.content)


async def test_html_page_is_unchanged_and_group_pages_get_times_too(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.add_project(44, "platform/lib", group_id=7)
    one = uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    other = gitlab.add_wheel(44, "corp-util", "1.5")
    other.uploaded_at = epoch("2026-03-01T00:00:00+00:00")
    gitlab.add_wheel(44, "corp-util-extra", "1.0")
    gitlab.deploy_tokens.add(DEPLOY_TOKEN)
    with_times = await make_proxy(tmp_path / "a")
    without = await make_proxy(tmp_path / "b", upstream={"token": DEPLOY_TOKEN})
    html = [(await get(p.url + PROJECT_PAGE + "corp-util/"))[2] for p in (with_times, without)]
    assert html[0] == html[1]
    assert b"upload" not in html[0] and b"size" not in html[0]
    page = await json_page(with_times, GROUP_PAGE + "corp-util/")
    assert {f["filename"]: f["upload-time"] for f in page["files"]} == {
        one.filename: "2026-02-01T00:00:00.000000Z",
        other.filename: "2026-03-01T00:00:00.000000Z",
    }
    files_paths = [r.path for r in gitlab.api_requests if "package_files" in r.path]
    assert any(p.startswith("/api/v4/projects/44/packages/") for p in files_paths)


async def test_deploy_token_leaves_times_absent_says_so_once_and_recovers(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    gitlab.deploy_tokens.add(DEPLOY_TOKEN)
    proxy = await make_proxy(upstream={"token": DEPLOY_TOKEN}, cache={"index_ttl": TTL})
    with caplog.at_level(logging.INFO, logger="proxy.upload_times"):
        for _ in range(3):
            page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
            assert page["meta"]["api-version"] == "1.0"
            assert not any("upload-time" in f or "size" in f for f in page["files"])
            await asyncio.sleep(TTL)
        status, _, body = await get(proxy.url + "/-/ready")
        assert status == 200
        degraded = json.loads(body)["degraded"]
        assert len(degraded) == 1
        assert degraded[0].startswith("upload times unknown: GitLab refuses the Packages API")
        assert "read_api" in degraded[0] and "deploy token" in degraded[0]
        # The status page shows it too.
        assert escape(degraded[0]).encode() in (await get(proxy.url + "/-/status"))[2]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == degraded
        assert DEPLOY_TOKEN not in caplog.text
        # The token gains read_api (a personal token now): the next refetch learns the times.
        gitlab.deploy_tokens.discard(DEPLOY_TOKEN)
        gitlab.tokens[DEPLOY_TOKEN] = None
        page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
        assert page["files"][0]["upload-time"] == "2026-02-01T00:00:00.000000Z"
        assert json.loads((await get(proxy.url + "/-/ready"))[2])["degraded"] == []
    assert "answers again" in caplog.text


async def test_basic_only_job_token_is_never_sent_to_the_rest_api(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    gitlab.job_tokens.add("job-token-123")
    proxy = await make_proxy(upstream={"token": "job-token-123", "username": "gitlab-ci-token"})
    page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
    assert "upload-time" not in page["files"][0]
    assert api_calls(gitlab) == 0
    degraded = json.loads((await get(proxy.url + "/-/ready"))[2])["degraded"]
    assert degraded and "CI job token" in degraded[0]


async def test_passthrough_asks_with_the_proxys_token_never_the_clients(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    gitlab.tokens["glpat-alice"] = {42}
    alice = {"Accept": JSON_V1, "Authorization": basic("glpat-alice")}
    proxy = await make_proxy(tmp_path / "a", upstream={"credentials": "passthrough"})
    status, _, body = await get(proxy.url + PROJECT_PAGE + "corp-util/", headers=alice)
    assert status == 200
    assert json.loads(body)["files"][0]["upload-time"] == "2026-02-01T00:00:00.000000Z"
    assert gitlab.api_requests
    assert all(r.headers.get("Private-Token") == TOKEN for r in gitlab.api_requests)
    assert not any("Authorization" in r.headers for r in gitlab.api_requests)
    # Without a token of its own it asks nothing, and says why.
    calls = api_calls(gitlab)
    bare = await make_proxy(tmp_path / "b", upstream={"credentials": "passthrough", "token": ""})
    status, _, body = await get(bare.url + PROJECT_PAGE + "corp-util/", headers=alice)
    assert status == 200 and "upload-time" not in json.loads(body)["files"][0]
    assert api_calls(gitlab) == calls
    degraded = json.loads((await get(bare.url + "/-/ready"))[2])["degraded"]
    assert degraded and "upstream.token is not set" in degraded[0]


async def test_a_failing_packages_api_costs_no_page(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    gitlab.api_fail_status = 502
    proxy = await make_proxy(cache={"index_ttl": TTL}, upstream={"retry_interval": TTL})
    page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
    assert "upload-time" not in page["files"][0]
    degraded = json.loads((await get(proxy.url + "/-/ready"))[2])["degraded"]
    assert degraded == [
        "upload times unknown for some pages: GitLab's Packages API answered 502 (502 Bad Gateway)"
    ]
    gitlab.api_fail_status = None
    await asyncio.sleep(TTL)
    page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
    assert page["files"][0]["upload-time"] == "2026-02-01T00:00:00.000000Z"
    assert json.loads((await get(proxy.url + "/-/ready"))[2])["degraded"] == []


async def test_a_slow_packages_api_holds_no_page_and_its_answer_serves_the_next_fetch(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    # Slower than a page waits for it (a sixth of upstream.timeout), within upstream.timeout.
    gitlab.api_delay = 1.5
    proxy = await make_proxy(cache={"index_ttl": TTL}, upstream={"timeout": 3.0})
    started = time.monotonic()
    page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
    assert time.monotonic() - started < 1.0
    assert "upload-time" not in page["files"][0]
    degraded = json.loads((await get(proxy.url + "/-/ready"))[2])["degraded"]
    assert any("slower than 0.5s" in reason for reason in degraded), degraded
    # GitLab's answer, when it comes, is kept: the page's next fetch has it without a call.
    await asyncio.sleep(gitlab.api_delay * 2 + TTL)
    calls = api_calls(gitlab)
    page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
    assert page["files"][0]["upload-time"] == "2026-02-01T00:00:00.000000Z"
    assert api_calls(gitlab) == calls
    assert json.loads((await get(proxy.url + "/-/ready"))[2])["degraded"] == []


async def test_public_files_are_never_asked_about(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    public.add_wheel("tiny-json", "1.0.0")
    # HTML only: its files come without upload times, and still GitLab is not asked about them.
    public.offers_json = False
    forwarding = {"forwarding": "cache", "forward_hosts": (host_of(public),)}
    # Forwarded to the public index, and the Dependency Firewall's rewritten public page.
    proxy = await make_proxy(tmp_path / "a", upstream=forwarding)
    assert (await json_page(proxy, PROJECT_PAGE + "tiny-json/"))["files"]
    gitlab.firewall = True
    firewalled = await make_proxy(tmp_path / "b", upstream=forwarding)
    page = await json_page(firewalled, PROJECT_PAGE + "tiny-json/")
    assert page["files"] and gitlab.counts["firewall"] == 0
    assert api_calls(gitlab) == 0


def add_versions(gitlab: FakeGitLab, count: int, first: int = 0) -> None:
    for minor in range(first, first + count):
        content = f"many {minor}".encode()
        file = gitlab.add_file(
            42, "many", f"1.{minor}", f"many-1.{minor}-py3-none-any.whl", content
        )
        file.uploaded_at = epoch("2026-01-01T00:00:00+00:00") + minor * 60


async def test_packages_api_calls_first_fetch_refetch_and_one_new_upload(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    add_versions(gitlab, 300)
    proxy = await make_proxy(cache={"index_ttl": TTL})
    page = await json_page(proxy, PROJECT_PAGE + "many/")
    assert all("upload-time" in f for f in page["files"]) and len(page["files"]) == 300
    # Three pages of 100 versions, then one list of files per version.
    assert api_calls(gitlab) == 3 + 300
    await asyncio.sleep(TTL)
    before = gitlab.counts["page"]
    await json_page(proxy, PROJECT_PAGE + "many/")
    assert gitlab.counts["page"] == before + 1  # refetched, and every time already known
    assert api_calls(gitlab) == 303
    add_versions(gitlab, 1, first=300)
    await asyncio.sleep(TTL)
    page = await json_page(proxy, PROJECT_PAGE + "many/")
    assert len(page["files"]) == 301 and all("upload-time" in f for f in page["files"])
    # Newest first: one page of versions finds the new one, then its files.
    assert api_calls(gitlab) == 303 + 2


def add_wide_release(gitlab: FakeGitLab) -> None:
    """One release of 150 files: two pages of its package_files list."""
    for build in range(150):
        file = gitlab.add_file(
            42, "wide", "1.0", f"wide-1.0-{build}-py3-none-any.whl", f"wide {build}".encode()
        )
        file.uploaded_at = epoch("2026-03-01T00:00:00+00:00")


async def test_a_lying_page_count_costs_neither_requests_nor_files(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    add_wide_release(gitlab)
    # GitLab counts pages only up to 10,000 rows (100 pages of 100): a claim of more is a lie,
    # and must not become that many requests.
    gitlab.api_claimed_pages = 5000
    page = await json_page(proxy, PROJECT_PAGE + "wide/")
    assert len(page["files"]) == 150
    assert all(f["upload-time"] == "2026-03-01T00:00:00.000000Z" for f in page["files"])
    assert len([r for r in gitlab.api_requests if "package_files" in r.path]) == 2


async def test_a_page_count_short_of_the_truth_loses_no_file(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    add_wide_release(gitlab)
    # One page claimed, but X-Next-Page names a second: the links are followed.
    gitlab.api_claimed_pages = 1
    page = await json_page(proxy, PROJECT_PAGE + "wide/")
    assert all("upload-time" in f for f in page["files"]) and len(page["files"]) == 150


async def test_a_list_without_end_is_followed_only_so_far_and_said(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    # Every page names a next one: a proxy that trusted it would never answer.
    gitlab.api_endless_files = True
    page = await json_page(proxy, PROJECT_PAGE + "corp-util/")
    assert "upload-time" not in page["files"][0]
    # 10,000 files is GitLab's count limit; no release has more: 100 pages of 100, no more.
    assert len([r for r in gitlab.api_requests if "package_files" in r.path]) == 100
    degraded = json.loads((await get(proxy.url + "/-/ready"))[2])["degraded"]
    assert len(degraded) == 1 and "listed more than 100 pages" in degraded[0], degraded


async def test_a_restarted_or_offline_proxy_keeps_what_it_learnt(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    wheel = uploaded(gitlab, "1.0", "2026-02-01T00:00:00+00:00")
    first = await make_proxy(tmp_path / "cache")
    await json_page(first, PROJECT_PAGE + "corp-util/")
    # Cached, so an offline mirror lists it.
    assert (await get(wheel_url(first, wheel)))[0] == 200
    calls = api_calls(gitlab)
    await first.stop()
    again = await make_proxy(tmp_path / "cache", cache={"index_ttl": 0})
    page = await json_page(again, PROJECT_PAGE + "corp-util/")
    assert page["files"][0]["upload-time"] == "2026-02-01T00:00:00.000000Z"
    assert api_calls(gitlab) == calls
    await again.stop()
    # Offline, the stored page carries them: they were learnt before it was kept.
    offline = await make_proxy(tmp_path / "cache", cache={"offline": True})
    page = await json_page(offline, PROJECT_PAGE + "corp-util/")
    assert page["files"][0]["upload-time"] == "2026-02-01T00:00:00.000000Z"
    assert page["files"][0]["size"] > 0
    assert api_calls(gitlab) == calls


# Real installers: the newest version uploaded before the date, through the proxy only.


def three_releases(gitlab: FakeGitLab) -> None:
    uploaded(gitlab, "1.0", "2026-01-10T00:00:00+00:00")
    uploaded(gitlab, "1.1", "2026-05-10T00:00:00+00:00")
    uploaded(gitlab, "2.0", "2026-11-30T10:00:00+00:00")


async def test_uv_exclude_newer_installs_the_newest_older_release(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    three_releases(gitlab)
    target = tmp_path / "target"
    result = await uv_pip_install(
        proxy.index_url("projects/42"),
        target,
        "corp-util",
        cache_dir=tmp_path / "uv-cache",
        extra=["--exclude-newer", "2026-09-01T00:00:00Z"],
    )
    result.check()
    assert installed(target) == {"corp_util-1.1.dist-info"}


async def test_pip_uploaded_prior_to_installs_the_newest_older_release(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    three_releases(gitlab)
    target = tmp_path / "target"
    result = await pip_install(
        proxy.index_url("projects/42"),
        target,
        "corp-util",
        extra=["--uploaded-prior-to", "2026-05-01T00:00:00Z"],
    )
    result.check()
    assert installed(target) == {"corp_util-1.0.dist-info"}
