"""FileCache: a miss fills once for every client, a hit never asks GitLab, a lie is never kept."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.blobs import LocalBlobStore
from proxy.config import CacheSettings, UpstreamSettings
from proxy.credentials import CredentialPolicy
from proxy.errors import error_middleware
from proxy.files import FileCache
from proxy.gitlab import GitLab
from proxy.metrics import Metrics
from proxy.scope import Scope
from proxy.store import Store
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN
from tests.support.wheels import make_wheel

SCOPE = Scope("projects", "42")


class Harness:
    """A FileCache over a real cache directory and GitLab client, answering one route."""

    def __init__(
        self, files: FileCache, upstream: GitLab, client: TestClient[web.Request, web.Application]
    ) -> None:
        self.files = files
        self.upstream = upstream
        self.client = client

    async def get(self, sha256: str, filename: str) -> tuple[int, bytes]:
        async with self.client.get(f"/{sha256}/{filename}") as response:
            try:
                return response.status, await response.read()
            except aiohttp.ClientPayloadError:
                return -1, b""


@pytest.fixture
async def harness(gitlab: FakeGitLab, tmp_path: Path) -> AsyncIterator[Harness]:
    blobs = LocalBlobStore(tmp_path)
    blobs.ensure_dirs()
    store = await Store.open(tmp_path / "index.sqlite3")
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        settings = UpstreamSettings(url=gitlab.url, username="proxy", token=TOKEN, timeout=10)
        upstream = GitLab(settings, session, metrics)
        files = FileCache(CacheSettings(dir=tmp_path), blobs, store, upstream, metrics)
        await files.load()
        proxy_token = CredentialPolicy(settings).injected_authorization

        async def serve(request: web.Request) -> web.StreamResponse:
            sha256, filename = request.match_info["sha256"], request.match_info["filename"]
            source = upstream.url_for(SCOPE, f"files/{sha256}/{filename}")
            return await files.respond(request, sha256, filename, source, proxy_token)

        app = web.Application(middlewares=[error_middleware])
        app.router.add_get("/{sha256}/{filename}", serve)
        async with TestClient(TestServer(app)) as client:
            yield Harness(files, upstream, client)
        await files.close(0)
    await store.close()


def file_gets(gitlab: FakeGitLab) -> int:
    return sum(1 for r in gitlab.requests if r.method == "GET" and "/files/" in r.path)


async def test_a_miss_fills_once_and_the_next_request_is_a_hit(
    gitlab: FakeGitLab, harness: Harness
) -> None:
    wheel = gitlab.add_wheel(42, "tool", "1.0")
    assert await harness.get(wheel.sha256, wheel.filename) == (200, wheel.content)
    assert await harness.get(wheel.sha256, wheel.filename) == (200, wheel.content)
    assert file_gets(gitlab) == 1
    assert harness.files.hit(wheel.sha256, wheel.filename) is not None
    assert harness.files.totals() == (len(wheel.content), 1)


async def test_concurrent_misses_share_one_download(gitlab: FakeGitLab, harness: Harness) -> None:
    filename, content = make_wheel("big", "1.0", payload_size=3 * 1024 * 1024)
    wheel = gitlab.add_file(42, "big", "1.0", filename, content)
    answers = await asyncio.gather(*(harness.get(wheel.sha256, wheel.filename) for _ in range(8)))
    assert answers == [(200, content)] * 8
    assert file_gets(gitlab) == 1


async def test_bytes_that_do_not_match_their_sha256_are_cut_and_never_kept(
    gitlab: FakeGitLab, harness: Harness
) -> None:
    filename, content = make_wheel("liar", "1.0")
    lie = hashlib.sha256(b"something else").hexdigest()
    gitlab.add_file(42, "liar", "1.0", filename, content, sha256=lie)
    status, _ = await harness.get(lie, filename)
    assert status in (-1, 502)
    assert harness.files.hit(lie, filename) is None
    assert harness.files.totals() == (0, 0)
    assert not harness.files.blobs.path(lie).exists()


async def test_an_absent_file_costs_one_upstream_request(
    gitlab: FakeGitLab, harness: Harness
) -> None:
    sha256 = "0" * 64
    for _ in range(3):
        status, _ = await harness.get(sha256, "ghost-1.0-py3-none-any.whl")
        assert status == 404
    assert file_gets(gitlab) == 1
