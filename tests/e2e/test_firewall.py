"""GitLab's Dependency Firewall: 200 pages of public files behind its `forward/` route."""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiohttp
import pytest

from proxy import keys
from tests.support.clients import installed
from tests.support.fake_gitlab import FakeGitLab, FakePublicIndex
from tests.support.harness import TOKEN, ProxyFactory, make_settings, pip_install, start_proxy
from tests.support.http import PROJECT_PAGE, get, host_of

FILES = "/api/v4/projects/42/packages/pypi/files"


@pytest.fixture
def firewall(gitlab: FakeGitLab, public: FakePublicIndex) -> FakePublicIndex:
    """GitLab with the firewall on, a private app needing a public package it forwards."""
    gitlab.firewall = True
    gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["tiny-json>=1.1"])
    public.add_wheel("tiny-json", "1.0.0")
    public.add_wheel("tiny-json", "1.1.0")
    return public


async def test_deny_refuses_a_firewall_page_like_a_forwarding_redirect(
    gitlab: FakeGitLab, firewall: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(upstream={"forwarding": "deny"})
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert status == 404
    assert b"Dependency Firewall" in body and b"forwarding = 'deny'" in body
    # GitLab's own packages are served as ever.
    assert (await get(f"{proxy.url}{PROJECT_PAGE}corp-app/"))[0] == 200
    assert not firewall.counts["file"]


async def test_cache_fetches_through_gitlabs_forward_route_and_verifies(
    gitlab: FakeGitLab, firewall: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(
        upstream={"forwarding": "cache", "forward_hosts": (host_of(firewall),)}
    )
    index = proxy.index_url("projects/42")
    (await pip_install(index, tmp_path / "one", "corp-app")).check()
    assert installed(tmp_path / "one") == {"corp_app-1.0.0.dist-info", "tiny_json-1.1.0.dist-info"}
    # The file, and before it its .metadata (the public page offers it), came by GitLab's route,
    # which checked them, with GitLab's credentials only there.
    routed = [r.path for r in gitlab.requests if r.kind == "firewall"]
    assert len(routed) == 2 and routed[0].endswith(".whl.metadata")
    assert all(r.headers.get("Authorization") for r in gitlab.requests)
    assert firewall.counts["file"] == 2
    assert not any("Authorization" in r.headers for r in firewall.requests)
    _, _, page = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert b"/forward/" not in page and b'href="../../files/' in page
    (await pip_install(index, tmp_path / "two", "corp-app")).check()
    assert (gitlab.counts["firewall"], firewall.counts["file"]) == (2, 2)


async def test_cache_passes_on_the_firewalls_refusal(
    gitlab: FakeGitLab, firewall: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    blocked = firewall.add_wheel("tiny-json", "1.2.0")
    gitlab.firewall_blocked.add(blocked.filename)
    proxy = await make_proxy(
        upstream={"forwarding": "cache", "forward_hosts": (host_of(firewall),)}
    )
    assert (await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/"))[0] == 200
    status, _, body = await get(f"{proxy.url}{FILES}/{blocked.sha256}/{blocked.filename}")
    assert (status, body) == (403, b'{"message": "Dependency Firewall policy violation"}')
    assert not firewall.counts["file"]
    assert blocked.sha256 not in proxy.app[keys.FILES].known


async def test_cache_never_stores_a_forwarded_file_that_does_not_verify(
    gitlab: FakeGitLab, firewall: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    bad = firewall.add_wheel("tiny-json", "1.3.0")
    bad.content += b"tampered"
    proxy = await make_proxy(
        upstream={"forwarding": "cache", "forward_hosts": (host_of(firewall),)}
    )
    assert (await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/"))[0] == 200
    with contextlib.suppress(aiohttp.ClientPayloadError):
        _, _, body = await get(f"{proxy.url}{FILES}/{bad.sha256}/{bad.filename}")
        assert len(body) < len(bad.content)
    # Fetched from the public host by the firewall's route, then refused for its sha256.
    assert (gitlab.counts["firewall"], firewall.counts["file"]) == (1, 1)
    assert bad.sha256 not in proxy.app[keys.FILES].known


async def test_cache_without_the_public_host_listed_refuses_the_page(
    gitlab: FakeGitLab, firewall: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": ("pypi.org",)})
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert status == 404
    assert b"forward_hosts" in body


async def test_redirect_sends_pip_where_gitlab_would_and_caches_nothing(
    gitlab: FakeGitLab, firewall: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy(upstream={"forwarding": "redirect"})
    (await pip_install(proxy.index_url("projects/42"), tmp_path / "one", "corp-app")).check()
    assert installed(tmp_path / "one") == {"corp_app-1.0.0.dist-info", "tiny_json-1.1.0.dist-info"}
    # pip got the file from the public host after GitLab's firewall route said yes.
    assert gitlab.counts["firewall"] >= 1
    assert firewall.counts["file"] >= 1
    assert not any("Authorization" in r.headers for r in firewall.requests)
    known = proxy.app[keys.FILES].known.values()
    assert not any("tiny" in f.filename for f in known), "redirect mode cached a forwarded file"
    blocked = firewall.add_wheel("tiny-json", "1.2.0")
    gitlab.firewall_blocked.add(blocked.filename)
    await proxy.app[keys.PAGES].invalidate("tiny-json")
    assert (await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/"))[0] == 200
    status, _, body = await get(f"{proxy.url}{FILES}/{blocked.sha256}/{blocked.filename}")
    assert (status, body) == (403, b'{"message": "Dependency Firewall policy violation"}')


async def test_firewall_links_on_gitlabs_external_url_go_to_its_configured_origin(
    public: FakePublicIndex, tmp_path: Path
) -> None:
    """GitLab builds links from its external URL; the proxy may know it by another address."""
    async with FakeGitLab(token=TOKEN, external_url="https://gitlab.example.test") as gitlab:
        gitlab.add_project(42, "platform/tools")
        gitlab.public_index_url = public.url
        gitlab.firewall = True
        wheel = public.add_wheel("tiny-json", "1.0.0")
        upstream = {"forwarding": "cache", "forward_hosts": (host_of(public),)}
        settings = make_settings(gitlab.server_url, tmp_path / "cache", TOKEN, upstream=upstream)
        proxy = await start_proxy(settings)
        try:
            _, _, page = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
            assert wheel.filename.encode() in page
            status, _, body = await get(f"{proxy.url}{FILES}/{wheel.sha256}/{wheel.filename}")
            assert (status, body) == (200, wheel.content)
            assert gitlab.counts["firewall"] == 1
        finally:
            await proxy.stop()


async def test_a_cached_firewall_file_reaches_only_clients_gitlab_lets_in(
    gitlab: FakeGitLab, firewall: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    gitlab.tokens.update({"glpat-member-of-42": {42}, "glpat-stranger-0": set()})
    upstream = {
        "credentials": "passthrough",
        "token": "",
        "forwarding": "cache",
        "forward_hosts": (host_of(firewall),),
    }
    proxy = await make_proxy(upstream=upstream)
    wheel = firewall.add_wheel("tiny-json", "2.0.0")
    url = f"{proxy.url}{FILES}/{wheel.sha256}/{wheel.filename}"
    member = {"Private-Token": "glpat-member-of-42"}
    assert (await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/", headers=member))[0] == 200
    status, headers, body = await get(url, headers=member)
    assert (status, body) == (200, wheel.content)
    assert headers["Cache-Control"].startswith("private")
    # The forward route was asked with the member's own token, in the form it came.
    asked = [r for r in gitlab.requests if r.kind == "firewall"]
    assert [r.headers.get("Private-Token") for r in asked] == ["glpat-member-of-42"]
    # A stranger to the project gets GitLab's answer, not the cached bytes.
    status, _, body = await get(url, headers={"Private-Token": "glpat-stranger-0"})
    assert status == 404 and wheel.content not in body
