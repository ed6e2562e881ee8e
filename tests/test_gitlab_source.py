"""Issue 13: GitLab as its source shows it: every sdist, credential form, error and redirect."""

from __future__ import annotations

import base64
import bz2
import gzip
import logging
import io
import lzma
import sys
import tarfile
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TOKEN, ProxyFactory
from tests.fake_gitlab import FakeGitLab
from tests.proxy_harness import RunningProxy, clean_env, run
from tests.wheels import make_sdist, make_wheel

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
    pyproject = (
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
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
    packed = {
        ".tar.bz2": bz2.compress,
        ".tar.xz": lzma.compress,
        ".tgz": gzip.compress,
        ".tar": bytes,
    }[suffix](tar)
    return filename.removesuffix(".tar.gz") + suffix, packed


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
