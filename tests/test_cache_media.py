"""Issue 11 items 1-3 through the real process: a cache directory not ours, a full disk, a
cache on read-only media. Each needs root (another user, tmpfs mounts) and skips without it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli_process import PROXY, ServeProcess, free_port
from tests.conftest import TOKEN
from tests.fake_gitlab import FakeFile, FakeGitLab
from tests.proxy_harness import clean_env, pip_install

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: setpriv to another user, tmpfs and remounts"
)

# The container image's user: not the owner of a volume Kubernetes mounted as root.
AS_USER = ["setpriv", "--reuid", "10001", "--regid", "10001", "--clear-groups"]
BASE = "/api/v4/projects/42/packages/pypi"
MiB = 1024 * 1024


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory any user can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="proxy-media-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


async def start(
    workdir: Path, gitlab: FakeGitLab, cache: Path, *, as_user: bool = False, **settings: str
) -> ServeProcess:
    port = free_port()
    env = clean_env(
        GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
        GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
        GITLAB_PYPI_PROXY_CACHE_DIR=str(cache),
        # Probed often, so a test sees caching resume without waiting 10 s.
        GITLAB_PYPI_PROXY_CACHE_RECHECK_INTERVAL="0.1",
        **{f"GITLAB_PYPI_PROXY_{key.upper()}": value for key, value in settings.items()},
    )
    argv = [*(AS_USER if as_user else []), *PROXY, "serve", "--port", str(port)]
    return await ServeProcess.start(argv, port=port, env=env, cwd=workdir)


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def fetch_file(proxy: ServeProcess, file: FakeFile) -> str:
    """The file through the proxy, checked whole; its X-Cache."""
    status, headers, body = await get(f"{proxy.url}{BASE}/files/{file.sha256}/{file.filename}")
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == file.sha256
    return headers["X-Cache"]


async def ready(proxy: ServeProcess) -> dict[str, Any]:
    status, _, body = await get(f"{proxy.url}/-/ready")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def index_url(proxy: ServeProcess) -> str:
    return f"{proxy.url}{BASE}/simple/"


def blob(cache: Path, file: FakeFile) -> Path:
    sha = file.sha256
    return cache / "blobs" / sha[:2] / sha[2:4] / sha


async def eventually(check: Any, what: str) -> None:
    """Poll `check()` (sync or async) for up to 10 s: background work under a loaded machine."""
    for _ in range(200):
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_a_root_owned_cache_directory_passes_through_until_it_becomes_writable(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    # Root's, as a volume Kubernetes mounted for a proxy running as uid 10001.
    cache = workdir / "cache"
    cache.mkdir(mode=0o755)
    async with await start(workdir, gitlab, cache, as_user=True) as proxy:
        (await pip_install(index_url(proxy), workdir / "target", "corp-util")).check()
        for _ in range(3):
            assert await fetch_file(proxy, wheel) == "BYPASS"
        # Verified all the same: a body that does not match its sha256 is cut.
        gitlab.corrupt_files = True
        with pytest.raises(aiohttp.ClientPayloadError):
            await get(f"{proxy.url}{BASE}/files/{wheel.sha256}/{wheel.filename}")
        gitlab.corrupt_files = False
        answer = await ready(proxy)
        assert answer["ready"] is True
        assert answer["cache"] == "pass-through"
        assert "not writable" in answer["degraded"][0]
        assert list(cache.iterdir()) == []

        os.chown(cache, 10001, 10001)
        await eventually(_read_write(proxy), "caching resumed")
        assert await fetch_file(proxy, wheel) == "MISS"
        assert await fetch_file(proxy, wheel) == "HIT"
        assert blob(cache, wheel).is_file()
        # The page learnt in memory while nothing could be stored is on disk now.
        with contextlib.closing(sqlite3.connect(cache / "index.sqlite3")) as db:
            pages = [key for (key,) in db.execute("SELECT key FROM pages")]
        assert "projects/42:corp-util" in pages
    warnings = [
        line
        for line in proxy.log().splitlines()
        if " WARNING " in line and "not writable" in line
    ]
    assert len(warnings) == 1, "\n".join(warnings)
    assert "Traceback" not in proxy.log()


def _read_write(proxy: ServeProcess) -> Any:
    async def check() -> bool:
        return (await ready(proxy))["cache"] == "read-write"

    return check
