"""An in-memory Upstream for unit tests: pages and probe answers from dicts, every call counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import aiohttp
import yarl

from proxy.errors import ProxyError, UpstreamStatus, UpstreamUnavailable
from proxy.scope import Scope
from proxy.upstream import ApiAnswer, PageAnswer, UploadAnswer

ORIGIN = yarl.URL("http://gitlab.test")


@dataclass
class MemoryUpstream:
    """Answers get_page from `pages` (a ProxyError there is raised) and probe from `probes`."""

    pages: dict[yarl.URL, PageAnswer | ProxyError] = field(default_factory=dict)
    probes: dict[yarl.URL, int] = field(default_factory=dict)
    page_calls: list[tuple[yarl.URL, str | None]] = field(default_factory=list)
    probe_calls: list[tuple[yarl.URL, str | None]] = field(default_factory=list)
    # REST API calls (path, query, credential); every one is answered 404.
    api_calls: list[tuple[str, dict[str, str], str | None]] = field(default_factory=list)
    # While cleared, get_page waits: lets a test start several requests on one fetch.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    is_offline: bool = False

    def __post_init__(self) -> None:
        self.release.set()

    @property
    def offline(self) -> bool:
        return self.is_offline

    @property
    def ignores_range_somewhere(self) -> bool:
        return False

    def url_for(self, scope: Scope, tail: str) -> yarl.URL:
        return ORIGIN.with_path(f"{scope.api_path}/{tail}")

    def is_upstream_host(self, url: yarl.URL) -> bool:
        return url.host == ORIGIN.host

    def may_be_forward_route(self, link: str) -> bool:
        return False

    def forward_route(self, link: str) -> yarl.URL | None:
        return None

    def forward_target(self, url: yarl.URL) -> yarl.URL | None:
        return None

    def ranges_work(self, url: yarl.URL) -> bool:
        return True

    def serve(self, url: yarl.URL, body: bytes | ProxyError, status: int = 200) -> None:
        """Answer `url` with this page body (or raise this error) from now on."""
        self.pages[url] = body if isinstance(body, ProxyError) else PageAnswer(status, body, url)

    async def get_page(
        self, url: yarl.URL, authorization: str | None, *, follow_to: tuple[str, ...] = ()
    ) -> PageAnswer:
        self.page_calls.append((url, authorization))
        await self.release.wait()
        answer = self.pages.get(url)
        if answer is None:
            return PageAnswer(404, b'{"message":"404 Not Found"}', url)
        if isinstance(answer, ProxyError):
            raise answer
        return answer

    async def get_api(
        self, path: str, query: Mapping[str, str], authorization: str | None
    ) -> ApiAnswer:
        self.api_calls.append((path, dict(query), authorization))
        return ApiAnswer(404, message="404 Not Found")

    def open_file(
        self, url: yarl.URL, authorization: str | None
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        raise NotImplementedError("files are not served by the in-memory upstream")

    async def read_range(
        self, url: yarl.URL, authorization: str | None, first: int | None, last: int
    ) -> tuple[int, bytes, int]:
        raise NotImplementedError("files are not served by the in-memory upstream")

    async def probe(
        self, url: yarl.URL, authorization: str | None
    ) -> tuple[int, str, float | None]:
        self.probe_calls.append((url, authorization))
        status = self.probes.get(url, 404)
        return status, str(status), None

    async def post_upload(
        self,
        scope: Scope,
        body: AsyncIterator[bytes],
        *,
        content_type: str,
        content_length: int | None,
        authorization: str | None,
    ) -> UploadAnswer:
        raise NotImplementedError("uploads are not taken by the in-memory upstream")

    async def reachable(self) -> bool:
        return not self.is_offline

    def error_for(
        self,
        status: int,
        message: str,
        retry_after: float | None,
        *,
        authorization: str | None,
        on_upstream: bool = True,
    ) -> ProxyError:
        if status >= 500 or status == 429:
            return UpstreamUnavailable(f"upstream answered {status}")
        return UpstreamStatus(status, message)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
