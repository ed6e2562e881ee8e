"""Issue 7: /-/metrics, /-/ready and accel_redirect, on a real proxy in front of the fake GitLab."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import aiohttp
import pytest

from proxy import keys
from proxy.metrics import TRACKED_PACKAGES, Metrics
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, pip_install
from tests.support.http import get
from tests.support.metrics import FILES_ROUTE, scrape, value
from tests.support.polling import eventually
from tests.support.wheels import wheel_metadata

PAGE_ROUTE = "/api/v4/projects/{id}/packages/pypi/simple/{name}/"


async def test_metrics_count_routes_hits_misses_bytes_and_latency(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    util = gitlab.add_wheel(42, "corp-util", "1.0.0")
    app = gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["corp-util"])
    index = proxy.index_url("projects/42")
    (await pip_install(index, tmp_path / "one", "corp-app")).check()
    (await pip_install(index, tmp_path / "two", "corp-app")).check()
    # A second file request within the page TTL: the pages are hits now too.
    status, _, _ = await get(f"{proxy.url}/api/v4/projects/42/packages/pypi/simple/corp-app/")
    assert status == 200

    text, samples = await scrape(proxy)
    p = "gitlab_pypi_proxy"
    # Each install reads both wheels' PEP 658 metadata, then downloads both wheels. The first
    # metadata request of each wheel is the miss that brings the wheel into the cache.
    assert value(samples, f"{p}_requests_total", route=FILES_ROUTE, status="200") == 8
    assert value(samples, f"{p}_requests_total", route=PAGE_ROUTE, status="200") == 5
    assert value(samples, f"{p}_cache_misses_total", kind="file") == 2
    assert value(samples, f"{p}_cache_hits_total", kind="file") == 6
    assert value(samples, f"{p}_cache_misses_total", kind="page") == 2
    assert value(samples, f"{p}_cache_hits_total", kind="page") == 3
    sizes = len(util.content) + len(app.content)
    metadata = len(wheel_metadata(util.content)) + len(wheel_metadata(app.content))
    assert value(samples, f"{p}_cache_served_bytes_total") == 2 * sizes + metadata
    assert value(samples, f"{p}_upstream_fetched_bytes_total", kind="file") == sizes
    assert value(samples, f"{p}_upstream_fetched_bytes_total", kind="page") > 0
    assert value(samples, f"{p}_cache_size_bytes") == sizes + metadata
    assert value(samples, f"{p}_cache_files") == 4
    assert value(samples, f"{p}_cache_max_size_bytes") == proxy.settings.cache.max_size
    assert value(samples, f"{p}_fills_in_flight") == 0
    assert value(samples, f"{p}_cache_evictions_total") == 0
    # Every upstream request was timed: two pages and two files.
    assert value(samples, f"{p}_upstream_latency_seconds_count", kind="page") == 2
    assert value(samples, f"{p}_upstream_latency_seconds_count", kind="file") == 2
    assert value(samples, "process_resident_memory_bytes") > 0
    # Labels name route templates, never a filename, a digest or a credential.
    for secret in (util.filename, util.sha256, "corp-app", TOKEN):
        assert secret not in text


async def test_labels_stay_bounded_and_secret_free(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    basic = base64.b64encode(f"someone:{TOKEN}".encode()).decode()
    for n in range(30):
        await get(
            f"{proxy.url}/random/{n}/path?private_token={TOKEN}",
            headers={"Authorization": f"Basic {basic}"},
        )
    await get(f"{proxy.url}/api/v4/projects/42/packages/pypi/files/nothex/x-1.0.tar.gz")
    text, samples = await scrape(proxy)
    assert value(samples, "gitlab_pypi_proxy_requests_total", route="unmatched", status="404") == 30
    assert value(samples, "gitlab_pypi_proxy_requests_total", route=FILES_ROUTE, status="400") == 1
    assert "random" not in text
    assert TOKEN not in text
    assert basic not in text


async def test_upstream_errors_and_stale_pages_are_counted(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cache={"index_ttl": 0})
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    page = f"{proxy.url}/api/v4/projects/42/packages/pypi/simple/corp-util/"
    assert (await get(page))[0] == 200
    # Retry-After: 0, so the proxy may ask again at once (it honours a longer one by waiting).
    gitlab.retry_after = 0
    gitlab.fail_status = 503
    status, headers, _ = await get(page)
    assert (status, headers["X-Cache"]) == (200, "STALE")
    gitlab.fail_status = None
    gitlab.down = True
    assert (await get(page))[0] == 200

    # The stored copy is answered at once; the retry that meets the dead GitLab runs behind it.
    async def retried() -> bool:
        _, samples = await scrape(proxy)
        return value(samples, "gitlab_pypi_proxy_upstream_errors_total", kind="page") >= 2

    await eventually(retried, "the background retry counted as an upstream error")
    _, samples = await scrape(proxy)
    assert value(samples, "gitlab_pypi_proxy_cache_stale_total") == 2
    assert value(samples, "gitlab_pypi_proxy_upstream_errors_total", kind="page") == 2
    metrics = proxy.app[keys.METRICS]
    messages = [e.message for e in metrics.recent_errors]
    assert messages[0] == "GitLab is unreachable: server disconnected"
    assert messages[1].startswith("127.0.0.1 answered 503 for /api/v4/projects/42/")


async def test_corrupt_file_is_an_upstream_error_on_record(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.corrupt_files = True
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    errors = proxy.app[keys.METRICS].recent_errors
    assert [e.message for e in errors] == [f"sha256 mismatch for {wheel.filename}: not stored"]
    _, samples = await scrape(proxy)
    assert value(samples, "gitlab_pypi_proxy_cache_size_bytes") == 0


def test_package_counts_are_bounded() -> None:
    metrics = Metrics()
    for _ in range(5):
        metrics.package_requested("popular")
    for n in range(TRACKED_PACKAGES * 3):
        metrics.package_requested(f"once-{n}")
    assert len(metrics.packages) <= TRACKED_PACKAGES
    assert metrics.packages.most_common(1) == [("popular", 5)]


async def test_ready_checks_upstream_unless_offline(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    online = await make_proxy(cache_dir=tmp_path / "a")
    status, _, body = await get(f"{online.url}/-/ready")
    assert status == 200, body
    assert gitlab.requests[-1].path == "/"
    # The probe carries no credentials: it only asks whether GitLab answers at all.
    assert "Authorization" not in gitlab.requests[-1].headers
    probes = gitlab.counts["notfound"]
    gitlab.down = True
    # Within seconds of a good answer GitLab is not asked again; a fresh proxy must ask.
    status, _, body = await get(f"{online.url}/-/ready")
    assert status == 200, body
    assert gitlab.counts["notfound"] == probes
    fresh = await make_proxy(cache_dir=tmp_path / "b")
    status, _, body = await get(f"{fresh.url}/-/ready")
    assert status == 503
    assert b"upstream is unreachable" in body
    offline = await make_proxy(cache_dir=tmp_path / "c", cache={"offline": True})
    status, _, body = await get(f"{offline.url}/-/ready")
    assert status == 200, body


async def test_accel_redirect_hands_hits_to_nginx(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(server={"accel_redirect": "/_blobs/"})
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    status, headers, body = await get(url)
    # A miss is streamed by the proxy itself: the blob is not on disk yet.
    assert (status, headers["X-Cache"], hashlib.sha256(body).hexdigest()) == (
        200,
        "MISS",
        wheel.sha256,
    )
    assert "X-Accel-Redirect" not in headers
    status, headers, body = await get(url)
    sha = wheel.sha256
    assert status == 200
    assert headers["X-Accel-Redirect"] == f"/_blobs/{sha[:2]}/{sha[2:4]}/{sha}"
    assert body == b""
    assert headers["X-Cache"] == "HIT"
    assert headers["Content-Disposition"] == f'attachment; filename="{wheel.filename}"'
    assert headers["X-Checksum-Sha256"] == sha
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # The path nginx is sent to is really where the blob lives.
    blob = proxy.settings.cache.dir / "blobs" / sha[:2] / sha[2:4] / sha
    assert blob.read_bytes() == wheel.content
