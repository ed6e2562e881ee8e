"""Shared fixtures: the fake GitLab and public index on real ports, and a proxy in front."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli_process import free_port
from tests.support.fake_gitlab import FakeGitLab, FakePublicIndex
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, make_settings, start_proxy
from tests.support.moto_server import BUCKET, MotoServer
from tests.support.redis_server import REDIS_SERVER, SKIP_REASON, RedisServer


@pytest.fixture
async def gitlab() -> AsyncIterator[FakeGitLab]:
    """GitLab with group 7 'platform' holding private project 42 'platform/tools'."""
    fake = FakeGitLab(token=TOKEN)
    fake.add_group(7, "platform")
    fake.add_project(42, "platform/tools", group_id=7)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def public(gitlab: FakeGitLab) -> AsyncIterator[FakePublicIndex]:
    """The public index GitLab forwards unknown names to."""
    async with FakePublicIndex() as index:
        gitlab.public_index_url = index.url
        yield index


@pytest.fixture
async def make_proxy(tmp_path: Path, gitlab: FakeGitLab) -> AsyncIterator[ProxyFactory]:
    """Start proxies in front of `gitlab`; keyword sections override settings."""
    started: list[RunningProxy] = []

    async def factory(cache_dir: Path | None = None, **sections: Any) -> RunningProxy:
        settings = make_settings(gitlab.url, cache_dir or tmp_path / "cache", TOKEN, **sections)
        proxy = await start_proxy(settings)
        started.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in started:
            await proxy.stop()


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> RunningProxy:
    return await make_proxy()


@pytest.fixture(scope="session")
def moto_process() -> Iterator[MotoServer]:
    """One moto S3 server per test process (a second to start); tests take it through `moto`,
    which empties it first."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_process: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """moto's S3 on loopback with one empty BUCKET; its credentials in this process's
    environment, which the replicas a test starts inherit."""
    moto_process.fresh(BUCKET)
    for name, secret in moto_process.credentials.items():
        monkeypatch.setenv(name, secret)
    try:
        yield moto_process
    finally:
        moto_process.resume()  # a test that froze it and failed before resuming it


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A password-protected redis-server on a free loopback port; skips where there is none."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(free_port(), workdir)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is marked `e2e`, so `-m "not e2e"` is the fast inner loop."""
    for item in items:
        if "e2e" in item.path.parent.parts:
            item.add_marker(pytest.mark.e2e)
