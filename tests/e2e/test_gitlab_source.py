"""Issue 13: GitLab as its source shows it: every sdist, credential form, error and redirect."""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import logging
import lzma
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import yarl

from proxy import keys
from proxy.log import redact
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import (
    TOKEN,
    ProxyFactory,
    RunningProxy,
    clean_env,
    make_settings,
    run,
    start_proxy,
)
from tests.support.wheels import make_sdist, make_wheel

PAGE = "/api/v4/projects/42/packages/pypi/simple/corp-util/"
FILES = "/api/v4/projects/42/packages/pypi/files"
READER = "glpat-reader-of-42-0123456789"


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, dict(resp.headers), (await resp.read()).decode(errors="replace")


def basic(secret: str, user: str = "someone") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


# Every sdist GitLab lists.


def buildable_sdist(name: str, version: str) -> tuple[str, bytes]:
    """A .tar.gz sdist that builds with no build dependency: its in-tree backend writes out a
    wheel it carries, so pip needs nothing but our index."""
    wheel_name, wheel = make_wheel(name, version)
    root = f"{wheel_name.split('-')[0]}-{version}"
    backend = (
        "import base64, pathlib\n"
        f"WHEEL = {wheel_name!r}\n"
        f"DATA = {base64.b64encode(wheel).decode()!r}\n"
        "def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):\n"
        "    pathlib.Path(wheel_directory, WHEEL).write_bytes(base64.b64decode(DATA))\n"
        "    return WHEEL\n"
    )
    pyproject = '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in [("pyproject.toml", pyproject), ("backend.py", backend)]:
            info = tarfile.TarInfo(f"{root}/{path}")
            info.size = len(data.encode())
            archive.addfile(info, io.BytesIO(data.encode()))
    return f"{root}.tar.gz", buffer.getvalue()


def recompressed(name: str, version: str, suffix: str) -> tuple[str, bytes]:
    """A buildable sdist as another archive: its .tar inside `suffix`'s compression."""
    filename, content = buildable_sdist(name, version)
    tar = gzip.decompress(content)
    packers: dict[str, Callable[[bytes], bytes]] = {
        ".tar.bz2": bz2.compress,
        ".tar.xz": lzma.compress,
        ".tgz": gzip.compress,
        ".tar": bytes,
    }
    return filename.removesuffix(".tar.gz") + suffix, packers[suffix](tar)


async def test_pip_installs_a_package_whose_only_sdist_is_a_tar_bz2(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    filename, content = recompressed("corp-util", "1.0.0", ".tar.bz2")
    gitlab.add_file(42, "corp-util", "1.0.0", filename, content)
    result = await run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--no-input",
            "--no-deps",
            "--index-url",
            proxy.index_url("projects/42"),
            "--target",
            str(tmp_path / "target"),
            "corp-util",
        ],
        env=clean_env(),
    )
    result.check()
    assert list((tmp_path / "target").glob("corp_util-1.0.0*-info"))
    assert gitlab.counts["file"] == 1


