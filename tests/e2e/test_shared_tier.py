"""The shared tier: a real moto S3 server behind each proxy's disk, replicas on one bucket."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy import keys
from tests.support.clients import installed, publish_app_with_dependency
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import ProxyFactory, RunningProxy, pip_install
from tests.support.http import PROJECT_PAGE, get, wheel_url
from tests.support.metrics import scrape, value
from tests.support.moto_server import SECRET_KEY, MotoServer

BUCKET = "pypi-cache"
PREFIX = "prod"
TIER = "gitlab_pypi_proxy_shared_tier_requests"


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """moto's S3 on loopback with one bucket; its credentials in this process's environment."""
    with MotoServer() as server:
        server.create_bucket(BUCKET)
        for name, secret in server.credentials.items():
            monkeypatch.setenv(name, secret)
        yield server


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


async def test_the_credentials_never_show_in_logs_metrics_or_status(
    gitlab: FakeGitLab,
    replica: ProxyFactory,
    moto: MotoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wheel = gitlab.add_wheel(42, "corp-lib", "1.0.0")
    proxy = await replica("a")
    await get(wheel_url(proxy, wheel))
    await uploads_done(proxy)
    moto.pause()
    try:
        other = gitlab.add_wheel(42, "corp-lib", "1.1.0")
        await get(wheel_url(proxy, other))
        _, _, status_page = await get(f"{proxy.url}/-/status")
        _, _, ready = await get(f"{proxy.url}/-/ready")
        metrics, _ = await scrape(proxy)
    finally:
        moto.resume()
    for text in (caplog.text, status_page.decode(), ready.decode(), metrics):
        assert SECRET_KEY not in text
