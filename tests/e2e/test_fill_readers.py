"""Many clients on one fill: each gets the whole verified file by sendfile, whatever others do."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import aiohttp
import pytest

from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import RunningProxy
from tests.support.http import project_file_url


async def test_concurrent_cold_readers_share_one_fill_and_get_every_byte(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=2_000_000)
    # Slow enough that every reader joins while the temp file is still growing.
    gitlab.file_chunk_size = 65536
    gitlab.file_chunk_delay = 0.005
    url = project_file_url(proxy, wheel.sha256, wheel.filename)

    async def fetch(session: aiohttp.ClientSession) -> tuple[int, str, bytes]:
        async with session.get(url) as resp:
            return resp.status, resp.headers["X-Cache"], await resp.read()

    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(fetch(session) for _ in range(8)))
    assert gitlab.counts["file"] == 1
    for status, cache, body in answers:
        assert (status, cache) == (200, "MISS")
        assert hashlib.sha256(body).hexdigest() == wheel.sha256


async def test_a_reader_leaving_mid_fill_costs_the_others_nothing(
    gitlab: FakeGitLab, proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=1_000_000)
    gitlab.file_chunk_size = 65536
    gitlab.file_chunk_delay = 0.01
    url = project_file_url(proxy, wheel.sha256, wheel.filename)
    with caplog.at_level(logging.ERROR):
        async with aiohttp.ClientSession() as session:
            stays = asyncio.create_task(_read_all(session, url))
            async with session.get(url) as leaving:
                await leaving.content.readexactly(65536)
                leaving.close()
            body = await stays
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert gitlab.counts["file"] == 1
    assert "Error handling request" not in caplog.text


async def test_requests_while_a_fill_is_being_recorded_get_the_file(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    """uv sends HEAD, then GET at once: the GET can land after the rename, before the record."""
    for version in range(5):
        wheel = gitlab.add_wheel(42, "corp-small", f"1.{version}")
        url = project_file_url(proxy, wheel.sha256, wheel.filename)
        async with aiohttp.ClientSession() as session:
            async with session.head(url) as head:
                assert head.status == 200
            # Keep asking until the proxy answers from its cache: some ask mid-commit.
            statuses = []
            while True:
                async with session.get(url) as resp:
                    body = await resp.read()
                    statuses.append(resp.status)
                    if resp.status != 200 or resp.headers["X-Cache"] == "HIT":
                        break
                    assert hashlib.sha256(body).hexdigest() == wheel.sha256
        assert set(statuses) == {200}


async def _read_all(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as resp:
        assert resp.status == 200
        return await resp.read()
