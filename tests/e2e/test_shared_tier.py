"""The shared tier: a real moto S3 server behind each proxy's disk, replicas on one bucket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import keys
from proxy.store import DB_NAME, Store
from tests.support.cli_process import serve
from tests.support.clients import installed, publish_app_with_dependency
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import (
    TOKEN,
    Completed,
    ProxyFactory,
    RunningProxy,
    clean_env,
    pip_install,
    run,
)
from tests.support.http import FILES, PROJECT_PAGE, get, get_authorized, wheel_url
from tests.support.metrics import scrape, value
from tests.support.moto_server import BUCKET, SECRET_KEY, MotoServer
from tests.support.polling import eventually

PREFIX = "prod"
TIER = "gitlab_pypi_proxy_shared_tier_requests"


@pytest.fixture
async def replica(
    make_proxy: ProxyFactory, tmp_path: Path, moto: MotoServer
) -> AsyncIterator[ProxyFactory]:
    """Proxies on one bucket, each with its own empty disk (`name` picks the directory)."""

    async def start(name: str = "a", **sections: Any) -> RunningProxy:
        storage = {
            "url": f"s3://{BUCKET}/{PREFIX}",
            "endpoint_url": moto.endpoint,
            "region": "us-east-1",
            "timeout": 1.0,
            **sections.pop("storage", {}),
        }
        return await make_proxy(tmp_path / name, storage=storage, **sections)

    yield start


async def uploads_done(proxy: RunningProxy) -> None:
    tier = proxy.app[keys.SHARED]
    assert tier is not None
    await tier.idle()


async def keys_under(moto: MotoServer, prefix: str) -> list[str]:
    async with moto.client() as s3:
        listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for item in listing.get("Contents", [])]


def blob_key(sha256: str) -> str:
    return f"{PREFIX}/blobs/{sha256}"


async def test_a_verified_fill_goes_to_the_tier_and_fills_another_replica_without_gitlab(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0", payload_size=300_000)
    first = await replica("a")
    status, _, body = await get(wheel_url(first, wheel))
    assert status == 200 and hashlib.sha256(body).hexdigest() == wheel.sha256
    await uploads_done(first)
    async with moto.client() as s3:
        stored = await s3.get_object(
            Bucket=BUCKET, Key=blob_key(wheel.sha256), ChecksumMode="ENABLED"
        )
        content = await stored["Body"].read()
    # Put with the proxy's own SHA-256, which S3 checks on write.
    assert stored["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(wheel.sha256)).decode()
    assert stored["Metadata"] == {"filename": wheel.filename}
    assert content == body

    second = await replica("b")
    status, headers_b, body_b = await get(wheel_url(second, wheel))
    assert status == 200 and body_b == body
    assert headers_b["X-Cache"] == "MISS"
    # The one GET is the first replica's; the second only asked whether this scope lists the
    # file (a HEAD: it never saw the page), as for bytes another scope cached.
    assert [r.method for r in gitlab.requests if r.kind == "file"] == ["GET", "HEAD"]
    # Filled to its own disk: the next request is a local hit.
    status, headers_b, _ = await get(wheel_url(second, wheel))
    assert headers_b["X-Cache"] == "HIT"
    _, samples = await scrape(second)
    assert value(samples, f"{TIER}_total", result="hit") == 1
    assert value(samples, "gitlab_pypi_proxy_upstream_fetched_bytes_total", kind="file") == 0


async def test_a_second_replica_installs_with_pip_without_fetching_a_file_from_gitlab(
    gitlab: FakeGitLab, replica: ProxyFactory, tmp_path: Path
) -> None:
    publish_app_with_dependency(gitlab)
    first = await replica("a")
    (await pip_install(first.index_url("projects/42"), tmp_path / "t1", "corp-app")).check()
    await uploads_done(first)
    files_before = gitlab.counts["file"]
    assert files_before >= 2
    seen = len(gitlab.requests)

    second = await replica("b")
    target = tmp_path / "t2"
    (await pip_install(second.index_url("projects/42"), target, "corp-app")).check()
    assert installed(target) == {"corp_app-2.0.0.dist-info", "corp_util-1.1.0.dist-info"}
    # Not even a Range read for core metadata: the tier's wheel is read whole instead.
    assert [(r.method, r.path) for r in gitlab.requests[seen:] if r.kind == "file"] == []
    assert gitlab.counts["file"] == files_before, "the second replica fetched a file from GitLab"


async def test_a_replica_that_never_saw_a_page_serves_it_stale_from_the_tier_in_an_outage(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    gitlab.add_wheel(42, "corp-lib", "1.0.0")
    first = await replica("a")
    status, _, _ = await get(f"{first.url}{PROJECT_PAGE}corp-lib/")
    assert status == 200
    await uploads_done(first)
    assert await keys_under(moto, f"{PREFIX}/pages/")

    gitlab.down = True
    second = await replica("b")
    status, headers, stale = await get(f"{second.url}{PROJECT_PAGE}corp-lib/")
    assert status == 200
    assert headers["X-Cache"] == "STALE"
    assert b"corp_lib-1.0.0-py3-none-any.whl" in stale


async def put_copy(moto: MotoServer, sha256: str, filename: str, body: bytes, claims: str) -> None:
    """An object at the blob's key as a faulty writer might leave it: `body`, claiming the
    SHA-256 `claims` (moto, unlike S3, stores a claim it does not check)."""
    async with moto.client() as s3:
        await s3.put_object(
            Bucket=BUCKET,
            Key=blob_key(sha256),
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=base64.b64encode(bytes.fromhex(claims)).decode(),
            Metadata={"filename": filename},
        )


async def test_an_object_holding_other_bytes_is_removed_unread_and_gitlab_serves(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0")
    other = b"not the wheel" * 100
    await put_copy(moto, wheel.sha256, wheel.filename, other, hashlib.sha256(other).hexdigest())
    proxy = await replica("a")
    status, _, body = await get(wheel_url(proxy, wheel))
    assert status == 200 and hashlib.sha256(body).hexdigest() == wheel.sha256
    # Found bad at the first look, so not in the tier: no scope to check, GitLab's copy.
    assert [r.method for r in gitlab.requests if r.kind == "file"] == ["GET"]
    _, samples = await scrape(proxy)
    assert value(samples, f"{TIER}_total", result="bad") == 1
    await uploads_done(proxy)
    # Removed, then put again from GitLab's verified copy.
    async with moto.client() as s3:
        stored = await s3.get_object(Bucket=BUCKET, Key=blob_key(wheel.sha256))
        assert await stored["Body"].read() == body


async def test_a_copy_that_does_not_verify_as_it_streams_is_never_served_and_removed(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0", payload_size=200_000)
    # The right length and the right claim, a wrong first byte: found only by hashing.
    forged = bytes([wheel.content[0] ^ 0xFF]) + wheel.content[1:]
    await put_copy(moto, wheel.sha256, wheel.filename, forged, wheel.sha256)
    proxy = await replica("a")
    try:
        _, _, first = await get(wheel_url(proxy, wheel))
    except aiohttp.ClientPayloadError:
        pass  # it had been sent the forged first byte: cut, never completed
    else:
        # It had been sent nothing yet when the copy failed: it got GitLab's bytes instead.
        assert first == wheel.content
    # The fill went on from GitLab, compared with what readers had, and verified.
    status, headers, body = await get(wheel_url(proxy, wheel))
    assert status == 200 and body == wheel.content and headers["X-Cache"] == "HIT"
    assert [r.method for r in gitlab.requests if r.kind == "file"] == ["HEAD", "GET"]
    _, samples = await scrape(proxy)
    assert value(samples, f"{TIER}_total", result="bad") == 1
    await uploads_done(proxy)
    async with moto.client() as s3:
        stored = await s3.get_object(Bucket=BUCKET, Key=blob_key(wheel.sha256))
        assert await stored["Body"].read() == wheel.content


async def test_a_copy_wrong_only_in_its_last_byte_reaches_the_client_as_gitlabs_file(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0", payload_size=200_000)
    # The last byte is never sent before the whole verifies: GitLab's takes its place.
    forged = wheel.content[:-1] + bytes([wheel.content[-1] ^ 0xFF])
    await put_copy(moto, wheel.sha256, wheel.filename, forged, wheel.sha256)
    proxy = await replica("a")
    status, headers, body = await get(wheel_url(proxy, wheel))
    assert status == 200 and body == wheel.content and headers["X-Cache"] == "MISS"
    assert gitlab.counts["file"] == 2  # the scope's HEAD and GitLab's copy
    _, samples = await scrape(proxy)
    assert value(samples, f"{TIER}_total", result="bad") == 1


async def ready(proxy: RunningProxy) -> dict[str, Any]:
    status, _, body = await get(f"{proxy.url}/-/ready")
    assert status == 200
    answer: dict[str, Any] = json.loads(body)
    return answer


async def test_a_tier_that_is_down_costs_nothing_and_ready_says_degraded(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    proxy = await replica("a")
    assert (await ready(proxy))["degraded"] == []
    moto.stop()
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0")
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}corp-lib/")
    assert status == 200
    status, _, body = await get(wheel_url(proxy, wheel))
    assert status == 200 and body == wheel.content
    answer = await ready(proxy)
    assert answer["ready"] is True
    assert any("shared tier" in reason for reason in answer["degraded"]), answer
    _, _, status_page = await get(f"{proxy.url}/-/status")
    assert b"shared tier failed" in status_page
    _, samples = await scrape(proxy)
    assert value(samples, f"{TIER}_total", result="error") >= 1
    assert value(samples, "gitlab_pypi_proxy_shared_tier_uploads_total", result="failed") >= 1


async def test_a_tier_that_hangs_is_given_up_after_its_timeout(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    proxy = await replica("a")
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0")
    moto.pause()
    try:
        started = time.monotonic()
        status, _, body = await get(wheel_url(proxy, wheel))
        took = time.monotonic() - started
        answer = await ready(proxy)
    finally:
        moto.resume()
    assert status == 200 and body == wheel.content
    # storage.timeout is 1 s: one wait for the tier (then it is skipped), then GitLab.
    assert took < 2, took
    assert any("shared tier" in reason for reason in answer["degraded"]), answer
    _, samples = await scrape(proxy)
    assert value(samples, f"{TIER}_total", result="error") >= 1
    assert value(samples, f"{TIER}_total", result="hit") == 0


async def test_the_secret_key_never_reaches_a_log_metrics_or_status_of_a_real_process(
    gitlab: FakeGitLab, moto: MotoServer, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0")
    other = gitlab.add_wheel(42, "corp-lib", "1.1.0")
    async with await serve(
        tmp_path,
        upstream_url=gitlab.url,
        upstream_token=TOKEN,
        server_workers="2",
        storage_url=f"s3://{BUCKET}/{PREFIX}",
        storage_endpoint_url=moto.endpoint,
        storage_timeout="1",
    ) as process:
        base = f"{process.url}{FILES}"
        status, _, _ = await get(f"{base}/{wheel.sha256}/{wheel.filename}")
        assert status == 200
        await eventually(
            lambda: moto_has(moto, blob_key(wheel.sha256)), "the upload to the tier", timeout=10
        )
        moto.pause()
        try:
            status, _, _ = await get(f"{base}/{other.sha256}/{other.filename}")
            assert status == 200
            pages = [await get(f"{process.url}{path}") for path in ("/-/status", "/-/ready")]
            _, _, metrics = await get(f"{process.url}/-/metrics")
        finally:
            moto.resume()
        assert await process.stop() == 0
    log = process.log()
    assert "shared tier" in log  # the failure was logged...
    for text in (log, metrics.decode(), *(body.decode() for _, _, body in pages)):
        assert SECRET_KEY not in text  # ...and nothing of the secret with it


async def moto_has(moto: MotoServer, key: str) -> bool:
    async with moto.client() as s3:
        listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
    return bool(listing.get("Contents"))


async def test_a_storage_url_that_is_not_s3_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    result = await run(
        [sys.executable, "-m", "proxy", "serve"],
        env=clean_env(GITLAB_PYPI_PROXY_STORAGE_URL="https://pypi-cache/prod"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "storage.url" in result.stderr and "s3://bucket[/prefix]" in result.stderr


@pytest.mark.parametrize(
    ("setting", "names"),
    [
        ({"GITLAB_PYPI_PROXY_STORAGE_REGION": "eu west 1"}, "storage.region"),
        ({"AWS_PROFILE": "no-such-profile"}, "no-such-profile"),
        ({"AWS_ACCESS_KEY_ID": "AKIATESTSHAREDTIER01"}, "AWS_SECRET_ACCESS_KEY"),
    ],
    ids=["region", "profile", "partial-credentials"],
)
@pytest.mark.parametrize("command", ["serve", "verify"])
async def test_an_s3_client_that_cannot_be_made_stops_the_command_in_one_line(
    tmp_path: Path, command: str, setting: dict[str, str], names: str
) -> None:
    """Made from the settings and the AWS environment: a mistake in either is named once,
    before any worker starts, not met as a traceback in each."""
    env = {name: value for name, value in clean_env().items() if not name.startswith("AWS_")}
    env.update(
        GITLAB_PYPI_PROXY_UPSTREAM_URL="http://127.0.0.1:9",
        GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path / "cache"),
        GITLAB_PYPI_PROXY_SERVER_WORKERS="2",
        GITLAB_PYPI_PROXY_STORAGE_URL=f"s3://{BUCKET}/{PREFIX}",
        GITLAB_PYPI_PROXY_STORAGE_ENDPOINT_URL="http://127.0.0.1:9",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        **setting,
    )
    args = [sys.executable, "-m", "proxy", command]
    if command == "verify":
        args.append("--quiet")
        (tmp_path / "cache").mkdir()
        await (await Store.open(tmp_path / "cache" / DB_NAME)).close()
    result = await run(args, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "config error: storage" in line and names in line, line
    assert "Traceback" not in result.stderr


async def verify(moto: MotoServer, cache: Path) -> Completed:
    """`gitlab-pypi-proxy verify` of `cache` and the bucket, configured by environment alone."""
    return await run(
        [sys.executable, "-m", "proxy", "verify", "--quiet"],
        env=clean_env(
            GITLAB_PYPI_PROXY_CACHE_DIR=str(cache),
            GITLAB_PYPI_PROXY_STORAGE_URL=f"s3://{BUCKET}/{PREFIX}",
            GITLAB_PYPI_PROXY_STORAGE_ENDPOINT_URL=moto.endpoint,
        ),
    )


async def test_verify_removes_the_tiers_bad_objects_and_keeps_the_good(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer, tmp_path: Path
) -> None:
    good = gitlab.add_wheel(42, "corp-lib", "1.0.0")
    proxy = await replica("a")
    await get(f"{proxy.url}{PROJECT_PAGE}corp-lib/")
    await get(wheel_url(proxy, good))
    await uploads_done(proxy)
    bad = gitlab.add_wheel(42, "corp-lib", "1.1.0")
    await put_copy(moto, bad.sha256, bad.filename, b"rotten", bad.sha256)
    async with moto.client() as s3:
        await s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/pages/{'0' * 64}", Body=b"{}")
    result = await verify(moto, tmp_path / "a")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"bad (removed): tier {blob_key(bad.sha256)}" in result.stdout
    assert f"bad (removed): tier {PREFIX}/pages/{'0' * 64}" in result.stdout
    left = await keys_under(moto, PREFIX)
    assert blob_key(good.sha256) in left
    assert blob_key(bad.sha256) not in left
    assert len([key for key in left if "/pages/" in key]) == 1  # the real page's copy


async def test_verify_keeps_a_good_page_copy_bigger_than_64_kib(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer, tmp_path: Path
) -> None:
    """A page of a few hundred files is a copy of well over 64 KiB: verify reads it whole."""
    gitlab.add_many_files(42, "corp-big", "1.0.0", 400)
    proxy = await replica("a")
    assert (await get(f"{proxy.url}{PROJECT_PAGE}corp-big/"))[0] == 200
    await uploads_done(proxy)
    async with moto.client() as s3:
        listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/pages/")
    (copy,) = listing["Contents"]
    assert copy["Size"] > 64 * 1024
    result = await verify(moto, tmp_path / "a")
    assert result.returncode == 0, result.stdout + result.stderr
    assert copy["Key"] in await keys_under(moto, f"{PREFIX}/pages/")


async def test_a_page_copy_a_later_release_wrote_is_left_to_it_by_serving_and_verify(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer, tmp_path: Path
) -> None:
    """Replicas upgrade one by one: a copy in a format this release cannot read is another
    release's last good page, not a bad object."""
    gitlab.add_wheel(42, "corp-lib", "1.0.0")
    first = await replica("a")
    page = f"{PROJECT_PAGE}corp-lib/"
    assert (await get(first.url + page))[0] == 200
    await uploads_done(first)
    (key,) = await keys_under(moto, f"{PREFIX}/pages/")
    async with moto.client() as s3:
        document = json.loads(await (await s3.get_object(Bucket=BUCKET, Key=key))["Body"].read())
        document["v"] += 1
        await s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(document).encode())
    gitlab.down = True
    second = await replica("b")
    status, _, _ = await get(second.url + page)
    assert status != 200  # not readable here: no copy to serve
    assert await keys_under(moto, f"{PREFIX}/pages/") == [key]
    result = await verify(moto, tmp_path / "a")
    assert result.returncode == 0, result.stdout + result.stderr
    assert await keys_under(moto, f"{PREFIX}/pages/") == [key]


