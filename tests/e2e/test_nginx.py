"""Issue 7: the README's nginx snippet, in front of a proxy with accel_redirect, used by pip."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.support.cli_process import free_port
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import ProxyFactory, pip_install

README = Path(__file__).parents[2] / "README.md"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="needs nginx (apt-get install -y nginx-light)"
)

# The README's example values, replaced by this test's own.
README_LISTEN = "listen 80;"
README_PROXY = "http://127.0.0.1:8080;"
README_CACHE = "/var/cache/gitlab-pypi-proxy/"


def readme_snippet() -> str:
    blocks: list[str] = re.findall(r"```nginx\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) == 1, "the README carries exactly one nginx snippet"
    return blocks[0]


def configure(snippet: str, *, port: int, proxy_url: str, cache_dir: Path, prefix: Path) -> str:
    for example in (README_LISTEN, README_PROXY, README_CACHE):
        assert snippet.count(example) == 1, f"the README snippet no longer has {example!r}"
    server = (
        snippet.replace(README_LISTEN, f"listen 127.0.0.1:{port};")
        .replace(README_PROXY, f"{proxy_url};")
        .replace(README_CACHE, f"{cache_dir}/")
    )
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, workers would otherwise drop to `nobody`, which cannot read pytest's tmp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {prefix / 'access.log'};\n{temp}\n{server}\n}}\n"
    )


async def start_nginx(prefix: Path, port: int) -> asyncio.subprocess.Process:
    assert NGINX is not None
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(200):
        if proc.returncode is not None:
            break
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.025)
            continue
        writer.close()
        await writer.wait_closed()
        return proc
    log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
    raise AssertionError(f"nginx did not start:\n{log}")


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
        configure(readme_snippet(), port=port, proxy_url=proxy.url, cache_dir=cache, prefix=prefix)
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
        nginx.terminate()
        await asyncio.wait_for(nginx.wait(), 15)
