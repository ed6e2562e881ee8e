"""Issue 12, items 1-6: one client's trouble (throttles, failures, refusals, floods) is its own."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from proxy import keys
from proxy.access import MAX_PENDING_CHECKS, MAX_PENDING_PER_ADDRESS, hash_token
from tests.support.fake_gitlab import FakeFile, FakeGitLab
from tests.support.harness import ProxyFactory, RunningProxy
from tests.support.http import basic, get_authorized, scope_file_url
from tests.support.polling import eventually

ALICE = "glpat-alice-reads-42"
BOB = "glpat-bob-reads-42-too"
EVE = "glpat-eve-reads-nothing"
PAGE = "/api/v4/projects/42/packages/pypi/simple/corp-util/"
FILES = "projects/42/packages/pypi"


@pytest.fixture
async def passthrough(gitlab: FakeGitLab, make_proxy: ProxyFactory) -> RunningProxy:
    gitlab.tokens.update({ALICE: {42}, BOB: {42}, EVE: set()})
    return await make_proxy(upstream={"credentials": "passthrough", "token": ""})


def asked_by(gitlab: FakeGitLab, secret: str) -> int:
    return sum(1 for r in gitlab.requests if r.headers.get("Authorization") == basic(secret))


async def test_one_tokens_429_holds_that_token_only(
    gitlab: FakeGitLab, passthrough: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.token_faults[BOB] = 429
    gitlab.retry_after = 60
    status, headers, body = await get_authorized(passthrough.url + PAGE, BOB)
    assert (status, headers["Retry-After"]) == (503, "60")
    assert b"rate limiting" in body
    # Alice is not throttled by GitLab: her request goes there, and is answered.
    status, _, body = await get_authorized(passthrough.url + PAGE, ALICE)
    assert status == 200 and b"corp_util-1.0.0" in body
    assert asked_by(gitlab, ALICE) == 1
    # Bob waits out his own Retry-After without another request.
    status, headers, _ = await get_authorized(passthrough.url + PAGE, BOB)
    assert status == 503 and int(headers["Retry-After"]) > 50
    assert asked_by(gitlab, BOB) == 1


async def test_an_unauthenticated_429_holds_the_whole_host(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    """prefer-client without a token: anonymous requests are throttled per address, the proxy's."""
    gitlab.add_project(50, "platform/open", group_id=7, public=True)
    gitlab.add_wheel(50, "open-util", "1.0.0")
    gitlab.tokens[ALICE] = {42}
    proxy = await make_proxy(upstream={"credentials": "prefer-client", "token": ""})
    gitlab.fail_status, gitlab.retry_after = 429, 60
    page = "/api/v4/projects/50/packages/pypi/simple/open-util/"
    assert (await get_authorized(proxy.url + page))[0] == 503
    gitlab.fail_status = None
    status, headers, _ = await get_authorized(proxy.url + page, ALICE)
    assert status == 503 and int(headers["Retry-After"]) > 50
    assert len(gitlab.requests) == 1


