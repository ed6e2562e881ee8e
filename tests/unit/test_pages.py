"""PageCache: fresh copies within index_ttl, refetch after, stale-if-error, single flight, 404s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.auth import Caller, Gatekeeper
from proxy.config import CacheSettings, ServerSettings, Settings, UpstreamSettings
from proxy.errors import UpstreamStatus, UpstreamUnavailable
from proxy.pages import PageCache
from proxy.scope import Scope
from proxy.store import Store
from proxy.upstream import PageAnswer
from tests.support.memory_upstream import FakeClock, MemoryUpstream
from tests.support.polling import eventually

INDEX_TTL = 300.0
NEGATIVE_TTL = 60.0
RETRY_INTERVAL = 10.0
SCOPE = Scope("projects", "42")
SHA = "a" * 64


def page(version: str) -> bytes:
    link = f"http://gitlab.test/files/{SHA}/demo-{version}.tar.gz#sha256={SHA}"
    return f'<html><body><a href="{link}">demo-{version}.tar.gz</a></body></html>'.encode()


@dataclass
class Rig:
    cache: PageCache
    upstream: MemoryUpstream
    clock: FakeClock
    caller: Caller

    async def demo(self) -> tuple[str, list[str]]:
        result = await self.cache.project(SCOPE, "demo", self.caller)
        return result.state, [f.filename for f in result.project.files]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    settings = Settings(
        server=ServerSettings(host="127.0.0.1", port=8080),
        upstream=UpstreamSettings(
            url="http://gitlab.test",
            username="proxy",
            token="secret",
            retry_interval=RETRY_INTERVAL,
        ),
        cache=CacheSettings(dir=tmp_path, index_ttl=INDEX_TTL, negative_ttl=NEGATIVE_TTL),
    )
    upstream = MemoryUpstream()
    upstream.serve(upstream.url_for(SCOPE, "simple/demo"), page("1.0"))
    clock = FakeClock()
    gate = Gatekeeper(settings.upstream, upstream, clock=clock)
    store = await Store.open(tmp_path / "index.sqlite3")
    cache = PageCache(settings, upstream, store, gate, wall_clock=clock, clock=clock)
    try:
        yield Rig(cache, upstream, clock, gate.caller({}))
    finally:
        await store.close()


async def test_a_fresh_copy_is_served_from_memory_within_index_ttl(rig: Rig) -> None:
    assert await rig.demo() == ("MISS", ["demo-1.0.tar.gz"])
    rig.clock.advance(INDEX_TTL - 1)
    assert await rig.demo() == ("HIT", ["demo-1.0.tar.gz"])
    assert len(rig.upstream.page_calls) == 1


async def test_the_page_is_fetched_again_once_index_ttl_has_passed(rig: Rig) -> None:
    await rig.demo()
    rig.upstream.serve(rig.upstream.url_for(SCOPE, "simple/demo"), page("2.0"))
    rig.clock.advance(INDEX_TTL + 1)
    assert await rig.demo() == ("MISS", ["demo-2.0.tar.gz"])
    assert len(rig.upstream.page_calls) == 2


async def test_the_last_good_copy_is_served_while_upstream_fails(rig: Rig) -> None:
    await rig.demo()
    url = rig.upstream.url_for(SCOPE, "simple/demo")
    rig.upstream.serve(url, UpstreamUnavailable("GitLab answered 503"))
    rig.clock.advance(INDEX_TTL + 1)
    assert await rig.demo() == ("STALE", ["demo-1.0.tar.gz"])
    assert len(rig.upstream.page_calls) == 2
    # Within retry_interval the stored copy is served without asking upstream again.
    rig.clock.advance(RETRY_INTERVAL - 1)
    assert await rig.demo() == ("STALE", ["demo-1.0.tar.gz"])
    assert len(rig.upstream.page_calls) == 2
    # Past it, one request retries in the background and still gets the stored copy at once.
    rig.upstream.serve(url, page("2.0"))
    rig.clock.advance(2)
    assert await rig.demo() == ("STALE", ["demo-1.0.tar.gz"])
    await asyncio.sleep(0)
    assert len(rig.upstream.page_calls) == 3

    async def refreshed() -> bool:
        # The refresh asks about upload times (a few loop turns) before it keeps the page.
        return await rig.demo() == ("HIT", ["demo-2.0.tar.gz"])

    await eventually(refreshed, "the background refresh kept the new page")


def serve_stale(rig: Rig, version: str, age: float | None) -> None:
    """The upstream answers as a parent proxy whose own upstream fails: its copy, marked stale."""
    url = rig.upstream.url_for(SCOPE, "simple/demo")
    rig.upstream.pages[url] = PageAnswer(200, page(version), url, stale=True, age=age)


async def test_an_upstreams_stale_copy_is_served_stale_kept_and_never_fresh(rig: Rig) -> None:
    serve_stale(rig, "1.0", age=5.0)
    assert await rig.demo() == ("STALE", ["demo-1.0.tar.gz"])
    # A failure to get the page fresh: asked again after retry_interval, not index_ttl.
    rig.clock.advance(RETRY_INTERVAL - 1)
    assert await rig.demo() == ("STALE", ["demo-1.0.tar.gz"])
    assert len(rig.upstream.page_calls) == 1
    # Kept as the last good copy, yet another worker on the same store does not take it for
    # fresh (5 s old upstream, so it is dated index_ttl ago): it asks upstream itself.
    other = PageCache(
        rig.cache.settings,
        rig.upstream,
        rig.cache.store,
        rig.cache.gate,
        wall_clock=rig.clock,
        clock=rig.clock,
    )
    row = await rig.cache.store.get_page("projects/42:demo")
    assert row is not None and row.fetched_at <= rig.clock() - INDEX_TTL
    result = await other.project(SCOPE, "demo", rig.caller)
    assert result.state == "STALE"
    assert len(rig.upstream.page_calls) == 2
    # Fresh again upstream: fresh here at the next retry.
    rig.upstream.serve(rig.upstream.url_for(SCOPE, "simple/demo"), page("2.0"))
    rig.clock.advance(2)
    await rig.demo()

    async def refreshed() -> bool:
        return await rig.demo() == ("HIT", ["demo-2.0.tar.gz"])

    await eventually(refreshed, "the retry kept the fresh page")


@pytest.mark.parametrize("age", [INDEX_TTL + 100, None])
async def test_an_older_stale_copy_never_replaces_a_newer_stored_one(
    rig: Rig, age: float | None
) -> None:
    assert await rig.demo() == ("MISS", ["demo-1.0.tar.gz"])
    rig.clock.advance(INDEX_TTL + 1)
    # Older than the stored copy by its Age; without one, of no known age: never newer.
    serve_stale(rig, "0.9", age=age)
    for _ in range(2):
        assert await rig.demo() == ("STALE", ["demo-1.0.tar.gz"])
    row = await rig.cache.store.get_page("projects/42:demo")
    assert row is not None and "demo-1.0" in row.model


async def test_a_failure_with_nothing_stored_reaches_the_client(rig: Rig) -> None:
    url = rig.upstream.url_for(SCOPE, "simple/demo")
    rig.upstream.serve(url, UpstreamUnavailable("GitLab answered 503"))
    with pytest.raises(UpstreamUnavailable):
        await rig.demo()
    # Until retry_interval has passed, the remembered failure answers without upstream.
    with pytest.raises(UpstreamUnavailable):
        await rig.demo()
    assert len(rig.upstream.page_calls) == 1


async def test_concurrent_requests_share_one_upstream_fetch(rig: Rig) -> None:
    rig.upstream.release.clear()
    requests = [asyncio.ensure_future(rig.demo()) for _ in range(5)]
    while not rig.upstream.page_calls:
        await asyncio.sleep(0)
    rig.upstream.release.set()
    results = await asyncio.gather(*requests)
    assert results == [("MISS", ["demo-1.0.tar.gz"])] * 5
    assert len(rig.upstream.page_calls) == 1


async def test_a_404_is_remembered_for_negative_ttl(rig: Rig) -> None:
    for _ in range(2):
        with pytest.raises(UpstreamStatus) as refused:
            await rig.cache.project(SCOPE, "absent", rig.caller)
        assert refused.value.status == 404
    assert len(rig.upstream.page_calls) == 1
    rig.clock.advance(NEGATIVE_TTL + 1)
    with pytest.raises(UpstreamStatus):
        await rig.cache.project(SCOPE, "absent", rig.caller)
    assert len(rig.upstream.page_calls) == 2


async def test_a_project_page_asks_the_rest_api_about_its_files_with_the_proxys_token(
    rig: Rig,
) -> None:
    result = await rig.cache.project(SCOPE, "demo", rig.caller)
    # The in-memory upstream's API answers 404: the page comes, without times, saying why.
    assert result.project.files[0].upload_time is None
    assert [(path, auth) for path, _, auth in rig.upstream.api_calls] == [
        ("/api/v4/projects/42/packages", "Private-Token secret")
    ]
    assert rig.cache.times.problem is not None and "404" in rig.cache.times.problem
    # An index page lists no files: nothing to ask.
    index = b'<html><body><a href="http://gitlab.test/simple/demo">demo</a></body></html>'
    rig.upstream.serve(rig.upstream.url_for(SCOPE, "simple"), index)
    await rig.cache.index(SCOPE, rig.caller)
    assert len(rig.upstream.api_calls) == 1
