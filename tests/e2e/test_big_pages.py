"""Issue 11 item 6 on the real process: big pages parse off the event loop, and have a limit."""

from __future__ import annotations

import base64
import contextlib
import gzip
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support import fake_gitlab
from tests.support.big_pages import hits_while_parsing
from tests.support.cli_process import PROXY, ServeProcess, free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, clean_env

SIMPLE = "/api/v4/projects/42/packages/pypi/simple"
BIG_FILES = 20_000

Serve = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
async def serve(gitlab: FakeGitLab, tmp_path: Path) -> AsyncIterator[Serve]:
    """The proxy process with asyncio's debug mode: each callback over 100 ms is logged."""
    async with contextlib.AsyncExitStack() as started:

        async def factory(**settings: str) -> ServeProcess:
            port = free_port()
            env = clean_env(
                PYTHONASYNCIODEBUG="1",
                GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
                GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
                GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path / "cache"),
                # One process: parsing and the page limit are each worker's own.
                GITLAB_PYPI_PROXY_SERVER_WORKERS="1",
                **{f"GITLAB_PYPI_PROXY_{key.upper()}": value for key, value in settings.items()},
            )
            process = await ServeProcess.start(
                [*PROXY, "serve", "--port", str(port)], port=port, env=env, cwd=tmp_path
            )
            return await started.enter_async_context(process)

        yield factory


def slow_callbacks(log: str) -> list[float]:
    """Seconds of each callback asyncio's debug mode reported as holding the loop."""
    return [float(m) for m in re.findall(r"Executing <.*> took ([0-9.]+) seconds$", log, re.M)]


async def test_cached_hits_are_answered_while_a_big_page_is_parsed(
    gitlab: FakeGitLab, serve: Serve
) -> None:
    gitlab.add_wheel(42, "corp-small", "1.0.0")
    gitlab.add_many_files(42, "corp-huge", "1.0.0", BIG_FILES)
    proxy = await serve()
    status, took, latencies = await hits_while_parsing(proxy.url, gitlab, "corp-huge", "corp-small")
    assert status == 200
    assert len(latencies) > 0
    # On the loop, parsing 20,000 links held it for most of the time the page took (1.5 s of
    # 2.5 s); off it, what is left are slivers. Relative, so a loaded machine does not matter.
    holds = slow_callbacks(proxy.log())
    assert max(holds, default=0.0) < took / 4, (holds, took)


async def test_a_page_over_max_page_size_is_a_clear_502(gitlab: FakeGitLab, serve: Serve) -> None:
    gitlab.add_wheel(42, "corp-small", "1.0.0")
    gitlab.add_many_files(42, "corp-huge", "1.0.0", 2_000)
    proxy = await serve(upstream_max_page_size="64KiB")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy.url}{SIMPLE}/corp-huge/") as resp:
            assert resp.status == 502
            assert "upstream.max_page_size (65536 bytes)" in (await resp.json())["message"]
        async with session.get(f"{proxy.url}{SIMPLE}/corp-small/") as resp:
            assert resp.status == 200


async def test_a_compressed_page_is_cut_once_it_unpacks_past_max_page_size(
    gitlab: FakeGitLab, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = fake_gitlab._gitlab_page

    def gzipped(title: str, anchors: Iterable[str]) -> web.Response:
        response = page(title, anchors)
        response.enable_compression()
        return response

    monkeypatch.setattr(fake_gitlab, "_gitlab_page", gzipped)
    gitlab.add_many_files(42, "corp-huge", "1.0.0", 2_000)
    limit = 300 * 1024
    basic = "Basic " + base64.b64encode(f"proxy:{TOKEN}".encode()).decode()
    # Its Content-Length (compressed) is within the limit: only the body read can tell.
    async with (
        aiohttp.ClientSession(
            headers={"Authorization": basic, "Accept-Encoding": "gzip"}
        ) as session,
        session.get(f"{gitlab.url}{SIMPLE}/corp-huge/", auto_decompress=False) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        assert int(resp.headers["Content-Length"]) < limit
        assert len(gzip.decompress(await resp.read())) > limit
    proxy = await serve(upstream_max_page_size=str(limit))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}{SIMPLE}/corp-huge/") as resp,
    ):
        assert resp.status == 502
        assert f"upstream.max_page_size ({limit} bytes)" in (await resp.json())["message"]