async def test_every_usable_sdist_is_listed_once_and_unsafe_names_never(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    listed = []
    for version, suffix in [("1.0", ".tar.xz"), ("1.1", ".tgz"), ("1.2", ".tar")]:
        filename, content = recompressed("corp-util", version, suffix)
        gitlab.add_file(42, "corp-util", version, filename, content)
        listed.append(filename)
    # GitLab keeps the raw name, so My_Pkg-style and normalized records hold the same file.
    sdist, content = make_sdist("corp-util", "2.0")
    gitlab.add_file(42, "corp-util", "2.0", sdist, content)
    gitlab.add_file(42, "Corp_Util", "2.0", sdist, content)
    for unsafe in ["corp_util-3.0.exe", "corp util-3.0.tar.gz", "corp_util-3.0.tar.gz.sig"]:
        gitlab.add_file(42, "corp-util", "3.0", unsafe, b"x")
    status, _, page = await get(proxy.url + PAGE)
    assert status == 200
    for filename in listed:
        assert f">{filename}<" in page
    assert page.count(f">{sdist}<") == 1
    assert "3.0" not in page
    # Each listed file is served, verified.
    for filename in [*listed, sdist]:
        href = next(line for line in page.splitlines() if f">{filename}<" in line)
        sha256 = href.split("files/")[1][:64]
        file = gitlab.find_file(sha256, filename, None)
        assert file is not None
        status, _, _ = await get(f"{proxy.url}{FILES}/{sha256}/{filename}")
        assert status == 200, filename
    status, _, _ = await get(f"{proxy.url}{FILES}/{'0' * 64}/corp_util-3.0.exe")
    assert status == 400


# Credential forms.


@pytest.mark.parametrize("header", ["Private-Token", "Deploy-Token"])
@pytest.mark.parametrize("mode", ["passthrough", "prefer-client"])
async def test_gitlab_token_headers_go_upstream_as_they_came(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, header: str, mode: str
) -> None:
    assert READER not in redact(f"headers: {{'{header}': '{READER}'}}")
    gitlab.add_project(43, "platform/secret", group_id=7)
    gitlab.tokens.update({READER: {42}})
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    secret = gitlab.add_wheel(43, "corp-util", "1.0.0")
    proxy = await make_proxy(upstream={"credentials": mode})
    status, headers, _ = await get(proxy.url + PAGE, {header: READER})
    assert status == 200
    assert headers["Cache-Control"].startswith("private")
    sent = gitlab.requests[-1].headers
    assert (sent.get(header), "Authorization" in sent) == (READER, False)
    # Judged like any credential: what the proxy's own token fetched is not this client's.
    secret_page = "/api/v4/projects/43/packages/pypi/simple/corp-util/"
    assert (await get(proxy.url + secret_page, basic(TOKEN)))[0] == 200
    status, _, _ = await get(proxy.url + secret_page, {header: READER})
    assert status == 404
    url = f"{proxy.url}/api/v4/projects/43/packages/pypi/files/{secret.sha256}/{secret.filename}"
    assert (await get(url, basic(TOKEN)))[0] == 200
    assert (await get(url, {header: READER}))[0] == 404


@pytest.mark.parametrize("mode", ["passthrough", "prefer-client"])
async def test_a_job_token_header_is_refused_not_taken_for_anonymous(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    gitlab.job_tokens.add("job-token-abcdef-123456")
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(upstream={"credentials": mode})
    with caplog.at_level(logging.DEBUG):
        status, headers, body = await get(
            proxy.url + PAGE, {"Job-Token": "job-token-abcdef-123456"}
        )
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Basic realm="GitLab Packages Registry"'
    assert "gitlab-ci-token" in body
    assert not gitlab.requests
    assert "job-token-abcdef-123456" not in caplog.text
    # The one form GitLab takes a job token in.
    assert (await get(proxy.url + PAGE, basic("job-token-abcdef-123456", "gitlab-ci-token")))[
        0
    ] == 200


# What GitLab's errors mean.


async def test_a_revoked_proxy_token_is_named_as_such(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.revoke(TOKEN)
    status, _, body = await get(proxy.url + PAGE)
    assert status == 502
    assert "revoked or expired" in body and "check upstream.token" in body


async def test_a_revoked_client_token_gets_gitlabs_reason(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.tokens[READER] = {42}
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(upstream={"credentials": "passthrough", "token": ""})
    assert (await get(proxy.url + PAGE, {"Private-Token": READER}))[0] == 200
    gitlab.revoke(READER)
    status, _, body = await get(
        proxy.url + "/api/v4/projects/42/packages/pypi/simple/", {"Private-Token": READER}
    )
    assert status == 401
    assert "revoked or expired" in body and "invalid_token" in body


async def test_a_403_with_a_reason_is_passed_on_not_blamed_on_the_token(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.protected.add("corp-util")
    proxy = await make_proxy(upstream={"upload_credentials": "inject"})
    form = aiohttp.FormData()
    form.add_field("name", "corp-util")
    form.add_field("version", "1.0.0")
    filename, content = make_sdist("corp-util", "1.0.0")
    form.add_field("content", content, filename=filename)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/api/v4/projects/42/packages/pypi", data=form) as resp,
    ):
        assert resp.status == 403
        assert (await resp.json())["message"] == "403 Forbidden - Package protected."


async def test_a_proxy_token_without_the_write_scope_is_the_operators_to_fix(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    gitlab.read_only_tokens.add(TOKEN)
    proxy = await make_proxy(upstream={"upload_credentials": "inject"})
    form = aiohttp.FormData()
    form.add_field("name", "corp-util")
    form.add_field("version", "1.0.0")
    filename, content = make_sdist("corp-util", "1.0.0")
    form.add_field("content", content, filename=filename)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/api/v4/projects/42/packages/pypi", data=form) as resp,
    ):
        assert resp.status == 502
        message = (await resp.json())["message"]
    assert "insufficient_scope" in message and "check upstream.token" in message


# Redirects within GitLab, and what each anchor says.


async def test_gitlab_moved_under_a_relative_root_is_followed_not_taken_for_forwarding(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.moved = True
    status, _, page = await get(proxy.url + PAGE)
    assert status == 200
    assert wheel.filename in page
    status, _, _ = await get(f"{proxy.url}{FILES}/{wheel.sha256}/{wheel.filename}")
    assert status == 200
    # Both hops carried the proxy's credentials: the same origin is still GitLab.
    assert all(r.headers.get("Authorization") for r in gitlab.requests)
    assert [r.status for r in gitlab.requests if r.kind == "page"] == [301, 200]


async def test_gitlab_upgraded_to_https_on_its_own_host_is_still_gitlab(tmp_path: Path) -> None:
    """An http GitLab's 301 to https (port 80 to 443) keeps its credentials; no other host does.
    Checked on the running app's Upstream: the fakes cannot listen on ports 80 and 443."""
    proxy = await start_proxy(make_settings("http://127.0.0.1", tmp_path / "cache", TOKEN))
    try:
        upstream = proxy.app[keys.UPSTREAM]
        assert upstream.is_upstream_host(yarl.URL("https://127.0.0.1/api/v4/projects/42"))
        for other in ["https://127.0.0.1:8443/", "http://127.0.0.1:8080/", "https://127.0.0.2/"]:
            assert not upstream.is_upstream_host(yarl.URL(other)), other
    finally:
        await proxy.stop()


async def test_each_file_keeps_its_own_requires_python(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0", requires_python=">=3.8")
    gitlab.add_sdist(42, "corp-util", "1.0.0", requires_python=">=3.10")
    _, _, html = await get(proxy.url + PAGE)
    assert 'data-requires-python="&gt;=3.8"' in html
    assert 'data-requires-python="&gt;=3.10"' in html
    _, _, body = await get(proxy.url + PAGE, {"Accept": "application/vnd.pypi.simple.v1+json"})
    assert sorted(body.count(f'"requires-python":"{v}"') for v in (">=3.8", ">=3.10")) == [1, 1]
