"""Security review of how the merged features meet: access, credentials, files, bad input."""

from __future__ import annotations

import base64

import aiohttp
import pytest
import yarl

from tests.conftest import ProxyFactory
from tests.fake_gitlab import FakeGitLab

PROJECT = "/api/v4/projects/42/packages/pypi"


def basic(secret: str, user: str = "someone") -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


async def fetch(
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


@pytest.mark.parametrize(
    "prefix", ["/%61pi/v4/projects/43", "/api/v%34/projects/43", "/%61pi/v4/groups/99"]
)
async def test_allow_list_holds_however_the_route_prefix_is_spelled(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, prefix: str
) -> None:
    """The router decodes `%61pi` to `api`; the allow check must see the same route."""
    gitlab.add_project(43, "platform/secret", group_id=7)
    gitlab.add_group(99, "other")
    gitlab.add_project(44, "other/thing", group_id=99)
    gitlab.add_wheel(43, "secret-pkg", "1.0.0")
    gitlab.add_wheel(44, "secret-pkg", "1.0.0")
    proxy = await make_proxy(access={"allow": ["projects/42"]})
    middle = "/-/packages/pypi" if "groups" in prefix else "/packages/pypi"
    status, _, body = await fetch(f"{proxy.url}{prefix}{middle}/simple/secret-pkg/")
    assert status == 404
    assert b"secret-pkg" not in body
    assert gitlab.requests == []
