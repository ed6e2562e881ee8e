"""Offline mode: what was cached is served whatever its age; nothing reaches upstream."""

from __future__ import annotations

from pathlib import Path

from tests.support.clients import installed, publish_app_with_dependency
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import ProxyFactory, pip_install
from tests.support.http import PROJECT_PAGE, get


async def test_offline_serves_the_warm_cache_and_never_calls_upstream(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    publish_app_with_dependency(gitlab)
    online = await make_proxy()
    (await pip_install(online.index_url("projects/42"), tmp_path / "warm", "corp-app")).check()
    await online.stop()

    # index_ttl 0: every stored page is long expired, and still served.
    offline = await make_proxy(cache={"offline": True, "index_ttl": 0})
    # GitLab stays up, so any request the proxy made would be seen here.
    seen = len(gitlab.requests)
    result = await pip_install(offline.index_url("projects/42"), tmp_path / "cold", "corp-app")
    result.check()
    assert installed(tmp_path / "cold") == installed(tmp_path / "warm")

    # Only what the cache holds is listed: corp-util 1.0.0 was never fetched, so no client
    # offline can pick it and then fail on its download.
    status, _, body = await get(f"{offline.url}{PROJECT_PAGE}corp-util/")
    assert status == 200
    assert b"corp_util-1.1.0-py3-none-any.whl" in body
    assert b"corp_util-1.0.0" not in body
    failed = await pip_install(
        offline.index_url("projects/42"), tmp_path / "old", "corp-util==1.0.0"
    )
    assert failed.returncode != 0
    assert "No matching distribution found for corp-util==1.0.0" in failed.stderr

    status, _, body = await get(f"{offline.url}{PROJECT_PAGE}never-seen/")
    assert status == 404
    assert b"offline" in body
    sha = "a" * 64
    status, _, body = await get(
        f"{offline.url}/api/v4/projects/42/packages/pypi/files/{sha}/x-1.0.tar.gz"
    )
    assert status == 404
    assert b"offline" in body
    status, _, body = await get(f"{offline.url}/-/ready")
    assert (status, b'"offline": true' in body) == (200, True)
    assert len(gitlab.requests) == seen
