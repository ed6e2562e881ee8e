"""Issue 11 item 5: odd GitLab answers (Retry-After, credentials in a Location, HEAD sizes)."""

from __future__ import annotations

import email.utils
import logging

import aiohttp
import pytest

from proxy.upstream import MAX_RETRY_AFTER, parse_retry_after
from tests.support.fake_gitlab import FakeFile, FakeGitLab
from tests.support.harness import ProxyFactory, RunningProxy
from tests.support.http import PROJECT_PAGE, get, wheel_url

NOW = 1_000_000_000.0


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("99999999999999999999", MAX_RETRY_AFTER),
        ("9" * 5000, MAX_RETRY_AFTER),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),
        (email.utils.formatdate(NOW + 10**8, usegmt=True), MAX_RETRY_AFTER),
        (None, None),
        ("", None),
        ("inf", None),
        ("1e999", None),
        ("nan", None),
        ("-5", None),
        ("1.5", None),
        ("\N{SUPERSCRIPT TWO}", None),
        ("soon", None),
    ],
)
def test_retry_after_is_delta_seconds_or_an_http_date_capped_at_an_hour(
    raw: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(raw, now=NOW) == seconds


@pytest.mark.parametrize(
    ("retry_after", "passed_on"),
    [("inf", None), ("1e999", None), ("99999999999999", str(int(MAX_RETRY_AFTER)))],
)
async def test_an_absurd_retry_after_neither_breaks_pages_nor_holds_gitlab_for_long(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, retry_after: str, passed_on: str | None
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    # index_ttl 0: each request below goes to GitLab, or to its stored copy when that fails.
    proxy = await make_proxy(cache={"index_ttl": 0})
    page = f"{proxy.url}{PROJECT_PAGE}corp-util/"
    status, headers, good = await get(page)
    assert (status, headers["X-Cache"]) == (200, "MISS")

    gitlab.fail_status, gitlab.retry_after = 503, retry_after
    for _ in range(3):
        status, headers, body = await get(page)
        assert (status, headers["X-Cache"], body) == (200, "STALE", good)
    # A page never fetched has no stored copy: a clear 503, and a wait of at most an hour
    # (none at all for nonsense, as if GitLab had not sent one).
    status, headers, body = await get(f"{proxy.url}{PROJECT_PAGE}never-seen/")
    assert status == 503
    assert b'"message"' in body
    assert headers.get("Retry-After") == passed_on


async def test_an_http_date_retry_after_is_honoured(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    # A load balancer's 503 (Rack::Attack's 429 always counts seconds).
    gitlab.fail_status = 503
    gitlab.retry_after = email.utils.formatdate(usegmt=True, timeval=None)
    status, headers, _ = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
    # A date now or past: ask again at once.
    assert (status, headers["Retry-After"]) == (503, "0")


async def test_a_redirect_with_credentials_in_its_location_is_a_clean_error(
    gitlab: FakeGitLab,
    proxy: RunningProxy,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.object_storage = True
    signed = gitlab.object_store.signed_url

    def with_userinfo(file: FakeFile, method: str = "GET") -> str:
        return signed(file, method).replace("http://", "http://someone:hunter2@", 1)

    monkeypatch.setattr(gitlab.object_store, "signed_url", with_userinfo)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            status, _, body = await get(wheel_url(proxy, wheel))
            assert status == 502
            assert b"user name or password" in body
            assert b"hunter2" not in body and b"interrupted" not in body
    # Never followed, so object storage never saw the credential (nor any request).
    assert gitlab.counts["object"] == 0
    assert not [r for r in caplog.records if "Task exception" in r.getMessage()]
    assert "hunter2" not in caplog.text


async def test_head_of_an_uncached_file_reports_only_a_verified_size(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.corrupt_files = True
    async with aiohttp.ClientSession() as session:
        async with session.head(wheel_url(proxy, wheel)) as resp:
            # GitLab said a length; the bytes behind it did not verify, so no 200 with a size.
            assert resp.status == 502
        gitlab.corrupt_files = False
        async with session.head(wheel_url(proxy, wheel)) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(wheel.content))
        async with session.get(wheel_url(proxy, wheel)) as resp:
            assert (resp.status, resp.headers["X-Cache"]) == (200, "HIT")
