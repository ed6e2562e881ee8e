"""A big page fetched while a cached small one is hit over and over (tests and bench)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.support.fake_gitlab import FakeGitLab

SIMPLE = "/api/v4/projects/42/packages/pypi/simple"


async def hits_while_parsing(
    proxy_url: str, gitlab: FakeGitLab, big: str, small: str
) -> tuple[int, float, list[float]]:
    """GET the page `big` once while GETting the cached page `small` over and over.

    Returns the big page's status, how long it took, and the latency of each hit on `small`
    answered after GitLab sent the big page and before the proxy answered it: while the proxy
    read and parsed it.
    """
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxy_url}{SIMPLE}/{small}/") as resp:
            assert resp.status == 200
        before = len(gitlab.requests)

        async def fetch_big() -> int:
            async with session.get(f"{proxy_url}{SIMPLE}/{big}/") as resp:
                await resp.read()
                return resp.status

        begun = time.monotonic()
        big_page = asyncio.create_task(fetch_big())
        latencies: list[float] = []
        while not big_page.done():
            # The fake sets a record's status once its answer is built, just before sending it
            # (building it holds this process's loop: a hit begun before then would count it).
            sent = any(r.kind == "page" and r.status for r in gitlab.requests[before:])
            started = time.monotonic()
            async with session.get(f"{proxy_url}{SIMPLE}/{small}/") as resp:
                await resp.read()
                assert (resp.status, resp.headers["X-Cache"]) == (200, "HIT")
            if sent and not big_page.done():
                latencies.append(time.monotonic() - started)
        status = await big_page
        return status, time.monotonic() - begun, latencies
