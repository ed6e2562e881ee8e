"""Issue 11 items 1-3 through the real process: a cache directory not ours, a full disk, a
cache on read-only media. Each needs root (another user, tmpfs mounts) and skips without it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.cli_process import PROXY, ServeProcess, free_port
from tests.support.fake_gitlab import FakeFile, FakeGitLab
from tests.support.harness import TOKEN, clean_env, pip_install, run
from tests.support.polling import eventually

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
    # Probed often, so a test sees caching resume without waiting 10 s.
    # One process: each worker learns the cache's state for itself, and these tests ask one.
    settings = {"cache_recheck_interval": "0.1", "server_workers": "1", **settings}
    env = clean_env(
        GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
        GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
        GITLAB_PYPI_PROXY_CACHE_DIR=str(cache),
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
        line for line in proxy.log().splitlines() if " WARNING " in line and "not writable" in line
    ]
    assert len(warnings) == 1, "\n".join(warnings)
    assert "Traceback" not in proxy.log()


def _read_write(proxy: ServeProcess) -> Any:
    async def check() -> bool:
        return bool((await ready(proxy))["cache"] == "read-write")

    return check


@contextlib.contextmanager
def read_only_copy(source: Path, media: Path, *, skip: tuple[str, ...] = ()) -> Iterator[Path]:
    """`source` copied (but for the names in `skip`) onto a tmpfs then remounted read-only."""
    with tmpfs(media, "64m"):
        # A live cache's temp files (.part) come and go as it works: never part of a copy.
        shutil.copytree(
            source,
            media,
            dirs_exist_ok=True,
            ignore=lambda d, names: [*skip, *(n for n in names if n.endswith(".part"))],
        )
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        yield media


def file_requests(gitlab: FakeGitLab, file: FakeFile) -> int:
    return sum(1 for r in gitlab.requests if r.kind == "file" and file.filename in r.path)


async def test_a_cache_on_read_only_media_serves_what_it_holds_and_passes_the_rest_through(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    cached = gitlab.add_wheel(42, "corp-util", "1.0.0")
    filled = workdir / "filled"
    async with await start(workdir, gitlab, filled) as proxy:
        (await pip_install(index_url(proxy), workdir / "first", "corp-util")).check()
    fresh = gitlab.add_wheel(42, "corp-new", "1.0.0")
    asked = file_requests(gitlab, cached)
    # Closed cleanly, so the index has no -wal: SQLite could not create one, nor a -shm.
    with read_only_copy(filled, workdir / "media") as media:
        async with await start(workdir, gitlab, media) as proxy:
            answer = await ready(proxy)
            assert answer["cache"] == "read-only"
            assert "read-only" in answer["degraded"][0]
            target = workdir / "online"
            (await pip_install(index_url(proxy), target, "corp-util", "corp-new")).check()
            assert await fetch_file(proxy, cached) == "HIT"
            assert await fetch_file(proxy, fresh) == "BYPASS"
            # The stored page is what answers once GitLab is gone.
            gitlab.down = True
            (await pip_install(index_url(proxy), workdir / "down", "corp-util")).check()
        assert sorted(p.name for p in media.iterdir()) == ["blobs", "index.sqlite3", "tmp"]
    assert file_requests(gitlab, cached) == asked
    assert "Traceback" not in proxy.log()


@pytest.mark.parametrize("skip", [(), ("index.sqlite3-shm",)], ids=["wal-and-shm", "wal-only"])
async def test_an_index_copied_with_its_wal_is_read_whole_from_read_only_media(
    gitlab: FakeGitLab, workdir: Path, skip: tuple[str, ...]
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    page = f"{BASE}/simple/corp-util/"
    filled = workdir / "filled"
    async with await start(workdir, gitlab, filled) as proxy:
        assert (await get(proxy.url + page))[0] == 200
        assert await fetch_file(proxy, wheel) == "MISS"
        # The client has every byte a moment before the verified blob is renamed into place.
        await eventually(lambda: stored(filled, wheel), "the wheel stored")
        # Copied while it runs: what it stored is still in the -wal, not in the main file.
        with read_only_copy(filled, workdir / "media", skip=skip) as media:
            assert (media / "index.sqlite3-wal").stat().st_size > 0
            # index_ttl 0: the stored page is served as the stale copy it is once GitLab fails.
            async with await start(workdir, gitlab, media, cache_index_ttl="0") as copy:
                assert (await ready(copy))["cache"] == "read-only"
                gitlab.down = True
                status, headers, _ = await get(copy.url + page)
                assert (status, headers["X-Cache"]) == (200, "STALE")
                assert await fetch_file(copy, wheel) == "HIT"
            assert "Traceback" not in copy.log()
            # Without its -shm, SQLite cannot read a WAL on read-only media in place.
            assert ("from a private copy with its WAL" in copy.log()) == bool(skip)


def stored(cache: Path, file: FakeFile) -> bool:
    return blob(cache, file).is_file()


async def test_a_download_without_content_length_keeps_the_free_space_reserve(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    with tmpfs(workdir / "cache", "20m") as cache:
        # About 17 MiB free: 2 MiB more would eat into the 16 MiB reserve.
        (cache / "ballast").write_bytes(bytes(3 * MiB))
        wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=2 * MiB)
        gitlab.chunked_files = True
        # Not probed again during the test: with the reserve free again, a probe would let the
        # next download try (and stop at the reserve) once more.
        async with await start(workdir, gitlab, cache, cache_recheck_interval="600") as proxy:
            # Started as a fill, stopped at the reserve, and the client's copy went on from
            # GitLab: whole and verified all the same.
            assert await fetch_file(proxy, wheel) == "MISS"
            assert file_requests(gitlab, wheel) == 2
            assert await fetch_file(proxy, wheel) == "BYPASS"
            assert file_requests(gitlab, wheel) == 3
            assert "disk full" in (await ready(proxy))["degraded"][0]
            assert not stored(cache, wheel)
            assert list((cache / "tmp").iterdir()) == []
            assert shutil.disk_usage(cache).free > 16 * MiB


async def test_a_disk_other_files_fill_makes_room_by_eviction_and_caching_goes_on(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    with tmpfs(workdir / "cache", "32m") as cache:
        (cache / "ballast").write_bytes(bytes(4 * MiB))
        first = gitlab.add_wheel(42, "corp-first", "1.0.0", payload_size=4 * MiB)
        second = gitlab.add_wheel(42, "corp-second", "1.0.0", payload_size=4 * MiB)
        later = gitlab.add_wheel(42, "corp-later", "1.0.0", payload_size=1 * MiB)
        async with await start(workdir, gitlab, cache) as proxy:
            assert await fetch_file(proxy, first) == "MISS"
            assert await fetch_file(proxy, second) == "MISS"
            # Something else on the disk grows: about 14 MiB free, under the 16 MiB reserve,
            # far below cache.max_size (20 GiB), so size-based eviction would never run.
            (cache / "other-files").write_bytes(bytes(6 * MiB))
            assert await fetch_file(proxy, later) == "BYPASS"
            # The least recently used file makes room; the next request is cached.
            await eventually(lambda: not stored(cache, first), "the oldest file evicted")
            await eventually(_no_longer_degraded(proxy), "room made")
            assert await fetch_file(proxy, later) == "MISS"
            assert await fetch_file(proxy, later) == "HIT"
            assert await fetch_file(proxy, second) == "HIT"
            assert (await ready(proxy))["degraded"] == []
            assert shutil.disk_usage(cache).free >= 16 * MiB


async def test_a_disk_that_fills_up_during_a_download_does_not_cut_the_client(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    with tmpfs(workdir / "cache", "24m") as cache:
        wheel = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=4 * MiB)
        # 64 chunks of 64 KiB, paced: the download is still running when the disk fills.
        gitlab.file_chunk_delay = 0.02
        url = f"{BASE}/files/{wheel.sha256}/{wheel.filename}"
        async with await start(workdir, gitlab, cache) as proxy:
            async with aiohttp.ClientSession() as session, session.get(proxy.url + url) as resp:
                assert resp.headers["X-Cache"] == "MISS"
                body = await resp.content.readany()
                # Another program takes every byte left.
                with (cache / "ballast").open("wb") as ballast, contextlib.suppress(OSError):
                    while True:
                        ballast.write(bytes(MiB))
                        ballast.flush()
                body += await resp.read()
            assert hashlib.sha256(body).hexdigest() == wheel.sha256
            assert not stored(cache, wheel)
            assert "disk full" in (await ready(proxy))["degraded"][0]
            # Space comes back: caching resumes at the next probe.
            (cache / "ballast").unlink()
            gitlab.file_chunk_delay = 0
            await eventually(lambda: _cached(proxy, wheel), "caching resumed")
            assert await fetch_file(proxy, wheel) == "HIT"


def _no_longer_degraded(proxy: ServeProcess) -> Any:
    async def check() -> bool:
        return not (await ready(proxy))["degraded"]

    return check


async def _cached(proxy: ServeProcess, file: FakeFile) -> bool:
    return await fetch_file(proxy, file) == "MISS"


async def test_warm_refuses_a_cache_it_cannot_write(gitlab: FakeGitLab, workdir: Path) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    with tmpfs(workdir / "media", "1m") as media:
        subprocess.run(["mount", "-o", "remount,ro", str(media)], check=True)
        env = clean_env(
            GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
            GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
            GITLAB_PYPI_PROXY_CACHE_DIR=str(media),
        )
        result = await run([*PROXY, "warm", "projects/42", "corp-util"], env)
    assert result.returncode == 2
    assert "warm needs a cache it can write" in result.stderr
    assert "Traceback" not in result.stderr
    assert gitlab.counts["file"] == 0


async def test_an_index_left_by_root_in_our_directory_is_read_only_and_the_process_exits(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    cache = workdir / "cache"
    # Filled by root (say `sudo gitlab-pypi-proxy warm`), then handed to the proxy's user but
    # for the index itself.
    async with await start(workdir, gitlab, cache) as proxy:
        assert await fetch_file(proxy, wheel) == "MISS"
    for path in [cache, *cache.rglob("*")]:
        if path.name != "index.sqlite3":
            os.chown(path, 10001, 10001)
    async with await start(workdir, gitlab, cache, as_user=True) as proxy:
        assert (await ready(proxy))["cache"] == "read-only"
        assert await fetch_file(proxy, wheel) == "HIT"
        # Its failed read-write attempt must not leave a thread that keeps the process alive.
        assert await proxy.stop(timeout=10) == 0


async def test_an_index_from_before_core_metadata_is_read_from_read_only_media(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    page = f"{BASE}/simple/corp-util/"
    filled = workdir / "filled"
    async with await start(workdir, gitlab, filled) as proxy:
        assert (await get(proxy.url + page))[0] == 200
        assert await fetch_file(proxy, wheel) == "MISS"
    # As written before forwarded sources and PEP 658 metadata had tables of their own.
    with contextlib.closing(sqlite3.connect(filled / "index.sqlite3")) as db:
        db.execute("DROP TABLE core_metadata")
        db.execute("DROP TABLE forwarded_files")
        db.commit()
    with read_only_copy(filled, workdir / "media") as media:
        # index_ttl 0: the stored page is served as the stale copy it is once GitLab fails.
        async with await start(workdir, gitlab, media, cache_index_ttl="0") as copy:
            assert (await ready(copy))["cache"] == "read-only"
            gitlab.down = True
            status, headers, _ = await get(copy.url + page)
            assert (status, headers["X-Cache"]) == (200, "STALE")
            assert await fetch_file(copy, wheel) == "HIT"
        assert "Traceback" not in copy.log()


async def test_a_schema_1_index_keeps_its_core_metadata_on_read_only_media(
    gitlab: FakeGitLab, workdir: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    page = f"{BASE}/simple/corp-util/"
    metadata_url = f"{BASE}/files/{wheel.sha256}/{wheel.filename}.metadata"
    filled = workdir / "filled"
    async with await start(workdir, gitlab, filled) as proxy:
        assert (await get(proxy.url + page))[0] == 200
        assert await fetch_file(proxy, wheel) == "MISS"
        status, _, metadata = await get(proxy.url + metadata_url)
        assert status == 200
    # As release 1 wrote it: core_metadata without the `provisional` column, user_version 1.
    with contextlib.closing(sqlite3.connect(filled / "index.sqlite3")) as db:
        db.execute("ALTER TABLE core_metadata DROP COLUMN provisional")
        db.execute("PRAGMA user_version=1")
        db.commit()
    with read_only_copy(filled, workdir / "media") as media:
        async with await start(workdir, gitlab, media) as copy:
            assert (await ready(copy))["cache"] == "read-only"
            gitlab.down = True
            status, _, body = await get(copy.url + page)
            assert status == 200
            assert hashlib.sha256(metadata).hexdigest() in body.decode()
            status, _, served = await get(copy.url + metadata_url)
            assert (status, served) == (200, metadata)
        assert "Traceback" not in copy.log()
