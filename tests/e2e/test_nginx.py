"""Issue 7: the README's nginx snippet, in front of a proxy with accel_redirect, used by pip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from tests.support.cli_process import free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import ProxyFactory, pip_install
from tests.support.nginx import (
    NGINX,
    README_LISTEN,
    SKIP_REASON,
    nginx_conf,
    readme_snippet,
    replaced,
    start_nginx,
    stop_nginx,
)

pytestmark = pytest.mark.skipif(NGINX is None, reason=SKIP_REASON)

# The README's example values, replaced by this test's own.
README_PROXY = "http://127.0.0.1:8080;"
README_CACHE = "/var/cache/gitlab-pypi-proxy/"


def configure(*, port: int, proxy_url: str, cache_dir: Path, prefix: Path) -> str:
    server = replaced(
        readme_snippet("location /_blobs/"),
        {
            README_LISTEN: f"listen 127.0.0.1:{port};",
            README_PROXY: f"{proxy_url};",
            README_CACHE: f"{cache_dir}/",
        },
    )
    return nginx_conf(server, prefix)


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_readme_nginx_snippet_serves_hits_from_disk(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    prefix, port = tmp_path / "nginx", free_port()
    prefix.mkdir()
    cache = tmp_path / "cache"
    proxy = await make_proxy(cache_dir=cache, server={"accel_redirect": "/_blobs/"})
    (prefix / "nginx.conf").write_text(
        configure(port=port, proxy_url=proxy.url, cache_dir=cache, prefix=prefix)
    )
    nginx = await start_nginx(prefix, port)
    try:
        util = gitlab.add_wheel(42, "corp-util", "1.0.0")
        gitlab.add_wheel(42, "corp-app", "1.0.0", requires=["corp-util"])
        index = f"http://127.0.0.1:{port}/api/v4/projects/42/packages/pypi/simple/"
        (await pip_install(index, tmp_path / "one", "corp-app")).check()
        assert gitlab.counts["file"] == 2
        # Warm: every file is a hit the proxy hands to nginx, which reads it from blobs/.
        (await pip_install(index, tmp_path / "two", "corp-app")).check()
        assert gitlab.counts["file"] == 2
        assert (tmp_path / "two" / "corp_util-1.0.0.dist-info").is_dir()

        path = f"/api/v4/projects/42/packages/pypi/files/{util.sha256}/{util.filename}"
        status, headers, body = await get(f"{proxy.url}{path}")
        assert (status, body) == (200, b""), "the proxy itself sends no body on a hit"
        status, headers, body = await get(f"http://127.0.0.1:{port}{path}")
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == util.sha256
        assert "X-Accel-Redirect" not in headers
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == f'attachment; filename="{util.filename}"'
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert (headers["X-Checksum-Sha256"], headers["X-Cache"]) == (util.sha256, "HIT")
        # The internal location is not reachable from outside.
        sha = util.sha256
        status, _, _ = await get(f"http://127.0.0.1:{port}/_blobs/{sha[:2]}/{sha[2:4]}/{sha}")
        assert status == 404
    finally:
        await stop_nginx(nginx)
