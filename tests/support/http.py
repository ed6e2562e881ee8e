"""One-request HTTP helpers, URLs and Basic credentials the end-to-end tests share."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from multidict import CIMultiDictProxy

from tests.support.fake_gitlab import FakeFile, FakeGitLab, FakePublicIndex
from tests.support.harness import RunningProxy

PROJECT = "/api/v4/projects/42/packages/pypi"
PROJECT_PAGE = "/api/v4/projects/42/packages/pypi/simple/"
FILES = "/api/v4/projects/42/packages/pypi/files"
JSON_V1 = "application/vnd.pypi.simple.v1+json"


async def get(url: str, **kwargs: object) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, allow_redirects=False, **kwargs) as resp,  # type: ignore[arg-type]
    ):
        return resp.status, dict(resp.headers), await resp.read()


def host_of(server: FakePublicIndex) -> str:
    return server.url.removeprefix("http://")


def wheel_url(proxy: RunningProxy, wheel: FakeFile) -> str:
    return f"{proxy.url}{FILES}/{wheel.sha256}/{wheel.filename}"


def basic(secret: str, user: str = "someone") -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


async def get_authorized(
    url: str, secret: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = dict(headers or {})
    if secret is not None:
        headers["Authorization"] = basic(secret)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def scope_file_url(proxy: RunningProxy, scope: str, sha256: str, filename: str) -> str:
    return f"{proxy.url}/api/v4/{scope}/files/{sha256}/{filename}"


async def fetch_as_written(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent exactly as written (no client-side normalization)."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, yarl.URL(url, encoded=True), headers=headers or {}, allow_redirects=False
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


async def cached_wheel(gitlab: FakeGitLab, proxy: RunningProxy) -> tuple[str, str]:
    """Project 42's corp-util 1.0.0 wheel, fetched once through `proxy`: its URL and sha256."""
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    status, _, body = await fetch_as_written(url)
    assert (status, body) == (200, wheel.content)
    return url, wheel.sha256


async def post_as_is(
    url: str, body: bytes, content_type: str, authorization: str
) -> tuple[int, str, str]:
    """POST a hand-made body exactly as given: the answer's status, content type and text."""
    headers = {"Content-Type": content_type, "Authorization": authorization}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        return resp.status, resp.content_type, await resp.text()


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(url: str, method: str = "GET", **headers: str) -> Answer:
    """One request with exactly these headers; the body as it came over the wire."""
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(
            method,
            url,
            headers={k.replace("_", "-"): v for k, v in headers.items()},
            allow_redirects=False,
        ) as resp,
    ):
        return Answer(resp.status, resp.headers, await resp.read())


async def page(proxy: RunningProxy, name: str, accept: str = JSON_V1, **headers: str) -> Answer:
    return await fetch(
        f"{proxy.url}{PROJECT}/simple/{name}/", Accept=accept, Accept_Encoding="identity", **headers
    )


def project_file_url(proxy: RunningProxy, sha256: str, filename: str) -> str:
    return f"{proxy.url}{PROJECT}/files/{sha256}/{filename}"


def url_of(base: str, wheel: FakeFile) -> str:
    return f"{base}{FILES}/{wheel.sha256}/{wheel.filename}"
