"""Issue 18: replicas (and one Redis) behind the README's consistent-hash nginx or HAProxy."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from yarl import URL

from tests.support.cli_process import ServeProcess, free_port, write_config
from tests.support.fake_gitlab import FakeFile, FakeGitLab
from tests.support.haproxy import HAPROXY, haproxy_cfg, start_haproxy, stop_haproxy
from tests.support.haproxy import SKIP_REASON as NO_HAPROXY
from tests.support.harness import TOKEN, ProxyFactory, pip_install, twine, uv_pip_install
from tests.support.http import basic, fetch, post_as_is
from tests.support.moto_server import BUCKET, MotoServer
from tests.support.multipart import GOOD, GOOD_TYPE
from tests.support.nginx import (
    NGINX,
    balancer_snippet,
    nginx_conf,
    start_nginx,
    stop_nginx,
)
from tests.support.nginx import SKIP_REASON as NO_NGINX
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer
from tests.support.wheels import make_wheel

needs_nginx = pytest.mark.skipif(NGINX is None, reason=NO_NGINX)
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason=NO_HAPROXY)

REPLICAS = ("one", "two", "three")
LIBRARIES = [f"corp-lib{i}" for i in range(6)]
SIMPLE = "/api/v4/projects/42/packages/pypi/simple/"
UPLOAD = "/api/v4/projects/42/packages/pypi"
PREFIX = "replicas"


@dataclass
class Cluster:
    replicas: list[ServeProcess]
    url: str
    # The balancer's log: nginx's error.log, HAProxy's stderr.
    log: Path

    @property
    def index(self) -> str:
        return self.url + SIMPLE


# The README's balancer in front of these replica ports, in this directory: its URL and log.
Balancer = Callable[[list[int], Path], contextlib.AbstractAsyncContextManager[tuple[str, Path]]]


@contextlib.asynccontextmanager
async def nginx(replica_ports: list[int], prefix: Path) -> AsyncIterator[tuple[str, Path]]:
    port = free_port()
    (prefix / "nginx.conf").write_text(nginx_conf(balancer_snippet(port, replica_ports), prefix))
    proc = await start_nginx(prefix, port)
    try:
        yield f"http://127.0.0.1:{port}", prefix / "error.log"
    finally:
        await stop_nginx(proc)


@contextlib.asynccontextmanager
async def haproxy(replica_ports: list[int], prefix: Path) -> AsyncIterator[tuple[str, Path]]:
    port = free_port()
    (prefix / "haproxy.cfg").write_text(haproxy_cfg(port, replica_ports))
    proc = await start_haproxy(prefix / "haproxy.cfg", port, prefix / "haproxy.log")
    try:
        yield f"http://127.0.0.1:{port}", prefix / "haproxy.log"
    finally:
        await stop_haproxy(proc)


@contextlib.asynccontextmanager
async def cluster(
    gitlab: FakeGitLab,
    redis: RedisServer,
    tmp_path: Path,
    storage: dict[str, str | float] | None = None,
    balancer: Balancer = nginx,
) -> AsyncIterator[Cluster]:
    """Three `serve` processes (one worker each, a cache directory each) behind the balancer;
    with `storage`, on one shared tier."""
    replicas: list[ServeProcess] = []
    try:
        configs = []
        for name in REPLICAS:
            port = free_port()
            config = write_config(
                tmp_path / f"{name}.toml",
                {
                    "server": {"host": "127.0.0.1", "port": port, "workers": 1},
                    "upstream": {"url": gitlab.url, "username": "proxy", "token": TOKEN},
                    "cache": {"dir": str(tmp_path / f"cache-{name}")},
                    "cluster": {"redis_url": redis.url},
                    **({"storage": storage} if storage else {}),
                },
            )
            configs.append((config, port))
        # Started at once, as a deployment would; those that did start are closed below.
        started = await asyncio.gather(
            *(ServeProcess.from_config(config, port) for config, port in configs),
            return_exceptions=True,
        )
        replicas += [replica for replica in started if isinstance(replica, ServeProcess)]
        for failure in started:
            if isinstance(failure, BaseException):
                raise failure
        prefix = tmp_path / "balancer"
        prefix.mkdir()
        async with balancer([replica.port for replica in replicas], prefix) as (url, log):
            yield Cluster(replicas, url, log)
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))


def publish(gitlab: FakeGitLab) -> list[FakeFile]:
    wheels = [gitlab.add_wheel(42, library, "1.0.0") for library in LIBRARIES]
    return [*wheels, gitlab.add_wheel(42, "corp-app", "1.0.0", requires=LIBRARIES)]


async def install(index: str, target: Path) -> None:
    (await pip_install(index, target, "corp-app")).check()
    assert (target / "corp_lib5-1.0.0.dist-info").is_dir()


def downloads(gitlab: FakeGitLab) -> Counter[str]:
    """GitLab's file downloads by sha256 (the HEADs replicas ask about a file are not counted)."""
    return Counter(
        r.path.split("/files/")[1].split("/")[0]
        for r in gitlab.requests
        if r.kind == "file" and r.method == "GET"
    )


