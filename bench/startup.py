"""Start-up time, idle RSS and RSS after 10,000 hits of the real `serve` (not run in CI).

    .venv/bin/python bench/startup.py [--source DIR] [--runs 5] [--requests 10000]

Spawns `python -m proxy serve` in front of the fake GitLab (tests/support/fake_gitlab.py)
and reports:
time from spawn to the first 200 from /-/ready, RSS once ready, then RSS and hit throughput after
`--requests` requests, half simple pages and half small files, all cache hits. `--source` runs
another checkout of the proxy (e.g. `git worktree add /tmp/base main`) with this venv, to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.cli_process import free_port  # noqa: E402
from tests.support.fake_gitlab import FakeFile, FakeGitLab  # noqa: E402
from tests.support.harness import clean_env  # noqa: E402

TOKEN = "glpat-bench-token"
PACKAGES = 20


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: unlike wall time, not stretched by a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def spawn(
    source: Path, gitlab: FakeGitLab, cache: Path
) -> tuple[asyncio.subprocess.Process, str, float, float]:
    port = free_port()
    env = clean_env(
        GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
        GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
        GITLAB_PYPI_PROXY_CACHE_DIR=str(cache),
        GITLAB_PYPI_PROXY_SERVER_PORT=str(port),
        PYTHONPATH=str(source),
    )
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        cwd=source,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.returncode is not None:
                raise RuntimeError("the proxy exited")
            try:
                async with session.get(f"{url}/-/ready") as resp:
                    if resp.status == 200:
                        wall = time.perf_counter() - started
                        return proc, url, wall, cpu_seconds(proc.pid)
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.005)


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGTERM)
    await proc.wait()


async def hammer(urls: list[str], total: int, concurrency: int) -> float:
    """Requests per second for `total` GETs over `urls`, each answered 200."""
    cycle = itertools.cycle(urls)
    remaining = total
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(next(cycle)) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{resp.status} from {resp.url}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout of the proxy to run")
    parser.add_argument("--runs", type=int, default=5, help="start-ups to time")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_group(7, "platform")
    gitlab.add_project(42, "platform/tools", group_id=7)
    wheels: list[FakeFile] = [
        gitlab.add_wheel(42, f"bench-pkg-{n}", "1.0.0", payload_size=8_000) for n in range(PACKAGES)
    ]
    await gitlab.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            starts, cpus = [], []
            for run in range(args.runs):
                proc, _, wall, cpu = await spawn(args.source, gitlab, Path(tmp) / f"cache{run}")
                starts.append(wall)
                cpus.append(cpu)
                await stop(proc)
            proc, url, _, _ = await spawn(args.source, gitlab, Path(tmp) / "cache")
            await asyncio.sleep(1)
            idle = rss_mib(proc.pid)
            base = f"{url}/api/v4/projects/42/packages/pypi"
            pages = [f"{base}/simple/bench-pkg-{n}/" for n in range(PACKAGES)]
            files = [f"{base}/files/{w.sha256}/{w.filename}" for w in wheels]
            mix = [u for pair in zip(pages, files, strict=True) for u in pair]
            await hammer(mix, len(mix), 1)  # warm: every page and file cached once
            pages_rate = await hammer(pages, 2_000, args.concurrency)
            files_rate = await hammer(files, 2_000, args.concurrency)
            rate = await hammer(mix, args.requests, args.concurrency)
            after = rss_mib(proc.pid)
            await stop(proc)
    finally:
        await gitlab.stop()

    print(f"source: {args.source}  python {sys.version.split()[0]}  cpus {os.cpu_count()}")
    print(
        f"start to ready: median {1000 * statistics.median(starts):.0f} ms, "
        f"min {1000 * min(starts):.0f} ms, max {1000 * max(starts):.0f} ms ({args.runs} runs)"
    )
    print(f"CPU time to ready: median {1000 * statistics.median(cpus):.0f} ms")
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"idle RSS: {idle:.1f} MiB")
    size = len(wheels[0].content)
    print(f"RSS after {args.requests} requests (pages and {size} B files): {after:.1f} MiB")
    print(
        f"hits per second, concurrency {args.concurrency}, one client process on the same "
        f"machine: pages {pages_rate:.0f}, small files {files_rate:.0f}, mix {rate:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
