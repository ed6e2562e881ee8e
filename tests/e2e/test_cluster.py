"""Issue 18: replicas share uploads' invalidations through a real redis-server."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.cluster import UNREACHABLE
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, pip_install, twine
from tests.support.http import get
from tests.support.metrics import scrape, value
from tests.support.polling import eventually
from tests.support.redis_server import PASSWORD, RedisServer
from tests.support.wheels import make_wheel

UPLOAD = "/api/v4/projects/42/packages/pypi"
METRIC = "gitlab_pypi_proxy_cluster"


async def replicas(
    make_proxy: ProxyFactory, tmp_path: Path, redis_url: str
) -> tuple[RunningProxy, RunningProxy]:
    """Two replicas of one Redis, each with a cache directory of its own."""
    a = await make_proxy(cache_dir=tmp_path / "a", cluster={"redis_url": redis_url})
    b = await make_proxy(cache_dir=tmp_path / "b", cluster={"redis_url": redis_url})
    return a, b


async def upload(proxy: RunningProxy, tmp_path: Path, version: str) -> None:
    wheel = tmp_path / f"corp_util-{version}-py3-none-any.whl"
    filename, content = make_wheel("corp-util", version)
    assert wheel.name == filename
    wheel.write_bytes(content)
    (await twine(proxy.url + UPLOAD, TOKEN, wheel)).check()


async def installs(proxy: RunningProxy, target: Path, version: str) -> None:
    """Real pip through `proxy` installs `version`, the newest, of corp-util."""
    (await pip_install(proxy.index_url("projects/42"), target, "corp-util")).check()
    assert (target / f"corp_util-{version}.dist-info").is_dir(), sorted(
        p.name for p in target.iterdir()
    )


async def ready(proxy: RunningProxy) -> dict[str, Any]:
    status, _, body = await get(f"{proxy.url}/-/ready")
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


async def test_upload_through_one_replica_is_installable_through_the_other_at_once(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    a, b = await replicas(make_proxy, tmp_path, redis_server.url)
    assert (await ready(b))["degraded"] == []
    # B has the page cached, fresh for index_ttl (300 s).
    await installs(b, tmp_path / "one", "1.0.0")
    pages_before = gitlab.counts["page"]
    await installs(b, tmp_path / "two", "1.0.0")
    assert gitlab.counts["page"] == pages_before, "B answers from its cached page"

    await upload(a, tmp_path, "1.1.0")
    await installs(b, tmp_path / "three", "1.1.0")

    # A told the others; it did not act on its own message, B did.
    _, samples_a = await scrape(a)
    _, samples_b = await scrape(b)
    assert value(samples_a, f"{METRIC}_invalidations_total", kind="sent") == 1
    assert value(samples_a, f"{METRIC}_invalidations_total", kind="received") == 0
    assert value(samples_b, f"{METRIC}_invalidations_total", kind="received") == 1
    assert value(samples_b, f"{METRIC}_redis_connected") == 1


async def test_without_redis_url_a_single_instance_works_as_before(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    await installs(proxy, tmp_path / "one", "1.0.0")
    await upload(proxy, tmp_path, "1.1.0")
    await installs(proxy, tmp_path / "two", "1.1.0")
    assert (await ready(proxy))["degraded"] == []
    text, _ = await scrape(proxy)
    assert METRIC not in text


async def test_replicas_keep_serving_without_redis_and_hear_each_other_once_it_is_back(
    gitlab: FakeGitLab,
    make_proxy: ProxyFactory,
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    a, b = await replicas(make_proxy, tmp_path, redis_server.url)
    await installs(b, tmp_path / "one", "1.0.0")

    await redis_server.kill()
    for proxy in (a, b):
        await eventually(_degraded(proxy), f"{proxy.url} says Redis is unreachable")
    # Both keep serving, uploads too; B cannot hear of this one yet.
    await upload(a, tmp_path, "1.1.0")
    await installs(a, tmp_path / "two", "1.1.0")
    await installs(b, tmp_path / "three", "1.0.0")
    _, samples_a = await scrape(a)
    assert value(samples_a, f"{METRIC}_invalidations_total", kind="unsent") == 1
    assert value(samples_a, f"{METRIC}_redis_connected") == 0
    assert value(samples_a, f"{METRIC}_redis_outages_total") == 1

    await redis_server.start()
    for proxy in (a, b):
        await eventually(_heard(proxy), f"{proxy.url} hears Redis again", timeout=15)
    # What B missed meanwhile: back, it treats its pages as stale.
    await installs(b, tmp_path / "four", "1.1.0")
    # And invalidations flow again.
    await upload(a, tmp_path, "1.2.0")
    await installs(b, tmp_path / "five", "1.2.0")

    outage_lines = [r for r in caplog.records if UNREACHABLE in r.getMessage()]
    assert len(outage_lines) == 2, "one line per replica for the one outage"
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    for proxy in (a, b):
        for page in ("/-/metrics", "/-/status", "/-/ready"):
            _, _, body = await get(f"{proxy.url}{page}")
            assert PASSWORD.encode() not in body


def _degraded(proxy: RunningProxy) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return UNREACHABLE in (await ready(proxy))["degraded"]

    return check


def _heard(proxy: RunningProxy) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not (await ready(proxy))["degraded"]

    return check
