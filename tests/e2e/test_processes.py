"""Issue 4 across processes: kill -9 and restart, workers on one port, gc and verify."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.workers import MIN_UPTIME_SECONDS
from tests.support.cli_process import (
    ServeProcess,
    free_port,
    uptime_of,
    workers_of,
    write_config,
)
from tests.support.fake_gitlab import FakeFile, FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, run
from tests.support.http import get, url_of
from tests.support.polling import eventually
from tests.support.wheels import wheel_metadata

FILES = "/api/v4/projects/42/packages/pypi/files"

Spawn = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
async def spawn(tmp_path: Path, gitlab: FakeGitLab) -> AsyncIterator[Spawn]:
    """Start `python -m proxy serve` processes in front of `gitlab`, all on one cache dir."""
    configs = itertools.count()
    async with contextlib.AsyncExitStack() as started:

        async def factory(port: int | None = None, **sections: dict[str, Any]) -> ServeProcess:
            port = port or free_port()
            config: dict[str, dict[str, Any]] = {
                # One process unless a test asks for more: "auto" would be one per CPU.
                "server": {"port": port, "workers": 1},
                "upstream": {"url": gitlab.url, "username": "proxy", "token": TOKEN, "timeout": 10},
                "cache": {"dir": str(tmp_path / "cache")},
            }
            for name, values in sections.items():
                config.setdefault(name, {}).update(values)
            path = write_config(tmp_path / f"proxy-{next(configs)}.toml", config)
            return await started.enter_async_context(await ServeProcess.from_config(path, port))

        yield factory


def rows(cache: Path) -> set[str]:
    with sqlite3.connect(cache / "index.sqlite3") as db:
        return {sha for (sha,) in db.execute("SELECT sha256 FROM blobs")}


def blobs_on_disk(cache: Path) -> set[str]:
    return {p.name for p in (cache / "blobs").rglob("*") if p.is_file()}


def shas(wheels: list[FakeFile]) -> set[str]:
    return {w.sha256 for w in wheels}


def metadata_of(*wheels: FakeFile) -> set[str]:
    """The sha256s of the METADATA blobs (PEP 658) the proxy extracts from these wheels."""
    return {hashlib.sha256(wheel_metadata(w.content)).hexdigest() for w in wheels}


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with session.get(url) as resp:
        return resp.status, resp.headers.get("X-Cache", ""), await resp.read()


async def test_kill_9_mid_download_then_restart_serves_only_verified_files(
    gitlab: FakeGitLab, spawn: Spawn, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    small = gitlab.add_wheel(42, "corp-small", "1.0.0")
    big = [
        gitlab.add_wheel(42, f"corp-big{i}", "1.0.0", payload_size=1024 * 1024) for i in range(3)
    ]
    proxy = await spawn()
    status, _, _ = await get(url_of(proxy.url, small))
    assert status == 200

    gitlab.file_chunk_delay = 0.05
    started = asyncio.Event()
    got: list[int] = []

    async def download(wheel: FakeFile) -> None:
        async with aiohttp.ClientSession() as session, session.get(url_of(proxy.url, wheel)) as r:
            got.append(len(await r.content.readany()))
            if len(got) == len(big):
                started.set()
            # The proxy dies under this read; the client must see a failed transfer.
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()

    downloads = [asyncio.create_task(download(w)) for w in big]
    await asyncio.wait_for(started.wait(), 10)
    assert [r.status for r in gitlab.requests if r.kind == "file"][1:] == [0, 0, 0]
    proxy.send_signal(signal.SIGKILL)
    await proxy.wait()
    await asyncio.gather(*downloads)
    # The three downloads' own temp files (background work may leave others, cleaned too).
    partial = [p for p in (cache / "tmp").glob("*.part") if p.name.split(".")[0] in shas(big)]
    assert len(partial) == 3, "the kill did not land mid-download"

    # More damage a crash (or a person) can leave: a row without its blob, a blob without
    # its row, and a lock file nobody holds.
    ghost = hashlib.sha256(b"ghost").hexdigest()
    with sqlite3.connect(cache / "index.sqlite3") as db:
        db.execute(
            "INSERT INTO blobs VALUES (?, 5, 'ghost-1.0.tar.gz', 0, 0)",
            (ghost,),
        )
    stray = hashlib.sha256(b"stray").hexdigest()
    stray_path = cache / "blobs" / stray[:2] / stray[2:4] / stray
    stray_path.parent.mkdir(parents=True)
    stray_path.write_bytes(b"stray")
    (cache / "tmp" / f"{big[0].sha256}.lock").write_bytes(b"")

    gitlab.file_chunk_delay = 0.0
    restarted = await spawn(port=proxy.port)
    assert list((cache / "tmp").iterdir()) == []
    assert rows(cache) == blobs_on_disk(cache)
    assert rows(cache) - metadata_of(small) == {small.sha256}

    async with aiohttp.ClientSession() as session:
        for wheel in big:
            status, state, body = await fetch(session, url_of(restarted.url, wheel))
            assert (status, state) == (200, "MISS")
            assert hashlib.sha256(body).hexdigest() == wheel.sha256
        status, state, body = await fetch(session, url_of(restarted.url, small))
        assert (status, state) == (200, "HIT")
        assert hashlib.sha256(body).hexdigest() == small.sha256
    # The wheels' METADATA is still being extracted behind the answers: let all of it land. A
    # blob reaches the disk just before its row, so the two sets are equal for a moment while
    # an extraction is still under way: wait for every METADATA row too, not equality alone.
    await eventually(
        lambda: metadata_of(*big) <= rows(cache) == blobs_on_disk(cache),
        "every wheel's METADATA stored, every row's blob on disk",
    )
    assert rows(cache) - metadata_of(small, *big) == {small.sha256} | shas(big)


async def test_two_processes_on_one_cache_fetch_each_file_once(
    gitlab: FakeGitLab, spawn: Spawn
) -> None:
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=1024 * 1024)
    gitlab.file_chunk_delay = 0.03
    one, two = await spawn(), await spawn()
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(fetch(session, url_of(p.url, wheel)) for p in [one, two] * 10)
        )
    # One download; a process that finds another filling the blob checks this scope lists it
    # (no page was read here, so by a HEAD to GitLab) before it takes the bytes over.
    assert [r.method for r in gitlab.requests if r.kind == "file"].count("GET") == 1
    assert {status for status, _, _ in results} == {200}, [b for s, _, b in results if s != 200]
    assert all(hashlib.sha256(body).hexdigest() == wheel.sha256 for _, _, body in results)
    # One process filled it; the other waited on the lock and served the finished blob.
    assert {state for _, state, _ in results} == {"MISS", "HIT"}


async def test_workers_share_one_port_one_cache_and_stop_on_sigterm(
    gitlab: FakeGitLab, spawn: Spawn
) -> None:
    wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=1024 * 1024)
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.file_chunk_delay = 0.03
    proxy = await spawn(server={"workers": 2})
    workers = workers_of(proxy.pid)
    assert len(workers) == 2
    # Separate connections (no keep-alive), so the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(
            *(fetch(session, url_of(proxy.url, wheel)) for _ in range(20))
        )
        pages = await asyncio.gather(
            *(
                fetch(session, f"{proxy.url}/api/v4/projects/42/packages/pypi/simple/corp-util/")
                for _ in range(10)
            )
        )
    # One download; a process that finds another filling the blob checks this scope lists it
    # (no page was read here, so by a HEAD to GitLab) before it takes the bytes over.
    assert [r.method for r in gitlab.requests if r.kind == "file"].count("GET") == 1
    assert all(status == 200 for status, _, _ in results + pages)
    assert all(hashlib.sha256(body).hexdigest() == wheel.sha256 for _, _, body in results)
    # Pages are single-flighted per process, so at most one fetch per worker.
    assert 1 <= gitlab.counts["page"] <= 2

    assert await proxy.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


async def test_a_dead_worker_is_replaced(gitlab: FakeGitLab, spawn: Spawn) -> None:
    proxy = await spawn(server={"workers": 2})
    [first, second] = workers_of(proxy.pid)
    # Past the start-up window in which a death means "broken", counted from the fork (which
    # the supervisor's clock starts after), less the time the workers took to serve.
    window = MIN_UPTIME_SECONDS + 0.2
    await asyncio.sleep(max(0.0, window - min(uptime_of(pid) for pid in (first, second))))
    os.kill(first, signal.SIGKILL)
    for _ in range(100):
        current = workers_of(proxy.pid)
        if len(current) == 2 and first not in current:
            break
        await asyncio.sleep(0.1)
    assert second in current and first not in current and len(current) == 2
    # A connection the kernel had queued on the dead worker's socket is reset with it: retry.
    status = 0
    for _ in range(50):
        with contextlib.suppress(aiohttp.ClientConnectionError):
            status, _, _ = await get(f"{proxy.url}/-/health")
            break
        await asyncio.sleep(0.1)
    assert status == 200


async def gitlab_pypi_proxy(config: Path, *args: str) -> tuple[int, str]:
    result = await run([sys.executable, "-m", "proxy", "--config", str(config), *args])
    return result.returncode, result.stdout + result.stderr


async def test_gc_evicts_least_recently_used_but_never_a_file_being_sent(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    # The big one is sent with sendfile; the client below stops reading, so it stays busy.
    big = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=16 * 1024 * 1024)
    old = gitlab.add_wheel(42, "corp-old", "1.0.0", payload_size=300_000)
    new = gitlab.add_wheel(42, "corp-new", "1.0.0", payload_size=300_000)
    proxy = await make_proxy()
    for wheel in [big, old, new]:
        assert (await get(url_of(proxy.url, wheel)))[0] == 200
        await asyncio.sleep(0.01)
    # METADATA is extracted behind the answers: gc must not race a blob still landing.
    await eventually(lambda: metadata_of(big, old, new) <= rows(cache), "every METADATA stored")
    config = write_config(tmp_path / "gc.toml", {"cache": {"dir": str(cache), "max_size": 700_000}})
    async with aiohttp.ClientSession() as session, session.get(url_of(proxy.url, big)) as slow:
        assert slow.headers["X-Cache"] == "HIT"
        first = await slow.content.read(65536)
        code, out = await gitlab_pypi_proxy(config, "gc")
        assert code == 0, out
        # big is the least recently used, and alone over max_size... but it is being sent.
        # The others go, each wheel's extracted METADATA blob too.
        removed = re.search(r"removed (\d+) files", out)
        assert removed is not None and int(removed[1]) >= 2, out
        assert "1 in use kept" in out
        assert blobs_on_disk(cache) == rows(cache) == {big.sha256}
        body = first + await slow.read()
    assert hashlib.sha256(body).hexdigest() == big.sha256

    code, out = await gitlab_pypi_proxy(config, "gc")
    assert code == 0, out
    assert "removed 1 files" in out
    assert blobs_on_disk(cache) == rows(cache) == set()
    # The running proxy notices the evicted file is gone and fetches it again.
    status, headers, body = await get(url_of(proxy.url, big))
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert hashlib.sha256(body).hexdigest() == big.sha256


async def test_background_eviction_keeps_the_cache_under_max_size(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    wheels = [gitlab.add_wheel(42, f"corp-w{i}", "1.0.0", payload_size=300_000) for i in range(4)]
    proxy = await make_proxy(cache={"max_size": 700_000})
    await get(url_of(proxy.url, wheels[0]))
    for wheel in wheels[1:]:
        await get(url_of(proxy.url, wheel))
        # wheels[0] is used again and again: it is the most recently used, not the oldest.
        await get(url_of(proxy.url, wheels[0]))
    # Eviction runs in the background: wait for it to be done (under the limit, rows matching).
    for _ in range(100):
        size = sum(p.stat().st_size for p in (cache / "blobs").rglob("*") if p.is_file())
        if size <= 700_000 and rows(cache) == blobs_on_disk(cache):
            break
        await asyncio.sleep(0.05)
    on_disk = blobs_on_disk(cache)
    assert wheels[0].sha256 in on_disk
    assert wheels[3].sha256 in on_disk
    assert wheels[1].sha256 not in on_disk
    assert rows(cache) == on_disk


async def test_verify_removes_bad_blobs_and_exits_non_zero(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    good = gitlab.add_wheel(42, "corp-good", "1.0.0", payload_size=200_000)
    bad = gitlab.add_wheel(42, "corp-bad", "1.0.0", payload_size=200_000)
    proxy = await make_proxy()
    for wheel in [good, bad]:
        assert (await get(url_of(proxy.url, wheel)))[0] == 200
    await proxy.stop()
    blob = cache / "blobs" / bad.sha256[:2] / bad.sha256[2:4] / bad.sha256
    damaged = bytearray(blob.read_bytes())
    damaged[-10] ^= 0x01
    blob.write_bytes(bytes(damaged))
    config = write_config(tmp_path / "verify.toml", {"cache": {"dir": str(cache)}})

    code, out = await gitlab_pypi_proxy(config, "verify")
    assert code == 1, out
    assert f"bad (removed): {bad.sha256} {bad.filename}" in out
    # Both wheels and the METADATA blob extracted from each.
    assert "verified 4 files" in out and "1 bad" in out
    assert blobs_on_disk(cache) == rows(cache) == {good.sha256} | metadata_of(good, bad)

    code, out = await gitlab_pypi_proxy(config, "verify")
    assert code == 0, out
    assert "verified 3 files" in out and "0 bad" in out
