"""How long a right token waits while wrong ones flood `[access] tokens_file` (not run in CI).

    .venv/bin/python bench/token_flood.py [--flood 200] [--addresses 1]

Starts the proxy app on a real port in front of the fake GitLab, with a tokens file, then keeps
`--flood` requests with random wrong passwords in flight from `--addresses` loopback addresses
(127.0.0.2 on). Meanwhile it times a request with a right token never checked before (from its
own address, 127.0.0.250) and one with a right token checked before, and counts the flood's
answers (401 checked, 429 told to come back).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import secrets
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.access import hash_token  # noqa: E402
from tests.support.fake_gitlab import FakeGitLab  # noqa: E402
from tests.support.harness import make_settings, start_proxy  # noqa: E402

TOKEN = "glpat-bench-token"
PAGE = "/api/v4/projects/42/packages/pypi/simple/corp-util/"


def basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode()


async def timed(url: str, address: str, secret: str) -> tuple[int, float]:
    started = time.monotonic()
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers={"Authorization": basic(secret)}) as resp,
    ):
        await resp.read()
        return resp.status, time.monotonic() - started


def run_flood(url: str, flood: int, addresses: int, stop: Event, results: Queue[object]) -> None:
    """The flood, in its own process: `flood` clients sending random wrong tokens until `stop`."""

    async def flood_until_stopped() -> tuple[dict[int, int], float]:
        answers: Counter[int] = Counter()
        started = time.monotonic()

        async def flooder(n: int) -> None:
            address = f"127.0.0.{2 + n % addresses}"
            while not stop.is_set():
                status, _ = await timed(url, address, secrets.token_hex(16))
                answers[status] += 1

        await asyncio.gather(*(flooder(n) for n in range(flood)))
        return dict(answers), sum(answers.values()) / (time.monotonic() - started)

    results.put(asyncio.run(flood_until_stopped()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=200, help="wrong-token requests in flight")
    parser.add_argument("--addresses", type=int, default=1, help="addresses the flood comes from")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the flood runs first")
    args = parser.parse_args()
    right, fresh = secrets.token_hex(16), secrets.token_hex(16)
    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_project(42, "platform/tools")
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    await gitlab.start()
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text(f"{hash_token(right)}\n{hash_token(fresh)}\n")
        settings = make_settings(
            gitlab.url, Path(tmp) / "cache", TOKEN, access={"tokens_file": str(tokens)}
        )
        proxy = await start_proxy(settings)
        url = proxy.url + PAGE
        status, wait = await timed(url, "127.0.0.1", right)
        print(f"right token, first check, no flood: {status} in {wait:.3f}s")
        # In a child process: the flood's own client work must not slow the proxy's event loop.
        context = multiprocessing.get_context("spawn")
        stop, results = context.Event(), context.Queue()
        flood = context.Process(
            target=run_flood, args=(url, args.flood, args.addresses, stop, results)
        )
        flood.start()
        await asyncio.sleep(args.seconds)
        status, wait = await timed(url, "127.0.0.250", fresh)
        print(f"right token, first check, under the flood: {status} in {wait:.3f}s")
        status, wait = await timed(url, "127.0.0.1", right)
        print(f"right token, checked before, under the flood: {status} in {wait:.3f}s")
        stop.set()
        answers, rate = await asyncio.to_thread(results.get)
        await asyncio.to_thread(flood.join)
        print(f"flood answers: {answers} ({rate:.0f}/s)")
        await proxy.stop()
    await gitlab.stop()


if __name__ == "__main__":
    asyncio.run(main())