async def test_a_failure_to_one_token_is_not_replayed_to_another(
    gitlab: FakeGitLab, passthrough: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.token_faults[BOB] = 500
    assert (await get_authorized(passthrough.url + PAGE, BOB))[0] == 503
    status, _, body = await get_authorized(passthrough.url + PAGE, ALICE)
    assert status == 200 and b"corp_util-1.0.0" in body
    assert asked_by(gitlab, ALICE) == 1
    # Bob's own failure is his for retry_interval: answered without asking GitLab again.
    assert (await get_authorized(passthrough.url + PAGE, BOB))[0] == 503
    assert asked_by(gitlab, BOB) == 1


async def test_a_client_joining_a_fetch_that_gitlab_throttled_asks_itself(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.tokens.update({ALICE: {42}, BOB: {42}})
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(
        upstream={"credentials": "passthrough", "token": ""}, cache={"index_ttl": 0}
    )
    for secret in (ALICE, BOB):  # both allowed: they share one fetch of the page
        assert (await get_authorized(proxy.url + PAGE, secret))[0] == 200
    gitlab.token_faults[BOB] = 429
    gitlab.delay = 1.0
    bob = asyncio.create_task(get_authorized(proxy.url + PAGE, BOB))
    await eventually(
        lambda: asked_by(gitlab, BOB) >= 2, "Bob's retry reached GitLab", interval=0.01
    )
    gitlab.delay = 0.0  # Bob's answer is already held back; Alice's own ones are not
    status, headers, _ = await get_authorized(proxy.url + PAGE, ALICE)
    # Not Bob's 429, nor a stale copy because of it: GitLab's answer to Alice herself.
    assert (status, headers["X-Cache"]) == (200, "MISS")
    assert asked_by(gitlab, ALICE) == 2
    status, headers, _ = await bob
    assert (status, headers["X-Cache"]) == (200, "STALE")  # his own failure: his stale copy


async def _alice_joins_eves_download(
    gitlab: FakeGitLab, proxy: RunningProxy, wheel: FakeFile, path: str, headers: dict[str, str]
) -> tuple[int, bytes]:
    """Eve (refused) starts the download of an uncached file; Alice asks while it runs."""
    # Alice's page lists the file: GitLab's yes to her, so joining needs no question.
    assert (await get_authorized(proxy.url + PAGE, ALICE))[0] == 200
    gitlab.delay = 1.0
    eve = asyncio.create_task(
        get_authorized(scope_file_url(proxy, FILES, wheel.sha256, wheel.filename), EVE)
    )
    await eventually(
        lambda: any(r.kind == "file" for r in gitlab.requests),
        "Eve's download reached GitLab",
        interval=0.01,
    )
    gitlab.delay = 0.0  # Eve's answer is already held back; Alice's own ones are not
    assert proxy.app[keys.FILES].fills, "Eve's download should be running"
    status, _, body = await get_authorized(proxy.url + path, ALICE, headers)
    assert (await eve)[0] == (503 if EVE in gitlab.token_faults else 404)
    return status, body


@pytest.mark.parametrize("kind", ["whole", "range", "metadata", "after a 500"])
async def test_a_refused_download_does_not_fail_its_joiners(
    gitlab: FakeGitLab, passthrough: RunningProxy, kind: str
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0", payload_size=20_000)
    if kind == "after a 500":
        gitlab.token_faults[EVE] = 500  # GitLab failed Eve's request, not necessarily Alice's
    path = f"/api/v4/{FILES}/files/{wheel.sha256}/{wheel.filename}"
    headers = {"Range": "bytes=0-9"} if kind == "range" else {}
    if kind == "metadata":
        path += ".metadata"
    status, body = await _alice_joins_eves_download(gitlab, passthrough, wheel, path, headers)
    if kind in ("whole", "after a 500"):
        assert (status, hashlib.sha256(body).hexdigest()) == (200, wheel.sha256)
    elif kind == "range":
        assert (status, body) == (206, wheel.content[:10])
    else:
        assert status == 200 and b"Name: corp-util" in body
    # Alice's own download: GitLab was asked with her credentials.
    alice_files = [
        r
        for r in gitlab.requests
        if r.kind == "file" and r.headers["Authorization"] == basic(ALICE)
    ]
    if kind == "metadata":
        # Read by Range from the wheel with her credentials: 206s, not a whole download.
        assert alice_files and {r.status for r in alice_files} == {206}
    else:
        assert [r.status for r in alice_files] == [200]


@pytest.mark.parametrize("known", ["refused", "unknown"])
async def test_a_refused_client_learns_nothing_from_what_is_cached(
    gitlab: FakeGitLab, passthrough: RunningProxy, known: str
) -> None:
    cached = gitlab.add_wheel(42, "corp-util", "1.0.0")
    uncached = gitlab.add_wheel(42, "corp-util", "2.0.0")
    cached_url = scope_file_url(passthrough, FILES, cached.sha256, cached.filename)
    assert (await get_authorized(cached_url, ALICE))[0] == 200
    index = passthrough.url + PAGE.removesuffix("corp-util/")
    answers = []
    for number, wheel in enumerate((cached, uncached)):
        secret = EVE if known == "refused" else f"glpat-unknown-to-gitlab-{number}"
        if known == "refused" and number == 0:
            assert (await get_authorized(index, EVE))[
                0
            ] == 404  # GitLab's no, remembered for auth_ttl
        before = len(gitlab.requests)
        url = scope_file_url(passthrough, FILES, wheel.sha256, wheel.filename)
        status, _, body = await get_authorized(url, secret)
        answers.append((status, len(gitlab.requests) - before, body))
    # The same status and body, and the same number of questions to GitLab: none once refused,
    # one for a credential GitLab has not judged yet, whether the file is cached or not.
    expected_asks = 0 if known == "refused" else 1
    assert [(a[0], a[1]) for a in answers] == [(answers[0][0], expected_asks)] * 2
    assert answers[0][0] in (401, 404)
    assert answers[0][2] == answers[1][2]


async def test_allow_binds_cached_files_to_the_scopes_that_list_them(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.add_project(43, "platform/other", group_id=7)
    secret = gitlab.add_wheel(42, "corp-util", "1.0.0")
    shared = gitlab.add_wheel(42, "corp-common", "1.0.0")
    gitlab.add_file(43, "corp-common", "1.0.0", shared.filename, shared.content)
    first = await make_proxy(access={"allow": ("projects/42",)})
    for wheel in (secret, shared):
        url = scope_file_url(first, FILES, wheel.sha256, wheel.filename)
        assert (await get_authorized(url))[0] == 200
    await first.stop()

    # The operator narrows `allow` to project 43: 42's files are not served through it.
    proxy = await make_proxy(access={"allow": ("projects/43",)})
    before = len(gitlab.requests)
    in_43 = "projects/43/packages/pypi"
    status, _, body = await get_authorized(
        scope_file_url(proxy, in_43, secret.sha256, secret.filename)
    )
    assert status == 404 and secret.content[:64] not in body
    # GitLab was asked whether 43 has it (a HEAD), and said no.
    assert [(r.method, r.status) for r in gitlab.requests[before:]] == [("HEAD", 404)]
    # A file 43 has too is served from the cache once GitLab says so, then without asking.
    shared_43 = scope_file_url(proxy, in_43, shared.sha256, shared.filename)
    for _ in range(2):
        status, headers, body = await get_authorized(shared_43)
        assert (status, headers["X-Cache"], body) == (200, "HIT", shared.content)
    asked = [(r.method, r.status) for r in gitlab.requests[before:]]
    assert asked == [("HEAD", 404), ("HEAD", 200)]


async def test_a_scopes_stored_page_lets_its_cached_files_out_offline(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.add_project(43, "platform/other", group_id=7)
    online = await make_proxy()
    assert (await get_authorized(online.url + PAGE))[0] == 200
    assert (await get_authorized(scope_file_url(online, FILES, wheel.sha256, wheel.filename)))[
        0
    ] == 200
    await online.stop()
    offline = await make_proxy(cache={"dir": tmp_path / "cache", "offline": True})
    status, _, body = await get_authorized(
        scope_file_url(offline, FILES, wheel.sha256, wheel.filename)
    )
    assert (status, body) == (200, wheel.content)
    other = scope_file_url(offline, "projects/43/packages/pypi", wheel.sha256, wheel.filename)
    status, _, body = await get_authorized(other)
    assert status == 404 and wheel.content[:64] not in body


RIGHT = "right-token-of-the-ci-runners"
NEW_RIGHT = "right-token-never-shown-before"


@pytest.fixture
async def guarded(gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path) -> RunningProxy:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token(RIGHT)}\n{hash_token(NEW_RIGHT)}\n")
    return await make_proxy(access={"tokens_file": str(tokens)})


async def _status_from(address: str, url: str, secret: str) -> tuple[int, dict[str, str]]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, headers={"Authorization": basic(secret)}) as resp,
    ):
        return resp.status, dict(resp.headers)


class _Flood:
    """Clients at `addresses` sending random wrong tokens, again and again, until stopped."""

    def __init__(self, url: str, addresses: list[str], per_address: int) -> None:
        self.answers: Counter[int] = Counter()
        self.retry_after: set[str] = set()
        self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._one(url, address))
            for address in addresses
            for _ in range(per_address)
        ]

    async def _one(self, url: str, address: str) -> None:
        while not self._stop.is_set():
            status, headers = await _status_from(address, url, secrets.token_hex(16))
            self.answers[status] += 1
            if status == 429:
                self.retry_after.add(headers.get("Retry-After", ""))
                await asyncio.sleep(0.01)  # a client that honours nothing, but lets others run

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_a_flood_of_wrong_tokens_gets_429s_and_a_right_token_goes_through(
    guarded: RunningProxy,
) -> None:
    url = guarded.url + PAGE
    guard = guarded.app[keys.ACCESS]
    assert (await _status_from("127.0.0.1", url, RIGHT))[0] == 200
    flood = _Flood(url, [f"127.0.0.{n}" for n in range(2, 14)], per_address=4)
    try:
        await eventually(
            lambda: guard.pending >= MAX_PENDING_CHECKS, "the check queue is full", interval=0.005
        )
        # The queue is full; the right token's verdict is remembered, so it needs no slot.
        assert (await _status_from("127.0.0.1", url, RIGHT))[0] == 200
        await eventually(lambda: flood.answers[429] > 0, "the flood got a 429", interval=0.005)
    finally:
        await flood.stop()
    assert flood.answers[429] > 0 and flood.retry_after == {"1"}
    assert flood.answers[401] > 0
    assert set(flood.answers) == {401, 429}
    assert guard.pending == 0


