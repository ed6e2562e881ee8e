"""`upstream.forwarding = "cache"`: GitLab's forwarding followed to listed hosts, files verified."""

from __future__ import annotations

import contextlib
from pathlib import Path

import aiohttp

from proxy import keys
from tests.support.clients import installed
from tests.support.fake_gitlab import FakeGitLab, FakePublicIndex
from tests.support.harness import ProxyFactory, pip_install
from tests.support.http import PROJECT, PROJECT_PAGE, fetch_as_written, get, host_of


async def test_pip_installs_private_and_forwarded_public_packages(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["tiny-json>=1.1"])
    public.add_wheel("tiny-json", "1.0.0")
    public.add_wheel("tiny-json", "1.1.0", requires=["tiny-util"])
    public.add_wheel("tiny-util", "0.5")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})

    result = await pip_install(proxy.index_url("projects/42"), tmp_path / "one", "corp-app")
    result.check()
    assert installed(tmp_path / "one") == {
        "corp_app-1.0.0.dist-info",
        "tiny_json-1.1.0.dist-info",
        "tiny_util-0.5.dist-info",
    }
    # Each wheel once, and before it the .metadata the public index publishes (PEP 714).
    fetched = [r.path for r in public.requests if r.kind == "file"]
    assert len(fetched) == 4
    assert len([path for path in fetched if path.endswith(".whl.metadata")]) == 2
    assert public.requests, "nothing was forwarded"
    # GitLab's credentials went to GitLab only.
    assert not any("Authorization" in r.headers for r in public.requests)
    assert all(r.headers.get("Authorization") for r in gitlab.requests if r.kind == "page")

    # The page the proxy renders links files to the proxy, not to the public index.
    _, _, body = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert public.url not in body.decode()
    assert 'href="../../files/' in body.decode()

    # Cached like any other file: a second install fetches nothing from the public index.
    result = await pip_install(proxy.index_url("projects/42"), tmp_path / "two", "corp-app")
    result.check()
    assert public.counts["file"] == 4


async def test_forwarded_file_that_does_not_verify_is_not_stored(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    wheel = public.add_wheel("tiny-json", "1.0.0")
    wheel.content = wheel.content + b"tampered"
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    status, _, _ = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert status == 200
    url = f"{proxy.url}/api/v4/projects/42/packages/pypi/files/{wheel.sha256}/{wheel.filename}"
    with contextlib.suppress(aiohttp.ClientPayloadError):
        status, _, body = await get(url)
        # The last byte is held back and the connection cut: never the whole file.
        assert len(body) < len(wheel.content)
    assert public.counts["file"] == 1
    assert wheel.sha256 not in proxy.app[keys.FILES].known
    assert not list((proxy.settings.cache.dir / "blobs").rglob(wheel.sha256))


async def test_forwarding_to_an_unlisted_host_is_refused(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    public.add_wheel("tiny-json", "1.0.0")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": ("pypi.org",)})
    status, _, body = await get(f"{proxy.url}{PROJECT_PAGE}tiny-json/")
    assert status == 404
    assert b"forward_hosts" in body
    assert not public.requests


async def test_a_name_neither_gitlab_nor_the_public_index_has_is_a_404(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    status, _, body = await fetch_as_written(f"{proxy.url}{PROJECT}/simple/no-such-thing/")
    assert status == 404, body
    # The public index was asked, and said no: that is an answer, not an outage.
    assert [r.status for r in public.requests] == [404]
