"""`python -m bench.hitcost`: the proxy's CPU time per cached hit, which other load moves little.

Throughput on a shared machine says more about the neighbours than about the proxy; the CPU
the proxy's processes spend per answered request does not. Each configuration runs the real
command line in front of the test suite's fake GitLab; the figure is (user + system CPU of the
supervisor and its workers) / requests, over `--requests` cached answers on 16 keep-alive
connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from tests.support.cli_process import ServeProcess, children_of, free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import clean_env

TOKEN = "glpat-bench-hitcost-token"
CONNECTIONS = 16
# name -> extra environment; "default" sets nothing, as a user who writes no config.
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "default": {},
    "access log off": {"GITLAB_PYPI_PROXY_SERVER_ACCESS_LOG": "false"},
    "1 worker": {"GITLAB_PYPI_PROXY_SERVER_WORKERS": "1"},
    "1 worker, no log": {
        "GITLAB_PYPI_PROXY_SERVER_WORKERS": "1",
        "GITLAB_PYPI_PROXY_SERVER_ACCESS_LOG": "false",
    },
}


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of `pids`, from /proc (clock ticks)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command: state is field 0, utime 11 and stime 12.
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def _hammer(url: str, requests: int) -> None:
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_connection(count: int) -> None:
            for _ in range(count):
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: {resp.status}")

        await asyncio.gather(*(one_connection(requests // CONNECTIONS) for _ in range(CONNECTIONS)))


async def measure(name: str, extra: dict[str, str], requests: int, workdir: Path) -> float:
    """Microseconds of proxy CPU per cached hit of one small wheel under `extra`."""
    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_group(7, "platform")
    gitlab.add_project(42, "platform/tools", group_id=7)
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", payload_size=11_000)
    await gitlab.start()
    try:
        port = free_port()
        env = clean_env(
            GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
            GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
            GITLAB_PYPI_PROXY_CACHE_DIR=str(workdir / name.replace(" ", "-")),
            **extra,
        )
        argv = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
        async with await ServeProcess.start(argv, port=port, env=env, cwd=workdir) as proxy:
            files = f"{proxy.url}/api/v4/projects/42/packages/pypi/files"
            url = f"{files}/{wheel.sha256}/{wheel.filename}"
            await _hammer(url, CONNECTIONS * 4)
            pids = [proxy.pid, *children_of(proxy.pid)]
            before = cpu_seconds(pids)
            await _hammer(url, requests)
            return (cpu_seconds(pids) - before) / requests * 1e6
    finally:
        await gitlab.stop()


async def _main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in CONFIGURATIONS.items():
            cost = await measure(name, extra, requests, Path(tmp))
            print(f"{name:>16}: {cost:6.1f} µs CPU per cached 11 KB hit", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hitcost", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    asyncio.run(_main(args.requests))


if __name__ == "__main__":
    main()