def holds(replica_cache: Path, wheels: list[FakeFile]) -> set[str]:
    """The sha256s of `wheels` this replica's cache directory holds."""
    held = {p.name for p in (replica_cache / "blobs").rglob("*") if p.is_file()}
    return {wheel.sha256 for wheel in wheels} & held


@needs_nginx
async def test_each_file_is_fetched_once_across_replicas_and_losing_one_fails_no_install(
    gitlab: FakeGitLab, redis_server: RedisServer, tmp_path: Path
) -> None:
    wheels = publish(gitlab)
    async with cluster(gitlab, redis_server, tmp_path) as running:
        # Three installs at once, then one more: each file downloaded from GitLab once in all.
        await asyncio.gather(*(install(running.index, tmp_path / f"first{i}") for i in range(3)))
        await install(running.index, tmp_path / "again")
        assert downloads(gitlab) == Counter({wheel.sha256: 1 for wheel in wheels})
        held = [holds(tmp_path / f"cache-{name}", wheels) for name in REPLICAS]
        # Which replica holds what depends on the ring, hence on the ports; each file on one.
        assert sorted(sha for each in held for sha in each) == sorted(w.sha256 for w in wheels)

        # A run of installs; the replica holding the most files dies in the middle of it.
        most = max(range(len(held)), key=lambda i: len(held[i]))
        for i in range(4):
            if i == 2:
                await running.replicas[most].kill()
            await install(running.index, tmp_path / f"run{i}")
        # Its files moved to the next replica on the ring, which downloaded each once more.
        expected = Counter({wheel.sha256: 1 + (wheel.sha256 in held[most]) for wheel in wheels})
        assert downloads(gitlab) == expected
        assert "connect() failed" in running.log.read_text()


@needs_haproxy
async def test_haproxy_fetches_each_wheel_and_its_metadata_once_and_losing_a_replica_fails_none(
    gitlab: FakeGitLab, redis_server: RedisServer, tmp_path: Path
) -> None:
    wheels = publish(gitlab)
    async with cluster(gitlab, redis_server, tmp_path, balancer=haproxy) as running:
        # pip reads each wheel's .metadata (PEP 658) before the wheel: hashed as the wheel, it
        # is read from the wheel on the replica that fetched it, not by Range from GitLab.
        await install(running.index, tmp_path / "first")
        await install(running.index, tmp_path / "again")
        assert downloads(gitlab) == Counter({wheel.sha256: 1 for wheel in wheels})
        held = [holds(tmp_path / f"cache-{name}", wheels) for name in REPLICAS]
        assert sorted(sha for each in held for sha in each) == sorted(w.sha256 for w in wheels)

        most = max(range(len(held)), key=lambda i: len(held[i]))
        await running.replicas[most].kill()
        await install(running.index, tmp_path / "after")
        expected = Counter({wheel.sha256: 1 + (wheel.sha256 in held[most]) for wheel in wheels})
        assert downloads(gitlab) == expected
        # HAProxy retried the lost replica's requests on the next one (`+1` retries in its log),
        # unless its health checks had marked it down first (the README's servers: replica1-3).
        log = running.log.read_text()
        assert re.search(rf"/\+1 |replica{most + 1} is DOWN", log), log


@pytest.mark.parametrize(
    "balancer",
    [
        pytest.param(nginx, marks=needs_nginx, id="nginx"),
        pytest.param(haproxy, marks=needs_haproxy, id="haproxy"),
    ],
)
async def test_the_balancer_sends_an_upload_that_gitlab_answers_503_to_gitlab_once(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path, balancer: Balancer
) -> None:
    # Replicas in this process: the balancer's retries are the subject, not the replicas' own.
    replicas = [await make_proxy(cache_dir=tmp_path / f"cache-{name}") for name in REPLICAS]
    prefix = tmp_path / "balancer"
    prefix.mkdir()
    async with balancer([URL(replica.url).port or 0 for replica in replicas], prefix) as (url, _):
        # GitLab may have stored an upload it answers 503 to (as a GitLab behind its own
        # balancer may): resent to the next replica, it would reach GitLab again. (One POST
        # here, not twine, which sends its upload again by itself on a 503.)
        gitlab.fail_status = 503
        status, _, _ = await post_as_is(url + UPLOAD, GOOD, GOOD_TYPE, basic(TOKEN))
        assert (status, gitlab.counts["upload"]) == (503, 1)
        # While a GET is tried on the next replica (and the next): the 503 is retried.
        assert (await fetch(url + SIMPLE + "corp-util/")).status == 503
        assert gitlab.counts["page"] >= 2


