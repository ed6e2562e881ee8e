"""GitLab, the upstream client, against small HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import UpstreamSettings
from proxy.credentials import CredentialPolicy
from proxy.errors import CredentialsRefused, UpstreamStatus, UpstreamTimeout, UpstreamUnavailable
from proxy.gitlab import GitLab
from proxy.metrics import Metrics
from proxy.upstream import message_of

CREDENTIAL_HEADERS = ("Authorization", "Private-Token", "Deploy-Token")


@dataclass
class Host:
    """A server that records the credential headers of every request and answers from `answer`."""

    server: TestServer
    seen: list[dict[str, str]] = field(default_factory=list)
    answer: Callable[[], web.Response] = field(default=lambda: web.Response(text="<html></html>"))
    hang: asyncio.Event = field(default_factory=asyncio.Event)
    hangs: bool = False

    def url(self, path: str) -> yarl.URL:
        return self.server.make_url(path)


async def start_host() -> Host:
    host = Host(TestServer(web.Application()))

    async def handle(request: web.Request) -> web.StreamResponse:
        host.seen.append({k: v for k, v in request.headers.items() if k in CREDENTIAL_HEADERS})
        if host.hangs:
            await host.hang.wait()
        return host.answer()

    host.server.app.router.add_route("*", "/{tail:.*}", handle)
    await host.server.start_server()
    return host


@dataclass
class Rig:
    gitlab: GitLab
    origin: Host
    other: Host
    metrics: Metrics


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    origin, other = await start_host(), await start_host()
    settings = UpstreamSettings(
        url=str(origin.url("/")), username="proxy", token="secret", timeout=0.3
    )
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        try:
            yield Rig(GitLab(settings, session, metrics), origin, other, metrics)
        finally:
            origin.hang.set()
            await origin.server.close()
            await other.server.close()


def redirect_to(url: yarl.URL) -> Callable[[], web.Response]:
    return lambda: web.Response(status=302, headers={"Location": str(url)})


@pytest.mark.parametrize("credential", ["Basic cHJveHk6c2VjcmV0", "Private-Token glpat-1"])
async def test_a_page_redirect_to_another_host_carries_no_credentials(
    rig: Rig, credential: str
) -> None:
    rig.origin.answer = redirect_to(rig.other.url("/simple/demo/"))
    other = f"127.0.0.1:{rig.other.server.port}"
    answer = await rig.gitlab.get_page(
        rig.origin.url("/api/v4/simple/demo/"), credential, follow_to=(other,)
    )
    assert answer.status == 200 and answer.url.port == rig.other.server.port
    name, _, token = credential.partition(" ")
    header = "Authorization" if name == "Basic" else name
    assert rig.origin.seen[0][header] == (credential if name == "Basic" else token)
    assert rig.other.seen == [{}]


async def test_a_file_redirect_to_object_storage_carries_no_credentials(rig: Rig) -> None:
    rig.origin.answer = redirect_to(rig.other.url("/bucket/demo-1.0.tar.gz"))
    rig.other.answer = lambda: web.Response(body=b"file bytes")
    async with rig.gitlab.open_file(rig.origin.url("/files/demo-1.0.tar.gz"), "Basic c") as resp:
        assert await resp.read() == b"file bytes"
    assert rig.origin.seen == [{"Authorization": "Basic c"}]
    assert rig.other.seen == [{}]


async def test_a_redirect_not_to_be_followed_is_returned(rig: Rig) -> None:
    rig.origin.answer = redirect_to(rig.other.url("/simple/demo/"))
    answer = await rig.gitlab.get_page(rig.origin.url("/api/v4/simple/demo/"), "Basic c")
    assert answer.status == 302 and answer.location == rig.other.url("/simple/demo/")
    assert rig.other.seen == []


@pytest.mark.parametrize(
    ("headers", "stale", "age"),
    [
        ({}, False, None),
        # This project's own stale answer.
        ({"X-Cache": "STALE", "Warning": '110 - "Response is Stale"', "Age": "42"}, True, 42),
        ({"X-Cache": "HIT", "Cache-Control": "max-age=0"}, False, None),
        # Another cache's: Revalidation Failed, second in a list; Disconnected Operation.
        ({"Warning": '199 - "misc, note", 111 cache "Revalidation Failed"'}, True, None),
        ({"Warning": '112 - "Disconnected Operation"', "Age": "99999999999999"}, True, 2**31),
        # Not a stale warn-code, nor an Age at all.
        ({"Warning": '214 - "Transformation Applied"', "Age": "-5"}, False, None),
        ({"Warning": "1100 - nonsense", "Age": "1.5"}, False, None),
    ],
)
async def test_a_page_marked_stale_by_a_cache_on_the_way_is_known_and_its_age_read(
    rig: Rig, headers: dict[str, str], stale: bool, age: float | None
) -> None:
    rig.origin.answer = lambda: web.Response(text="<html></html>", headers=headers)
    answer = await rig.gitlab.get_page(rig.origin.url("/api/v4/simple/demo/"), "Basic c")
    assert (answer.status, answer.stale, answer.age) == (200, stale, age)


async def test_retry_after_on_429_holds_the_next_request(rig: Rig) -> None:
    rig.origin.answer = lambda: web.Response(status=429, headers={"Retry-After": "30"})
    url = rig.origin.url("/api/v4/simple/demo/")
    answer = await rig.gitlab.get_page(url, "Basic c")
    assert answer.status == 429 and answer.retry_after == 30
    with pytest.raises(UpstreamUnavailable) as held:
        await rig.gitlab.get_page(url, "Basic c")
    assert held.value.headers["Retry-After"] in ("29", "30")
    assert len(rig.origin.seen) == 1
    # GitLab throttles per user: another credential still goes.
    await rig.gitlab.get_page(url, "Basic other")
    assert len(rig.origin.seen) == 2


async def test_a_refused_proxy_token_is_the_operators_error(rig: Rig) -> None:
    rig.origin.answer = lambda: web.json_response({"message": "401 Unauthorized"}, status=401)
    own = CredentialPolicy(rig.gitlab.settings).injected_authorization
    answer = await rig.gitlab.get_page(rig.origin.url("/api/v4/simple/demo/"), own)
    message = message_of(answer.body, answer.status, answer.challenge)
    error = rig.gitlab.error_for(answer.status, message, None, authorization=own)
    assert isinstance(error, CredentialsRefused)
    assert "check upstream.token" in error.message
    assert rig.metrics.token_refused == 401


async def test_a_refused_client_token_is_the_clients_error(rig: Rig) -> None:
    passthrough = dataclasses.replace(rig.gitlab.settings, credentials="passthrough")
    gitlab = GitLab(passthrough, rig.gitlab.session, rig.metrics)
    error = gitlab.error_for(401, "401 Unauthorized", None, authorization="Basic client")
    assert isinstance(error, UpstreamStatus) and not isinstance(error, CredentialsRefused)
    assert error.status == 401 and "WWW-Authenticate" in error.headers


async def test_a_timeout_is_upstream_timeout(rig: Rig) -> None:
    rig.origin.hangs = True
    with pytest.raises(UpstreamTimeout):
        await rig.gitlab.get_page(rig.origin.url("/api/v4/simple/demo/"), None)
