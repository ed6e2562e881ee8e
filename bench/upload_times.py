"""What upload times cost a page fetch: Packages API calls and wall time, 300 versions.

`.venv/bin/python -m bench.upload_times --versions 300 --latency 0.02`: the fake GitLab on
loopback (with that latency added to every request) holds one package of that many versions; a
proxy process fetches its JSON page cold, again once index_ttl has passed, and again after one
new upload. Beside it, the same proxy configured with a CI job token, which never asks the REST
API: the difference is what learning upload times adds. Medians of `--runs` fresh caches.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.support.cli_process import PROXY, ServeProcess, free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import clean_env

TOKEN = "glpat-bench-token"
PAGE = "/api/v4/projects/42/packages/pypi/simple/many/"
JSON_V1 = "application/vnd.pypi.simple.v1+json"
INDEX_TTL = 0.5
STEPS = ("first fetch", "refetch, nothing new", "refetch, one new upload")


def add_version(gitlab: FakeGitLab, minor: int) -> None:
    content = f"many {minor}".encode()
    gitlab.add_file(42, "many", f"1.{minor}", f"many-1.{minor}-py3-none-any.whl", content)


async def timed_page(session: aiohttp.ClientSession, url: str) -> tuple[float, bool]:
    """Seconds to the whole JSON page, and whether every file on it has an upload time."""
    started = time.monotonic()
    async with session.get(url + PAGE, headers={"Accept": JSON_V1}) as resp:
        assert resp.status == 200, resp.status
        page = await resp.json(content_type=JSON_V1)
    took = time.monotonic() - started
    return took, all("upload-time" in f for f in page["files"])


async def one_run(versions: int, latency: float, *, learns: bool) -> list[tuple[float, int, bool]]:
    """(seconds, Packages API calls, all times known) for each of STEPS."""
    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_project(42, "platform/tools")
    gitlab.job_tokens.add(TOKEN)
    for minor in range(versions):
        add_version(gitlab, minor)
    results = []
    async with gitlab:
        gitlab.delay = latency
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            env = clean_env(
                GITLAB_PYPI_PROXY_UPSTREAM_URL=gitlab.url,
                GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=TOKEN,
                GITLAB_PYPI_PROXY_CACHE_DIR=str(Path(tmp) / "cache"),
                GITLAB_PYPI_PROXY_CACHE_INDEX_TTL=str(INDEX_TTL),
                GITLAB_PYPI_PROXY_SERVER_ACCESS_LOG="false",
                GITLAB_PYPI_PROXY_SERVER_WORKERS="1",
            )
            if not learns:
                # A CI job token works only as Basic: the proxy never asks the REST API with it.
                env["GITLAB_PYPI_PROXY_UPSTREAM_USERNAME"] = "gitlab-ci-token"
            argv = [*PROXY, "serve", "--port", str(port)]
            async with (
                await ServeProcess.start(argv, port=port, env=env, cwd=Path(tmp)) as proxy,
                aiohttp.ClientSession() as session,
            ):
                for step in STEPS:
                    if step == STEPS[2]:
                        add_version(gitlab, versions)
                    calls = gitlab.counts["api"]
                    took, known = await timed_page(session, proxy.url)
                    results.append((took, gitlab.counts["api"] - calls, known))
                    await asyncio.sleep(INDEX_TTL * 1.5)
    return results


async def measure(versions: int, latency: float, runs: int) -> str:
    lines = [
        f"{versions} versions, {latency * 1000:.0f} ms added to every GitLab request, "
        f"median of {runs} runs",
        "| step | Packages API calls | page with upload times | without (job token) | added |",
        "|---|---|---|---|---|",
    ]
    with_times = [await one_run(versions, latency, learns=True) for _ in range(runs)]
    without = [await one_run(versions, latency, learns=False) for _ in range(runs)]
    for index, step in enumerate(STEPS):
        took = statistics.median(run[index][0] for run in with_times)
        base = statistics.median(run[index][0] for run in without)
        calls = statistics.median(run[index][1] for run in with_times)
        known = all(run[index][2] for run in with_times)
        lines.append(
            f"| {step} | {calls:.0f} | {took * 1000:.0f} ms{'' if known else ' (some unknown)'} "
            f"| {base * 1000:.0f} ms | {(took - base) * 1000:+.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, default=300)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per GitLab request")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(asyncio.run(measure(args.versions, args.latency, args.runs)))


if __name__ == "__main__":
    main()