@needs_nginx
async def test_with_a_shared_tier_losing_a_replica_fetches_no_file_from_gitlab_again(
    gitlab: FakeGitLab, redis_server: RedisServer, moto: MotoServer, tmp_path: Path
) -> None:
    wheels = publish(gitlab)
    storage: dict[str, str | float] = {
        "url": f"s3://{BUCKET}/{PREFIX}",
        "endpoint_url": moto.endpoint,
        "region": "us-east-1",
    }
    async with cluster(gitlab, redis_server, tmp_path, storage) as running:
        await asyncio.gather(*(install(running.index, tmp_path / f"first{i}") for i in range(3)))
        assert downloads(gitlab) == Counter({wheel.sha256: 1 for wheel in wheels})
        # Each replica puts its verified files to the tier in the background.
        await eventually(_in_tier(moto, wheels), "every wheel is in the shared tier", timeout=20)
        held = [holds(tmp_path / f"cache-{name}", wheels) for name in REPLICAS]
        most = max(range(len(held)), key=lambda i: len(held[i]))
        assert held[most], held

        for i in range(4):
            if i == 2:
                await running.replicas[most].kill()
            await install(running.index, tmp_path / f"run{i}")
        # The next replica on the ring took the lost one's files from the tier, not from GitLab.
        assert downloads(gitlab) == Counter({wheel.sha256: 1 for wheel in wheels})
        survivors = [name for name in REPLICAS if name != REPLICAS[most]]
        now_held = set().union(*(holds(tmp_path / f"cache-{name}", wheels) for name in survivors))
        assert held[most] <= now_held, "the survivors hold the lost replica's files now"


def _in_tier(moto: MotoServer, wheels: list[FakeFile]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with moto.client() as s3:
            listing = await s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/blobs/")
        stored = {item["Key"].rsplit("/", 1)[1] for item in listing.get("Contents", [])}
        return {wheel.sha256 for wheel in wheels} <= stored

    return check


@needs_nginx
async def test_an_upload_through_the_balancer_is_installable_through_every_replica_at_once(
    gitlab: FakeGitLab, redis_server: RedisServer, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    async with cluster(gitlab, redis_server, tmp_path) as running:
        # Every replica has the page cached, fresh for index_ttl (300 s).
        await asyncio.gather(
            *(installs(replica, tmp_path / "old", "1.0.0") for replica in running.replicas)
        )

        filename, content = make_wheel("corp-util", "1.1.0")
        wheel = tmp_path / filename
        wheel.write_bytes(content)
        (await twine(running.url + UPLOAD, TOKEN, wheel)).check()

        await asyncio.gather(
            *(installs(replica, tmp_path / "new", "1.1.0") for replica in running.replicas)
        )


async def installs(replica: ServeProcess, targets: Path, version: str) -> None:
    """pip through this one replica (each in a target of its own) installs corp-util `version`."""
    target = targets / str(replica.port)
    (await pip_install(replica.url + SIMPLE, target, "corp-util")).check()
    assert (target / f"corp_util-{version}.dist-info").is_dir()


@needs_nginx
@pytest.mark.parametrize("client", ["pip", "uv"])
async def test_a_replica_killed_in_the_middle_of_a_download_fails_no_install(
    gitlab: FakeGitLab, redis_server: RedisServer, tmp_path: Path, client: str
) -> None:
    big = gitlab.add_wheel(42, "corp-big", "1.0.0", payload_size=2 * 1024 * 1024)
    # GitLab streams it slowly, so the kill lands while the replica streams it on to the client.
    gitlab.file_chunk_delay = 0.05
    async with cluster(gitlab, redis_server, tmp_path) as running:
        target = tmp_path / "target"
        if client == "pip":
            installing = pip_install(running.index, target, "corp-big")
        else:
            installing = uv_pip_install(
                running.index, target, "corp-big", cache_dir=tmp_path / "uv-cache"
            )
        client_run = asyncio.ensure_future(installing)

        def streaming() -> int | None:
            """The replica whose fill of the wheel is past its first 256 KiB, if any."""
            for index, name in enumerate(REPLICAS):
                for part in (tmp_path / f"cache-{name}" / "tmp").glob(f"{big.sha256}*.part"):
                    with contextlib.suppress(FileNotFoundError):
                        if part.stat().st_size >= 256 * 1024:
                            return index
            return None

        await eventually(lambda: streaming() is not None, "a replica streams the wheel")
        holder = streaming()
        assert holder is not None
        await running.replicas[holder].kill()
        gitlab.file_chunk_delay = 0.0

        # pip resumes with a Range request, uv asks again; nginx sends either to the next
        # replica on the ring, which fetches the whole file, verifies it and answers (a 206
        # of the rest for pip).
        done = (await client_run).check()
        if client == "pip":
            assert "Attempting to resume incomplete download" in done.stderr, done.stderr
        assert (target / "corp_big-1.0.0.dist-info").is_dir()
        # The whole file twice from GitLab: cut with the killed replica, then the next one's
        # (a replica's read of the wheel's METADATA is a range of its tail).
        whole = [r for r in gitlab.requests if r.kind == "file" and "Range" not in r.headers]
        assert len(whole) == 2
