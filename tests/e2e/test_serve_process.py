"""Issue 7 through the real command line: access log without secrets, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support import cli_process
from tests.support.cli_process import ServeProcess
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN

CLIENT_TOKEN = "glpat-client-query-secret-0987654321"
CLIENT_PASSWORD = "client-basic-password-secret"

Serve = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
async def serve(gitlab: FakeGitLab, tmp_path: Path) -> AsyncIterator[Serve]:
    """Start `python -m proxy serve` in front of `gitlab`; extra env settings as keywords."""
    async with contextlib.AsyncExitStack() as started:

        async def factory(**settings: str) -> ServeProcess:
            process = await cli_process.serve(
                tmp_path,
                upstream_url=gitlab.url,
                upstream_token=TOKEN,
                cache_dir=str(tmp_path / "cache"),
                **settings,
            )
            return await started.enter_async_context(process)

        yield factory


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_access_log_has_one_line_per_request_and_no_secret(
    gitlab: FakeGitLab, serve: Serve, log_format: str
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await serve(server_log_format=log_format)
    basic = base64.b64encode(f"someone:{CLIENT_PASSWORD}".encode()).decode()
    base = f"{proxy.url}/api/v4/projects/42/packages/pypi"
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {basic}"}) as session:
        async with session.get(
            f"{base}/simple/corp-util/?private_token={CLIENT_TOKEN}&x=1"
        ) as resp:
            assert resp.status == 200
        async with session.get(f"{base}/files/{wheel.sha256}/{wheel.filename}") as resp:
            assert resp.status == 200
            await resp.read()
        async with session.get(
            f"{proxy.url}/nowhere?job_token={CLIENT_TOKEN}&{CLIENT_TOKEN}"
        ) as resp:
            assert resp.status == 404
    assert await proxy.stop() == 0

    log = proxy.log()
    for secret in (CLIENT_TOKEN, CLIENT_PASSWORD, basic, TOKEN):
        assert secret not in log
    lines = log.splitlines()
    if log_format == "json":
        entries = [json.loads(line) for line in lines]
        access = [e for e in entries if e["logger"] == "proxy.access" and e["path"] != "/-/health"]
        assert [(e["method"], e["path"], e["status"], e["cache"]) for e in access] == [
            (
                "GET",
                "/api/v4/projects/42/packages/pypi/simple/corp-util/"
                "?private_token=[REDACTED]&x=[REDACTED]",
                200,
                "MISS",
            ),
            (
                "GET",
                f"/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}",
                200,
                "MISS",
            ),
            ("GET", "/nowhere?job_token=[REDACTED]&[REDACTED]", 404, "-"),
        ]
        assert len(wheel.content) < access[1]["bytes_sent"] < len(wheel.content) + 1000
        assert access[0]["remote"] == "127.0.0.1"
        assert access[0]["user_agent"].startswith("Python/")
    else:
        access = [line for line in lines if " proxy.access: " in line and "/-/health" not in line]
        assert len(access) == 3
        assert (
            '"GET /api/v4/projects/42/packages/pypi/simple/corp-util/'
            '?private_token=[REDACTED]&x=[REDACTED] HTTP/1.1" 200 ' in access[0]
        )
        assert f'{wheel.filename} HTTP/1.1" 200 ' in access[1]
        assert '"GET /nowhere?job_token=[REDACTED]&[REDACTED] HTTP/1.1" 404 ' in access[2]


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_sigterm_loses_no_access_line(
    gitlab: FakeGitLab, serve: Serve, log_format: str
) -> None:
    """Lines are written in batches behind the answers; the ones still queued at SIGTERM too."""
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    # The default configuration: a worker per CPU, each with its own queue of lines.
    proxy = await serve(server_log_format=log_format)
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    agent = 'curl/8 "quoted"\u00e9' + "x" * 5000
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": agent}) as session:

        async def one() -> int:
            async with session.get(url) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(300)))
    # At once: the last answers' lines are still in the queue.
    proxy.send_signal(signal.SIGTERM)
    assert await proxy.wait() == 0
    assert statuses == [200] * 300
    lines = [line for line in proxy.log().splitlines() if wheel.filename in line]
    assert len(lines) == 300
    if log_format == "json":
        agents = {json.loads(line)["user_agent"] for line in lines}
    else:
        agents = {line.rsplit(' "', 1)[1] for line in lines}
    # Cut to a sane length, and in the plain format escaped so it cannot end its field.
    [logged] = agents
    assert 100 < len(logged) < 300
    if log_format == "plain":
        assert logged.startswith('curl/8 \\"quoted\\"\\xe9xxx')


def _blob_rows(db: Path) -> list[tuple[str, int]]:
    """The distributions recorded; a wheel's extracted METADATA blob (PEP 658) is left out."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return list(
            conn.execute("SELECT sha256, size FROM blobs WHERE filename NOT LIKE '%.metadata'")
        )


async def test_sigterm_lets_a_download_finish_then_closes_sqlite(
    gitlab: FakeGitLab, serve: Serve, tmp_path: Path
) -> None:
    # About 2 s upstream: 20 chunks, 0.1 s apart.
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=600_000)
    gitlab.file_chunk_size = len(wheel.content) // 20 + 1
    gitlab.file_chunk_delay = 0.1
    proxy = await serve()
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    digest = hashlib.sha256()
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        digest.update(await resp.content.readany())
        proxy.send_signal(signal.SIGTERM)
        # It stops accepting at once, while the download is still going.
        refused = False
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as other, other.get(f"{proxy.url}/-/health"):
                    pass
            except aiohttp.ClientConnectionError:
                refused = True
                break
            await asyncio.sleep(0.02)
        assert refused
        assert not resp.content.at_eof()
        async for chunk in resp.content.iter_chunked(65536):
            digest.update(chunk)
    assert digest.hexdigest() == wheel.sha256
    assert await proxy.wait() == 0
    assert "stopping: no new connections" in proxy.log()
    cache = tmp_path / "cache"
    # Closed cleanly: the last connection checkpointed the write-ahead log and removed it.
    assert not (cache / "index.sqlite3-wal").exists()
    assert _blob_rows(cache / "index.sqlite3") == [(wheel.sha256, len(wheel.content))]
    sha = wheel.sha256
    assert (cache / "blobs" / sha[:2] / sha[2:4] / sha).read_bytes() == wheel.content


async def test_a_download_outlasting_the_grace_is_cut_and_nothing_is_stored(
    gitlab: FakeGitLab, serve: Serve, tmp_path: Path
) -> None:
    # About 10 s upstream, against half a second of grace.
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=400_000)
    gitlab.file_chunk_size = len(wheel.content) // 100 + 1
    gitlab.file_chunk_delay = 0.1
    proxy = await serve(server_shutdown_grace="0.5")
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        await resp.content.readany()
        proxy.send_signal(signal.SIGTERM)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert await proxy.wait() == 0
    cache = tmp_path / "cache"
    assert _blob_rows(cache / "index.sqlite3") == []
    assert list((cache / "tmp").iterdir()) == []
    assert not (cache / "blobs" / wheel.sha256[:2]).exists()