async def test_the_tiers_page_copy_answers_only_whom_a_stored_copy_would(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    """Clients' own credentials (passthrough): a stored copy answers only those GitLab let
    see the page through this proxy, and the tier's copy no one else either."""
    alice, eve = "glpat-alice-reads-42", "glpat-eve-reads-nothing"
    gitlab.tokens[alice] = {42}
    gitlab.tokens[eve] = set()
    gitlab.add_wheel(42, "corp-lib", "1.0.0")
    upstream = {"credentials": "passthrough", "token": ""}
    first = await replica("a", upstream=upstream)
    page = f"{PROJECT_PAGE}corp-lib/"
    assert (await get_authorized(first.url + page, alice))[0] == 200
    await uploads_done(first)
    assert await keys_under(moto, f"{PREFIX}/pages/")
    gitlab.down = True
    second = await replica("b", upstream=upstream)
    status, _, body = await get_authorized(second.url + page, eve)
    assert status != 200 and b"corp_lib" not in body


async def test_many_clients_of_one_fill_make_one_upload_that_delays_none_of_them(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0", payload_size=1024 * 1024)
    # A tier timeout no loaded machine outlasts between a fill's end and its clients' last byte.
    proxy = await replica("a", storage={"timeout": 3.0})
    # The page first, as pip does: the scope lists the file, nothing to ask GitLab about it.
    await get(f"{proxy.url}{PROJECT_PAGE}corp-lib/")
    await uploads_done(proxy)
    _, samples = await scrape(proxy)
    before = {
        result: value(samples, "gitlab_pypi_proxy_shared_tier_uploads_total", result=result)
        for result in ("ok", "failed")
    }  # the page copy's
    gitlab.file_chunk_delay = 0.02  # about 0.3 s of download: the tier hangs before its end
    downloads = [asyncio.create_task(get(wheel_url(proxy, wheel))) for _ in range(5)]
    await eventually(lambda: gitlab.counts["file"] == 1, "the download started", interval=0.01)
    moto.pause()
    try:
        answers = await asyncio.gather(*downloads)
        # The upload waits on the hanging tier for its timeout, in the background: the clients
        # had their files while it had neither succeeded nor failed.
        _, samples = await scrape(proxy)
        for result, count in before.items():
            uploads = value(samples, "gitlab_pypi_proxy_shared_tier_uploads_total", result=result)
            assert uploads == count, result
        await uploads_done(proxy)
    finally:
        moto.resume()
    assert all(status == 200 and body == wheel.content for status, _, body in answers)
    _, samples = await scrape(proxy)
    assert value(samples, "gitlab_pypi_proxy_shared_tier_uploads_total", result="failed") == 1
    assert gitlab.counts["file"] == 1
    # Once the tier answers again, the next blob goes up as usual: one upload for one fill.
    other = gitlab.add_wheel(42, "corp-lib", "1.1.0")
    gitlab.file_chunk_delay = 0.0
    await get(f"{proxy.url}{PROJECT_PAGE}corp-lib/")
    await asyncio.gather(*(get(wheel_url(proxy, other)) for _ in range(5)))
    await uploads_done(proxy)
    _, samples = await scrape(proxy)
    assert value(samples, "gitlab_pypi_proxy_shared_tier_uploads_total", result="ok") >= 1
    assert await keys_under(moto, blob_key(other.sha256)) == [blob_key(other.sha256)]


async def test_a_tier_that_stops_mid_file_hands_the_same_download_over_to_gitlab(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=64 * 1024 * 1024)
    await put_copy(moto, wheel.sha256, wheel.filename, wheel.content, wheel.sha256)
    proxy = await replica("a")
    await get(f"{proxy.url}{PROJECT_PAGE}corp-big/")
    files = proxy.app[keys.FILES]

    def tier_sending() -> bool:
        fill = files.fills.get(wheel.sha256)
        return fill is not None and fill.from_shared and fill.written > 0

    download = asyncio.create_task(get(wheel_url(proxy, wheel)))
    await eventually(tier_sending, "the tier sending the file", interval=0.001)
    moto.pause()
    try:
        status, _, body = await download
    finally:
        moto.resume()
    # GitLab's bytes took over where the tier's stopped (compared with those already sent):
    # the client never noticed.
    assert status == 200 and body == wheel.content
    assert [r.method for r in gitlab.requests if r.kind == "file"] == ["GET"]
    _, samples = await scrape(proxy)
    assert value(samples, f"{TIER}_total", result="hit") == 1
    assert value(samples, f"{TIER}_total", result="error") >= 1


async def test_with_clients_credentials_the_tiers_bytes_reach_only_whom_gitlab_lets_have_them(
    gitlab: FakeGitLab, replica: ProxyFactory, moto: MotoServer
) -> None:
    alice, eve = "glpat-alice-reads-42", "glpat-eve-reads-nothing"
    gitlab.tokens[alice] = {42}
    gitlab.tokens[eve] = set()
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0")
    upstream = {"credentials": "passthrough", "token": ""}
    first = await replica("a", upstream=upstream)
    status, _, _ = await get_authorized(wheel_url(first, wheel), alice)
    assert status == 200
    await uploads_done(first)
    assert await moto_has(moto, blob_key(wheel.sha256))

    second = await replica("b", upstream=upstream)
    status, _, body = await get_authorized(wheel_url(second, wheel), eve)
    assert status in (403, 404) and wheel.content not in body
    status, _, body = await get_authorized(wheel_url(second, wheel), alice)
    assert status == 200 and body == wheel.content
    # Each client asked about with its own credentials; the bytes came from the tier.
    assert [r.method for r in gitlab.requests if r.kind == "file"].count("GET") == 1
