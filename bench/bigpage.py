"""Latency of cached hits on the proxy process while it fetches and parses one huge page.

`.venv/bin/python -m bench.bigpage --files 100000`: the fake GitLab serves a page of that many
links; the bench GETs it once through the proxy while GETting a small cached page over and over,
and reports the hits answered while the proxy read, parsed, stored and rendered the big one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from tests.support.big_pages import hits_while_parsing
from tests.support.cli_process import PROXY, ServeProcess, free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import clean_env

TOKEN = "glpat-bench-token"


async def measure(files: int) -> str:
    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_project(42, "platform/tools")
    gitlab.add_wheel(42, "corp-small", "1.0.0")
    gitlab.add_many_files(42, "corp-huge", "1.0.0", files)
    async with gitlab:
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            env = clean_env(
                GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
                GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
                GITLAB_PYPI_PROXY_CACHE_DIR=str(Path(tmp) / "cache"),
                GITLAB_PYPI_PROXY_SERVER_ACCESS_LOG="false",
            )
            argv = [*PROXY, "serve", "--port", str(port)]
            async with await ServeProcess.start(argv, port=port, env=env, cwd=Path(tmp)) as proxy:
                status, took, latencies = await hits_while_parsing(
                    proxy.url, gitlab, "corp-huge", "corp-small"
                )
    latencies.sort()
    if status != 200 or not latencies:
        return f"{files} links: big page answered {status}, {len(latencies)} hits meanwhile"
    p95 = latencies[int(len(latencies) * 0.95)]
    return (
        f"{files} links: big page in {took:.1f} s; {len(latencies)} cached hits meanwhile, "
        f"median {statistics.median(latencies) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    print(asyncio.run(measure(parser.parse_args().files)))


if __name__ == "__main__":
    main()
