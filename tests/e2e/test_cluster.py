"""Issue 18: replicas share uploads' invalidations through a real redis-server."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis

from proxy import cluster
from proxy.cluster import CHANNEL, UNREACHABLE
from tests.support.cli_process import ServeProcess, free_port, write_config
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, pip_install, twine
from tests.support.http import get
from tests.support.metrics import scrape, value
from tests.support.polling import eventually
from tests.support.redis_server import PASSWORD, RedisServer
from tests.support.wheels import make_wheel

UPLOAD = "/api/v4/projects/42/packages/pypi"
SIMPLE = "/api/v4/projects/42/packages/pypi/simple/"
# Enough requests, each on a new connection, for both workers to answer some.
PAGE_ROUNDS = 12
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


async def test_every_worker_process_of_a_replica_hears_an_upload_elsewhere(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    port = free_port()
    config = write_config(
        tmp_path / "b.toml",
        {
            "server": {"host": "127.0.0.1", "port": port, "workers": 2},
            "upstream": {"url": gitlab.url, "username": "proxy", "token": TOKEN},
            "cache": {"dir": str(tmp_path / "b")},
            "cluster": {"redis_url": redis_server.url},
        },
    )
    a = await make_proxy(cache_dir=tmp_path / "a", cluster={"redis_url": redis_server.url})
    async with await ServeProcess.from_config(config, port) as b:
        await eventually(_subscribers(redis_server.url, 3), "A and both of B's workers listen")
        page = f"{b.url}{SIMPLE}corp-util/"
        # Fresh connections, so the kernel spreads them over both workers: each caches the page.
        for _ in range(PAGE_ROUNDS):
            status, _, body = await get(page)
            assert status == 200 and b"1.0.0" in body
        await upload(a, tmp_path, "1.1.0")
        for _ in range(PAGE_ROUNDS):
            status, _, body = await get(page)
            assert b"corp_util-1.1.0-py3-none-any.whl" in body
        # Each worker dropped its own copy: the message reached both (counters summed over the
        # workers, each publishing its own within 0.2 s).
        await eventually(_received(b, 2), "both of B's workers count the invalidation")


async def test_the_channel_carries_versioned_json_and_anything_else_is_ignored(
    gitlab: FakeGitLab,
    make_proxy: ProxyFactory,
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    b = await make_proxy(cache_dir=tmp_path / "b", cluster={"redis_url": redis_server.url})
    await installs(b, tmp_path / "one", "1.0.0")
    gitlab.add_wheel(42, "corp-util", "1.1.0")  # as if uploaded straight to GitLab
    async with redis.Redis.from_url(redis_server.url) as client:
        for garbage in (b"corp-util", b'{"v": 2, "origin": "x", "name": "corp-util"}', b"[1]"):
            await client.publish(CHANNEL, garbage)
        await eventually(
            lambda: sum("unknown format" in r.getMessage() for r in caplog.records) == 3,
            "each unreadable message is logged",
        )
        await installs(b, tmp_path / "two", "1.0.0")
        # What a replica of this version publishes, from another process.
        await client.publish(CHANNEL, json.dumps({"v": 1, "origin": "x", "name": "corp-util"}))
        await eventually(_received(b, 1), "B applies the invalidation")
    await installs(b, tmp_path / "three", "1.1.0")


async def test_a_replica_starts_and_serves_without_redis_and_says_so(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    proxy = await make_proxy(cluster={"redis_url": nobody})
    assert UNREACHABLE in (await ready(proxy))["degraded"]
    await installs(proxy, tmp_path / "one", "1.0.0")
    await upload(proxy, tmp_path, "1.1.0")
    await installs(proxy, tmp_path / "two", "1.1.0")


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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    # The in-process replicas' backoff, capped lower: else by the time Redis is back the next
    # attempt is seconds away; the same backoff loop finds it all the same.
    monkeypatch.setattr(cluster, "RETRY_MAX", 0.4)
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    a, b = await replicas(make_proxy, tmp_path, redis_server.url)
    await installs(b, tmp_path / "one", "1.0.0")
    await upload(a, tmp_path, "1.1.0")
    await installs(b, tmp_path / "two", "1.1.0")
    await installs(a, tmp_path / "three", "1.1.0")

    await redis_server.kill()
    for proxy in (a, b):
        await eventually(_degraded(proxy), f"{proxy.url} says Redis is unreachable")
    # Both keep serving, uploads too; A cannot hear of this one yet.
    await upload(b, tmp_path, "1.2.0")
    await installs(b, tmp_path / "four", "1.2.0")
    await installs(a, tmp_path / "five", "1.1.0")
    _, samples_b = await scrape(b)
    assert value(samples_b, f"{METRIC}_invalidations_total", kind="unsent") == 1
    assert value(samples_b, f"{METRIC}_redis_connected") == 0
    assert value(samples_b, f"{METRIC}_redis_outages_total") == 1
    _, _, status_page = await get(f"{b.url}/-/status")
    assert UNREACHABLE.encode() in status_page

    await redis_server.start()
    for proxy in (a, b):
        await eventually(_heard(proxy), f"{proxy.url} hears Redis again", timeout=15)
    # What A missed meanwhile: back, it treats its pages as stale.
    await installs(a, tmp_path / "six", "1.2.0")
    # And invalidations flow again, from A too, which last published before the outage.
    await upload(a, tmp_path, "1.3.0")
    await installs(b, tmp_path / "seven", "1.3.0")

    outage_lines = [r for r in caplog.records if UNREACHABLE in r.getMessage()]
    assert len(outage_lines) == 2, "one line per replica for the one outage"
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    for proxy in (a, b):
        for page in ("/-/metrics", "/-/status", "/-/ready"):
            _, _, body = await get(f"{proxy.url}{page}")
            assert PASSWORD.encode() not in body
            assert UNREACHABLE.encode() not in body


async def test_a_redis_that_stops_answering_is_noticed_though_its_connections_stay_open(
    gitlab: FakeGitLab,
    make_proxy: ProxyFactory,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The in-process replicas' clocks of silence, scaled down a quarter (the client takes the
    # command timeout when it is made): the same PING, silence and give-up path, in 1 s not 5.
    monkeypatch.setattr(cluster, "PING_SECONDS", 0.5)
    monkeypatch.setattr(cluster, "COMMAND_TIMEOUT", 0.5)
    monkeypatch.setattr(cluster, "POLL_SECONDS", 0.25)
    monkeypatch.setattr(cluster, "RETRY_MAX", 0.4)
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    a, b = await replicas(make_proxy, tmp_path, redis_server.url)
    redis_server.pause()
    try:
        for proxy in (a, b):
            await eventually(_degraded(proxy), f"{proxy.url} notices the silence", timeout=15)
        # Serving goes on meanwhile; an upload waits at most COMMAND_TIMEOUT for Redis.
        await installs(b, tmp_path / "one", "1.0.0")
        await upload(a, tmp_path, "1.1.0")
    finally:
        redis_server.resume()
    for proxy in (a, b):
        await eventually(_heard(proxy), f"{proxy.url} hears Redis again", timeout=15)
    await installs(b, tmp_path / "two", "1.1.0")
    await upload(a, tmp_path, "1.2.0")
    await installs(b, tmp_path / "three", "1.2.0")


async def test_an_upload_made_while_only_its_replica_lost_redis_reaches_the_others_once_back(
    gitlab: FakeGitLab,
    make_proxy: ProxyFactory,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A's own link to Redis fails (its Redis user refused here), B's does not: B never sees
    an outage, so only A, once back, can tell it of the upload it could not publish."""
    monkeypatch.setattr(cluster, "RETRY_MAX", 0.4)
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    user = "replica-a"
    async with redis.Redis.from_url(redis_server.url) as admin:
        await admin.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{PASSWORD}"],
            keys=["*"],
            channels=["*"],
            commands=["+@all"],
        )
        a_url = f"redis://{user}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
        a = await make_proxy(cache_dir=tmp_path / "a", cluster={"redis_url": a_url})
        b = await make_proxy(cache_dir=tmp_path / "b", cluster={"redis_url": redis_server.url})
        await installs(b, tmp_path / "one", "1.0.0")  # B's page, fresh for index_ttl

        await admin.acl_setuser(user, enabled=False)
        await admin.client_kill_filter(user=user)
        await eventually(_degraded(a), "A has lost Redis")
        await upload(a, tmp_path, "1.1.0")
        _, samples_a = await scrape(a)
        assert value(samples_a, f"{METRIC}_invalidations_total", kind="unsent") == 1
        assert not (await ready(b))["degraded"]

        await admin.acl_setuser(user, enabled=True)
        await eventually(_heard(a), "A hears Redis again", timeout=15)
    await eventually(_received(b, 1), "B hears of the upload A made meanwhile")
    await installs(b, tmp_path / "two", "1.1.0")


def _degraded(proxy: RunningProxy) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return UNREACHABLE in (await ready(proxy))["degraded"]

    return check


def _heard(proxy: RunningProxy) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not (await ready(proxy))["degraded"]

    return check


def _subscribers(url: str, expected: int) -> Callable[[], Awaitable[bool]]:
    """Whether `expected` processes listen on the channel, as Redis itself counts them."""

    async def check() -> bool:
        async with redis.Redis.from_url(url) as client:
            [(_, count)] = await client.pubsub_numsub(CHANNEL)
        return bool(count == expected)

    return check


def _received(proxy: RunningProxy | ServeProcess, expected: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        _, samples = await scrape(proxy)
        return value(samples, f"{METRIC}_invalidations_total", kind="received") == expected

    return check
