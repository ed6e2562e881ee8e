"""Issue 4 in one process: single flight under load, stale-if-error, 429, negative cache, faults."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import aiohttp
import pytest

from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import ProxyFactory, RunningProxy
from tests.support.http import PROJECT_PAGE, get, wheel_url
from tests.support.polling import eventually

FILES = "/api/v4/projects/42/packages/pypi/files"


def stored_blobs(cache: Path) -> list[Path]:
    """The distributions on disk; a wheel's METADATA blob (PEP 658, extracted in the background
    as soon as the wheel is stored) is left out, known by its first bytes."""
    return [
        p
        for p in (cache / "blobs").rglob("*")
        if p.is_file() and not p.read_bytes().startswith(b"Metadata-Version:")
    ]


async def test_fifty_cold_clients_share_one_upstream_fetch_and_all_stream_early(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    # About 1 MiB sent as 16 paced chunks: the download lasts long enough for late joiners.
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=1024 * 1024)
    gitlab.file_chunk_delay = 0.05
    url = wheel_url(proxy, wheel)
    early: list[bool] = []

    async def client(session: aiohttp.ClientSession, start_after: float) -> bytes:
        await asyncio.sleep(start_after)
        async with session.get(url) as resp:
            assert resp.status == 200
            first = await resp.content.readany()
            # status is set on the fake's record only once its whole body has been sent.
            upstream = [r for r in gitlab.requests if r.kind == "file"]
            early.append(len(upstream) == 1 and upstream[0].status == 0)
            return first + await resp.read()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # Spread over the first half of the download: most clients join a fill in progress.
        bodies = await asyncio.gather(*(client(session, i * 0.008) for i in range(50)))

    assert gitlab.counts["file"] == 1
    assert all(hashlib.sha256(b).hexdigest() == wheel.sha256 for b in bodies)
    assert early == [True] * 50, "some client got nothing before upstream finished"


async def test_a_client_that_disconnects_does_not_cancel_the_fill(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=512 * 1024)
    gitlab.file_chunk_delay = 0.03
    url = wheel_url(proxy, wheel)
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        await resp.content.readany()
        resp.close()  # hang up mid-body
    record = next(r for r in gitlab.requests if r.kind == "file")
    await eventually(lambda: record.status, "the upstream download finished", interval=0.02)
    assert record.status == 200, "the upstream download was abandoned with its client"
    # Served by the same fill (still verifying, or done): never a second upstream fetch.
    status, _, body = await get(url)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert gitlab.counts["file"] == 1


async def test_fifty_cold_page_requests_make_one_upstream_request(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.delay = 0.2
    results = await asyncio.gather(
        *(get(f"{proxy.url}{PROJECT_PAGE}corp-util/") for _ in range(50))
    )
    assert {status for status, _, _ in results} == {200}
    assert len({body for _, _, body in results}) == 1
    assert gitlab.counts["page"] == 1


@pytest.mark.parametrize("fault", ["down", "500", "timeout", "429"])
async def test_stale_if_error_then_one_background_refresh(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, fault: str
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    # index_ttl 0: every request would go upstream, so each answer below shows what did.
    proxy = await make_proxy(
        cache={"index_ttl": 0}, upstream={"timeout": 0.5, "retry_interval": 0.3}
    )
    page = f"{proxy.url}{PROJECT_PAGE}corp-util/"
    status, headers, good = await get(page)
    assert (status, headers["X-Cache"]) == (200, "MISS")

    if fault == "down":
        gitlab.down = True
    elif fault == "timeout":
        gitlab.delay = 2.0
    else:
        gitlab.fail_status = int(fault)
        gitlab.retry_after = 1
    status, headers, body = await get(page)
    assert (status, headers["X-Cache"], body) == (200, "STALE", good)
    assert headers["Warning"].startswith("110")
    asked = gitlab.counts["page"] + gitlab.counts["notfound"]
    # Within retry_interval (or Retry-After): served stale at once, GitLab not asked.
    for _ in range(5):
        status, headers, body = await get(page)
        assert (status, headers["X-Cache"], body) == (200, "STALE", good)
    assert gitlab.counts["page"] + gitlab.counts["notfound"] == asked

    gitlab.down, gitlab.delay, gitlab.fail_status = False, 0.0, None
    gitlab.add_wheel(42, "corp-util", "2.0.0")
    await asyncio.sleep(1.05 if fault == "429" else 0.35)
    # Due again: this client still gets the stored copy at once, and one refresh starts.
    status, headers, body = await get(page)
    assert (status, headers["X-Cache"]) == (200, "STALE")
    await eventually(lambda: gitlab.counts["page"] > asked, "one refresh started", interval=0.02)
    await asyncio.sleep(0.05)
    assert gitlab.counts["page"] == asked + 1
    status, headers, body = await get(page)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert b"corp_util-2.0.0" in body


@pytest.mark.parametrize(
    ("fault", "status", "words"),
    [("down", 503, b"unreachable"), ("500", 503, b"500"), ("timeout", 504, b"did not answer")],
)
async def test_nothing_cached_gives_a_clear_json_error(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, fault: str, status: int, words: bytes
) -> None:
    proxy = await make_proxy(upstream={"timeout": 0.5})
    if fault == "down":
        gitlab.down = True
    elif fault == "timeout":
        gitlab.delay = 2.0
    else:
        gitlab.fail_status = 500
    got, headers, body = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    assert b'"message"' in body and words in body


async def test_429_is_honoured_by_waiting_for_retry_after(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.fail_status = 429
    gitlab.retry_after = 1
    status, headers, body = await get(f"{proxy.url}{PROJECT_PAGE}corp-util/")
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert b"rate limiting" in body
    assert len(gitlab.requests) == 1
    # Other pages and files on the same GitLab wait too: no request until Retry-After passes.
    for path in [f"{PROJECT_PAGE}corp-util/", f"{PROJECT_PAGE}other/", PROJECT_PAGE]:
        status, headers, _ = await get(f"{proxy.url}{path}")
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
    status, _, _ = await get(wheel_url(proxy, wheel))
    assert status == 503
    assert len(gitlab.requests) == 1

    gitlab.fail_status = None
    await asyncio.sleep(1.05)
    status, _, _ = await get(wheel_url(proxy, wheel))
    assert status == 200
    status, _, _ = await get(f"{proxy.url}{PROJECT_PAGE}other/")
    assert status == 302  # GitLab's forwarding: asked again, answered
    assert len(gitlab.requests) == 3


async def test_upstream_404_is_remembered_for_negative_ttl(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.forwarding = False
    proxy = await make_proxy(cache={"negative_ttl": 0.4})
    missing_file = f"{proxy.url}{FILES}/{'0' * 64}/absent-1.0.tar.gz"
    for _ in range(3):
        assert (await get(f"{proxy.url}{PROJECT_PAGE}absent/"))[0] == 404
        assert (await get(missing_file))[0] == 404
    assert gitlab.counts["notfound"] == 2
    await asyncio.sleep(0.45)
    assert (await get(f"{proxy.url}{PROJECT_PAGE}absent/"))[0] == 404
    assert (await get(missing_file))[0] == 404
    assert gitlab.counts["notfound"] == 4


async def test_forwarding_answer_is_remembered_too(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    for _ in range(3):
        status, headers, _ = await get(f"{proxy.url}{PROJECT_PAGE}requests/")
        assert status == 302
        assert headers["Location"].endswith("/simple/requests/")
    assert gitlab.counts["forward"] == 1


async def test_dropped_connection_mid_body_stores_nothing_and_next_request_retries(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", payload_size=600_000)
    gitlab.drop_files = True
    with pytest.raises(aiohttp.ClientPayloadError):
        await get(wheel_url(proxy, wheel))
    assert stored_blobs(tmp_path / "cache") == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    gitlab.drop_files = False
    status, headers, body = await get(wheel_url(proxy, wheel))
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert gitlab.counts["file"] == 2


async def test_a_blob_damaged_on_disk_is_not_served_but_fetched_again(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = wheel_url(proxy, wheel)
    assert (await get(url))[1]["X-Cache"] == "MISS"
    [blob] = stored_blobs(tmp_path / "cache")
    damaged = bytearray(blob.read_bytes())
    damaged[100] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    status, headers, body = await get(url)
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert gitlab.counts["file"] == 2
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == wheel.sha256


def _chattr(flag: str, path: Path) -> bool:
    import subprocess

    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


async def test_unwritable_cache_serves_a_verified_pass_through_and_says_so(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cached = gitlab.add_wheel(42, "corp-util", "1.0.0")
    fresh = gitlab.add_wheel(42, "corp-new", "1.0.0", payload_size=400_000)
    assert (await get(wheel_url(proxy, cached)))[0] == 200
    tmp = tmp_path / "cache" / "tmp"
    # Immutable: even root cannot create a file in it (EPERM), the way a read-only mount acts.
    if not _chattr("+i", tmp):
        pytest.skip("chattr +i is not available here")
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(4):
                status, headers, body = await get(wheel_url(proxy, fresh))
                assert (status, headers["X-Cache"]) == (200, "BYPASS")
                assert hashlib.sha256(body).hexdigest() == fresh.sha256
            status, headers, _ = await get(wheel_url(proxy, cached))
            assert (status, headers["X-Cache"]) == (200, "HIT")
            status, _, ready = await get(f"{proxy.url}/-/ready")
            assert status == 200
            assert b"not writable" in ready
            # A lying upstream is still never completed, even without a disk to verify on.
            gitlab.corrupt_files = True
            with pytest.raises(aiohttp.ClientPayloadError):
                await get(wheel_url(proxy, fresh))
    finally:
        _chattr("-i", tmp)
    assert len(stored_blobs(tmp_path / "cache")) == 1
    assert gitlab.counts["file"] == 1 + 5
    warnings = [r for r in caplog.records if r.name == "proxy.cachehealth"]
    assert len(warnings) == 1, "logged per request, not once per minute"


async def test_full_disk_serves_a_pass_through(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    import subprocess

    cache = tmp_path / "cache"
    cache.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(cache)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        # Leave about 17 MiB: a 2 MiB file no longer fits with the 16 MiB reserve.
        (cache / "ballast").write_bytes(b"\0" * 3 * 1024 * 1024)
        wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=2 * 1024 * 1024)
        proxy = await make_proxy(cache_dir=cache)
        for _ in range(2):
            status, headers, body = await get(wheel_url(proxy, wheel))
            assert (status, headers["X-Cache"]) == (200, "BYPASS")
            assert hashlib.sha256(body).hexdigest() == wheel.sha256
        status, _, ready = await get(f"{proxy.url}/-/ready")
        assert status == 200
        assert b"disk full" in ready
        assert stored_blobs(cache) == []
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=True)