async def test_one_address_cannot_hold_the_queue_from_a_new_right_token(
    guarded: RunningProxy,
) -> None:
    url = guarded.url + PAGE
    guard = guarded.app[keys.ACCESS]
    flood = _Flood(url, ["127.0.0.2"], per_address=20)
    try:
        await eventually(
            lambda: guard.pending_by_address["127.0.0.2"] >= MAX_PENDING_PER_ADDRESS,
            "one address fills its share of the queue",
            interval=0.005,
        )
        assert guard.pending <= MAX_PENDING_PER_ADDRESS
        # A token never checked before, from another address: a slot is free for it.
        assert (await _status_from("127.0.0.3", url, NEW_RIGHT))[0] == 200
        await eventually(lambda: flood.answers[429] > 0, "the flood got a 429", interval=0.005)
    finally:
        await flood.stop()
    assert flood.answers[401] > 0


async def test_a_flood_from_many_addresses_leaves_room_for_a_new_right_token(
    guarded: RunningProxy,
) -> None:
    url = guarded.url + PAGE
    guard = guarded.app[keys.ACCESS]
    flood = _Flood(url, [f"127.0.0.{n}" for n in range(2, 10)], per_address=4)
    try:
        await eventually(
            lambda: guard.pending >= MAX_PENDING_CHECKS, "the check queue is full", interval=0.005
        )
        # The queue is full, of several checks per address: the newest of the busiest address
        # makes way for a token never checked before, from an address holding none.
        assert (await _status_from("127.0.0.200", url, NEW_RIGHT))[0] == 200
    finally:
        await flood.stop()
    assert flood.answers[429] > 0 and flood.answers[401] > 0
