"""Resolve-and-install benchmark: uv and pip, straight from the fake GitLab vs through the proxy.

Run from the repository root:  .venv/bin/python bench/resolve.py [--runs 3] [--gitlab-delay 0]

Each client installs the same test set into an empty target, with an empty client cache
("cold client") and again with the cache of a previous run ("warm client"), once from the fake
GitLab directly (credentials in the index URL, as users do today) and once through a proxy whose
cache is already warm. Bytes are counted on the server side of a TCP relay in front of each
server: everything the client received, headers included. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fake_gitlab import FakeGitLab  # noqa: E402
from tests.support.harness import BIN, make_settings, run, start_proxy  # noqa: E402

TOKEN = "glpat-bench-token-0123456789"
REQUIREMENT = "corp-app"
KIB = 1024


def publish(gitlab: FakeGitLab) -> int:
    """A package with several versions and a few dependencies; wheels of 200 KB to 2 MB.

    The newest corp-core does not go with the newest corp-plugin, so resolvers look at
    a version they then drop. Returns the total size of all wheels.
    """
    sizes = random.Random(5)
    total = 0

    def wheel(name: str, version: str, requires: tuple[str, ...] = ()) -> None:
        nonlocal total
        payload = sizes.randint(200 * KIB, 2048 * KIB)
        added = gitlab.add_wheel(42, name, version, requires=requires, payload_size=payload)
        total += len(added.content)

    for version in ("1.0.0", "1.1.0", "1.2.0"):
        wheel("corp-utils", version)
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        wheel("corp-core", version, ("corp-utils>=1.0",))
    wheel("corp-plugin", "1.0.0", ("corp-core>=1.0",))
    wheel("corp-plugin", "2.0.0", ("corp-core>=1.1,<2",))
    wheel("corp-app", "1.0.0", ("corp-core>=1.0",))
    wheel("corp-app", "2.0.0", ("corp-core>=1.1", "corp-utils>=1.1"))
    wheel("corp-app", "2.1.0", ("corp-core>=1.1", "corp-plugin>=2", "corp-utils>=1.1"))
    return total


class CountingRelay:
    """A TCP relay to one server that counts the bytes its clients receive."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.received = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(256 * KIB):
                    if count:
                        self.received += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(client_r, server_w, False), pump(server_r, client_w, True))


@dataclass
class Sample:
    seconds: float
    received: int
    upstream_requests: int


def pip_args(index: str, target: Path, cache: Path | None) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary",
        ":all:",
        *(["--cache-dir", str(cache)] if cache else ["--no-cache-dir"]),
        # pip keeps an HTTP cache only for https and trusted hosts; a LAN proxy is the latter.
        "--trusted-host",
        "127.0.0.1",
        "--index-url",
        index,
        "--target",
        str(target),
        REQUIREMENT,
    ]


def uv_args(index: str, target: Path, cache: Path) -> list[str]:
    return [
        str(BIN / "uv"),
        "pip",
        "install",
        "--no-config",
        "--only-binary",
        ":all:",
        "--cache-dir",
        str(cache),
        "--python",
        sys.executable,
        "--index-url",
        index,
        "--target",
        str(target),
        REQUIREMENT,
    ]


async def measure(
    relay: CountingRelay, gitlab: FakeGitLab, command: list[str], target: Path
) -> Sample:
    shutil.rmtree(target, ignore_errors=True)
    relay.received = 0
    upstream = len(gitlab.requests)
    started = time.perf_counter()
    (await run(command)).check()
    seconds = time.perf_counter() - started
    return Sample(seconds, relay.received, len(gitlab.requests) - upstream)


def install_command(client: str, index: str, target: Path, cache: Path, warm: bool) -> list[str]:
    """The client's install; a cold pip gets no cache, a cold uv an empty one."""
    if client == "uv":
        return uv_args(index, target, cache)
    return pip_args(index, target, cache if warm else None)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument(
        "--gitlab-delay", type=float, default=0.0, help="seconds the fake GitLab waits per request"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-resolve-"))
    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_group(7, "platform")
    gitlab.add_project(42, "platform/tools", group_id=7)
    await gitlab.start()
    total = publish(gitlab)
    proxy = await start_proxy(make_settings(gitlab.server_url, work / "proxy-cache", TOKEN))
    direct = CountingRelay(int(gitlab.server_url.rsplit(":", 1)[1]))
    through = CountingRelay(int(proxy.url.rsplit(":", 1)[1]))
    await direct.start()
    await through.start()
    # GitLab's absolute file links name its external URL: here, the relay clients talk to.
    gitlab.external_url = f"http://127.0.0.1:{direct.port}"
    path = "/api/v4/projects/42/packages/pypi/simple/"
    indexes = {
        "GitLab direct": (direct, f"http://bench:{TOKEN}@127.0.0.1:{direct.port}{path}"),
        "proxy (warm)": (through, f"http://127.0.0.1:{through.port}{path}"),
    }
    try:
        # Warm the proxy: both clients, once each, so every page, wheel and metadata is cached.
        _, warm_index = indexes["proxy (warm)"]
        (await run(pip_args(warm_index, work / "warmup-pip", None))).check()
        (await run(uv_args(warm_index, work / "warmup-uv", work / "warmup-uv-cache"))).check()
        gitlab.delay = args.gitlab_delay

        rows: list[tuple[str, str, str, list[Sample]]] = []
        for client in ("uv", "pip"):
            for where, (relay, index) in indexes.items():
                for warm in (False, True):
                    samples = []
                    for _ in range(args.runs):
                        cache = work / "client-cache"
                        shutil.rmtree(cache, ignore_errors=True)
                        target = work / "target"
                        command = install_command(client, index, target, cache, warm)
                        if warm:
                            # A previous install filled the client's cache.
                            await measure(relay, gitlab, command, target)
                        samples.append(await measure(relay, gitlab, command, target))
                    rows.append((client, where, "warm client" if warm else "cold client", samples))
    finally:
        await direct.stop()
        await through.stop()
        await proxy.stop()
        await gitlab.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"test set: {REQUIREMENT} (4 projects, 11 wheels, {total / KIB / KIB:.1f} MiB in all)")
    print(
        f"runs per cell: {args.runs} (median), fake GitLab delay per request: {args.gitlab_delay}s"
    )
    print()
    print(
        f"{'client':6} {'index':14} {'client cache':13} {'wall s':>7} {'KiB received':>13} "
        f"{'GitLab requests':>16}"
    )
    for client, where, cache_state, samples in rows:
        seconds = statistics.median(s.seconds for s in samples)
        received = statistics.median(s.received for s in samples)
        upstream = statistics.median(s.upstream_requests for s in samples)
        print(
            f"{client:6} {where:14} {cache_state:13} {seconds:7.2f} {received / KIB:13.0f} "
            f"{upstream:16.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
