"""Issue 11 item 4 on the real process: half-open connections, the open-files limit, shedding."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.connections import capacity_for
from tests.support.cli_process import PROXY, ServeProcess, free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, clean_env
from tests.support.polling import eventually

PAGE = "/api/v4/projects/42/packages/pypi/simple/corp-util/"
PARTIAL = b"GET /api/v4/projects/42/packages/pypi/simple/corp-u"
# How long a test waits for the proxy to act; the proxy's own timeouts are set far shorter.
PATIENCE = 30.0

Serve = Callable[..., Awaitable[ServeProcess]]

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit")


@pytest.fixture
async def serve(gitlab: FakeGitLab, tmp_path: Path) -> AsyncIterator[Serve]:
    """`python -m proxy serve` under `prlimit --nofile=SOFT:HARD`, extra settings as keywords."""
    async with contextlib.AsyncExitStack() as started:

        async def factory(nofile: tuple[int, int], **settings: str) -> ServeProcess:
            port = free_port()
            env = clean_env(
                GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
                GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
                GITLAB_PYPI_PROXY_CACHE_DIR=str(tmp_path / "cache"),
                # One process: the connection limit and its warnings are each worker's own.
                GITLAB_PYPI_PROXY_SERVER_WORKERS="1",
                **{f"GITLAB_PYPI_PROXY_{key.upper()}": value for key, value in settings.items()},
            )
            argv = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--", *PROXY, "serve"]
            process = await ServeProcess.start(
                [*argv, "--port", str(port)], port=port, env=env, cwd=tmp_path
            )
            return await started.enter_async_context(process)

        yield factory


async def half_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that sends part of a request line and never the rest."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PARTIAL)
    await writer.drain()
    return reader, writer


async def closed_by_proxy(reader: asyncio.StreamReader) -> bool:
    """Whether the proxy closes this connection (EOF or reset) within PATIENCE."""
    try:
        await asyncio.wait_for(reader.read(), PATIENCE)
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


async def get_page(url: str) -> int:
    timeout = aiohttp.ClientTimeout(total=PATIENCE)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url + PAGE) as resp,
    ):
        await resp.read()
        return resp.status


async def test_the_soft_open_files_limit_is_raised_to_the_hard_one_and_logged(
    gitlab: FakeGitLab, serve: Serve
) -> None:
    proxy = await serve((256, 4096))
    limits = Path(f"/proc/{proxy.pid}/limits").read_text()
    assert [line.split()[3:5] for line in limits.splitlines() if "open files" in line] == [
        ["4096", "4096"]
    ]
    assert "open files: limit 4096 (raised from 256)" in proxy.log()


async def test_half_open_and_idle_connections_are_closed_after_their_timeouts(
    gitlab: FakeGitLab, serve: Serve
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await serve((4096, 4096), server_header_timeout="0.3", server_keepalive_timeout="0.3")
    clients = [await half_open(proxy.port) for _ in range(5)]
    silent, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
    # One whole request, then nothing: an idle keep-alive connection.
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    idle_writer.write(f"GET {PAGE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status_line = await asyncio.wait_for(idle_reader.readline(), PATIENCE)
    assert status_line.startswith(b"HTTP/1.1 200")

    closed = await asyncio.gather(
        *(closed_by_proxy(r) for r, _ in clients),
        closed_by_proxy(silent),
        closed_by_proxy(idle_reader),
    )
    assert closed == [True] * 7
    assert await get_page(proxy.url) == 200
    for _, writer in clients:
        writer.close()
    idle_writer.close()


async def test_a_flood_of_half_open_clients_past_the_limit_leaves_room_for_real_ones(
    gitlab: FakeGitLab, serve: Serve
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    # 256 descriptors, and more half-open clients than that; their header timeout is far off.
    proxy = await serve((256, 256), server_header_timeout="3600")
    flood = [await half_open(proxy.port) for _ in range(300)]
    # A real client is still served at once, and again.
    for _ in range(3):
        assert await get_page(proxy.url) == 200
    # The oldest half-open ones were closed to make room.
    closed = await asyncio.gather(*(closed_by_proxy(r) for r, _ in flood[:100]))
    assert all(closed)
    log = proxy.log()
    assert "out of system resource" not in log
    assert log.count("open files nearly exhausted") == 1, log
    for _, writer in flood:
        writer.close()


async def test_when_every_connection_is_busy_a_newcomer_gets_a_503_at_once(
    gitlab: FakeGitLab, serve: Serve
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await serve((256, 256))
    room = capacity_for(256)
    # GitLab holds its answers: each of these requests keeps its connection busy meanwhile.
    gitlab.hold = release = asyncio.Event()
    busy = []
    for n in range(room):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        # Each its own page, so each request is seen reaching GitLab (no shared fetch).
        writer.write(f"GET {PAGE.rstrip('/')}-{n}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        busy.append((reader, writer))
    await eventually(lambda: len(gitlab.requests) >= room, "every busy request reached GitLab")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    answer = await asyncio.wait_for(reader.read(), PATIENCE)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in answer and b"too many connections" in answer
    release.set()
    # The busy ones were left alone: each gets GitLab's answer (forwarding, for these names).
    for busy_reader, _ in busy:
        status_line = await asyncio.wait_for(busy_reader.readline(), PATIENCE)
        assert status_line.startswith(b"HTTP/1.1 302")
    assert proxy.log().count("open files nearly exhausted") == 1
    for _, busy_writer in busy:
        busy_writer.close()
    writer.close()
