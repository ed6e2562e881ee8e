"""Issues 12 and 14: worker count, one instance per port, shared metrics, a cache workers share."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import keys
from proxy.config import usable_cpus
from tests.support.cli_process import (
    PROXY,
    ServeProcess,
    children_of,
    free_port,
    workers_of,
    write_config,
)
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, ProxyFactory, clean_env
from tests.support.http import PROJECT, cached_wheel, fetch_as_written, url_of
from tests.support.metrics import FILES_ROUTE, value
from tests.support.polling import eventually

Configure = Callable[..., Path]
Spawn = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
def configure(tmp_path: Path, gitlab: FakeGitLab) -> Configure:
    """A config file in front of `gitlab`; each call its own cache unless `cache` says otherwise."""
    count = iter(range(1000))

    def factory(port: int, **sections: dict[str, Any]) -> Path:
        n = next(count)
        config: dict[str, dict[str, Any]] = {
            "server": {"port": port},
            "upstream": {"url": gitlab.url, "username": "proxy", "token": TOKEN},
            "cache": {"dir": str(tmp_path / f"cache-{n}")},
        }
        for name, values in sections.items():
            config.setdefault(name, {}).update(values)
        return write_config(tmp_path / f"proxy-{n}.toml", config)

    return factory


@pytest.fixture
async def spawn(configure: Configure) -> AsyncIterator[Spawn]:
    async with contextlib.AsyncExitStack() as started:

        async def factory(port: int | None = None, **sections: dict[str, Any]) -> ServeProcess:
            port = port or free_port()
            process = await ServeProcess.from_config(configure(port, **sections), port)
            return await started.enter_async_context(process)

        yield factory


async def wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    """The pids still running after `timeout` (none, once all have exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        if not alive:
            return []
        await asyncio.sleep(0.05)
    return alive


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    return False


@contextlib.contextmanager
def one_cpu_cgroup() -> Iterator[Path]:
    """A new cgroup whose CPU quota is one CPU (v1 `cpu` or v2 `cpu.max`); skips without root."""
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    group = (v1 if v1.is_dir() else v2) / f"gitlab-pypi-proxy-test-{os.getpid()}"
    if v1.is_dir():
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
    elif "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
        group.mkdir()
        (group / "cpu.max").write_text("100000 100000")
    else:
        pytest.skip("no cgroup CPU controller to limit a process with")
    try:
        yield group
    finally:
        group.rmdir()


async def test_auto_workers_follow_the_cgroup_cpu_quota(
    configure: Configure, tmp_path: Path
) -> None:
    """A Kubernetes sidecar limited to one CPU sees every core but gets one: one process."""
    if usable_cpus() < 2:
        pytest.skip("needs two CPUs to tell a quota from the affinity")
    port = free_port()
    config = configure(port)
    with one_cpu_cgroup() as group:
        # Into the cgroup first, then the proxy, as a container runtime starts it.
        argv = [
            "sh",
            "-c",
            f'echo $$ > {group / "cgroup.procs"} && exec "$@"',
            "sh",
            *PROXY,
            "--config",
            str(config),
            "serve",
        ]
        async with await ServeProcess.start(
            argv, port=port, env=clean_env(), cwd=tmp_path, log_path=config.with_suffix(".log")
        ) as proxy:
            assert workers_of(proxy.pid) == []
            assert await proxy.stop() == 0


@pytest.mark.parametrize(
    ("setting", "cpus"),
    [(None, None), ("auto", None), ("auto", {0}), (1, None)],
    ids=["default", "auto", "auto-on-one-cpu", "integer"],
)
async def test_workers_default_to_the_cpus_the_process_may_use(
    configure: Configure, tmp_path: Path, setting: str | int | None, cpus: set[int] | None
) -> None:
    port = free_port()
    server = {} if setting is None else {"workers": setting}
    config = configure(port, server=server)
    argv = [*PROXY, "--config", str(config), "serve"]
    if cpus is not None:
        # The CPUs a container or `taskset` gives the process, not the machine's.
        argv = ["taskset", "--cpu-list", ",".join(map(str, cpus)), *argv]
    expected = setting if isinstance(setting, int) else len(cpus) if cpus else usable_cpus()
    async with await ServeProcess.start(
        argv, port=port, env=clean_env(), cwd=tmp_path, log_path=config.with_suffix(".log")
    ) as proxy:
        # One process serves alone; more are workers under a supervisor that serves nothing.
        assert len(workers_of(proxy.pid)) == (expected if expected > 1 else 0)
        assert await proxy.stop() == 0


async def test_every_scrape_and_the_status_page_count_the_whole_process_group(
    gitlab: FakeGitLab, spawn: Spawn
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await spawn(server={"workers": 2})
    url = url_of(proxy.url, wheel)
    # A connection each: the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        answers = []
        for _ in range(40):
            async with session.get(url) as resp:
                assert resp.status == 200
                await resp.read()
                answers.append(resp.headers["X-Cache"])
        # Most are HITs; a worker's first answer of a file another worker fetched may not be.
        assert answers.count("HIT") >= 30, answers

        async def counted() -> tuple[float, float, int]:
            """Answers of the files route in a scrape; file lookups in it and on the status page."""
            async with session.get(f"{proxy.url}/-/metrics") as resp:
                samples = await _samples(resp)
            async with session.get(f"{proxy.url}/-/status") as resp:
                page = await resp.text()
            found = re.search(r'id="file-hits">(\d+) hits, (\d+) misses', page)
            assert found is not None, page
            p = "gitlab_pypi_proxy"
            return (
                value(samples, f"{p}_requests_total", route=FILES_ROUTE, status="200"),
                value(samples, f"{p}_cache_hits_total", kind="file")
                + value(samples, f"{p}_cache_misses_total", kind="file"),
                int(found[1]) + int(found[2]),
            )

        # Another worker's counters reach a scrape within moments, not at once.
        async def all_counted() -> bool:
            return await counted() == (40, 40, 40)

        await eventually(all_counted, "every worker's counters reach a scrape")
        # From then on every answer, whichever worker gives it, has them all.
        assert [await counted() for _ in range(12)] == [(40, 40, 40)] * 12
        assert len(workers_of(proxy.pid)) == 2


async def _samples(
    resp: aiohttp.ClientResponse,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }


@pytest.mark.parametrize(("first", "second"), [(2, 2), (1, 2)], ids=["2-then-2", "1-then-2"])
async def test_a_second_instance_on_the_same_port_stops_with_one_line(
    gitlab: FakeGitLab, spawn: Spawn, configure: Configure, first: int, second: int
) -> None:
    running = await spawn(server={"workers": first})
    # Its own cache and token: nothing in common but the port.
    config = configure(running.port, server={"workers": second})
    proc = await asyncio.create_subprocess_exec(
        *PROXY,
        "--config",
        str(config),
        "serve",
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        for child in children_of(proc.pid):
            os.kill(child, signal.SIGKILL)
        proc.kill()
        await proc.wait()
        raise AssertionError("the second instance started serving on a taken port") from None
    assert proc.returncode == 1
    lines = out.decode().splitlines()
    assert [line for line in lines if "ERROR" in line] == [
        line for line in lines if f"cannot listen on 127.0.0.1:{running.port}" in line
    ]
    assert len([line for line in lines if "ERROR" in line]) == 1, lines
    assert "Traceback" not in out.decode()
    # The first one serves on, alone: every new connection reaches it.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(10):
            async with session.get(f"{running.url}/-/health") as resp:
                assert resp.status == 200
    assert await running.stop() == 0


async def test_workers_exit_when_their_supervisor_is_killed(spawn: Spawn) -> None:
    proxy = await spawn(server={"workers": 2})
    workers = workers_of(proxy.pid)
    assert len(workers) == 2
    proxy.send_signal(signal.SIGKILL)
    await proxy.wait()
    assert await wait_gone(workers) == []
    # The port is free again for the next start, which serves alone.
    restarted = await spawn(port=proxy.port, server={"workers": 2})
    assert len(workers_of(restarted.pid)) == 2


async def test_a_blob_another_worker_stored_is_not_adopted_under_another_name(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two workers share the cache; the second never saw the first one's fill."""
    first = await make_proxy(cache_dir=tmp_path / "shared")
    second = await make_proxy(cache_dir=tmp_path / "shared")
    url, sha256 = await cached_wheel(gitlab, first)
    other = "other_pkg-9.9-py3-none-any.whl"
    before = len(gitlab.requests)
    status, _, body = await fetch_as_written(f"{second.url}{PROJECT}/files/{sha256}/{other}")
    # GitLab has no such file: it is asked, and says so.
    assert status == 404
    assert [r.path.rsplit("/", 1)[-1] for r in gitlab.requests[before:]] == [other]
    status, _, _ = await fetch_as_written(f"{second.url}{PROJECT}/files/{sha256}/{other}.metadata")
    assert status == 404
    for proxy in (first, second):
        status, _, body = await fetch_as_written(url.replace(first.url, proxy.url) + ".metadata")
        assert (status, b"Name: corp-util" in body) == (200, True)


async def test_a_file_another_worker_cached_is_checked_against_this_scope(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two workers share the cache; project 43 does not list the wheel project 42 has."""
    gitlab.add_project(43, "platform/other", group_id=7)
    first = await make_proxy(cache_dir=tmp_path / "shared")
    second = await make_proxy(cache_dir=tmp_path / "shared")
    url, _ = await cached_wheel(gitlab, first)
    elsewhere = url.replace(first.url, second.url).replace("/projects/42/", "/projects/43/")
    before = len(gitlab.requests)
    for _ in range(2):
        status, _, body = await fetch_as_written(elsewhere)
        assert status == 404, body
    # GitLab was asked about project 43 (a HEAD), and nothing was taken for its file.
    asked = gitlab.requests[before:]
    assert asked and all("/projects/43/" in r.path for r in asked)


async def test_a_page_another_worker_fetched_is_fresh_here_too(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two workers share the cache: within index_ttl GitLab is asked once per page."""
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    workers = [
        await make_proxy(cache_dir=tmp_path / "shared", cache={"index_ttl": 600}) for _ in "ab"
    ]
    for proxy in workers * 2:
        assert (await fetch_as_written(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    assert gitlab.counts["page"] == 1


async def test_metadata_another_worker_read_is_not_fetched_again(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Pip reads the page, then metadata, then the wheel: one download from GitLab in all."""
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    first, second = [await make_proxy(cache_dir=tmp_path / "shared") for _ in "ab"]
    url = f"{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    for proxy in (first, second):
        assert (await fetch_as_written(f"{proxy.url}{PROJECT}/simple/corp-util/"))[0] == 200
    status, _, metadata = await fetch_as_written(first.url + url + ".metadata")
    assert status == 200
    await first.app[keys.METADATA].close()  # its record of the metadata is written
    assert await fetch_as_written(second.url + url + ".metadata") == (200, ANY, metadata)
    status, _, body = await fetch_as_written(second.url + url)
    assert hashlib.sha256(body).hexdigest() == wheel.sha256
    assert gitlab.counts["file"] == 1
