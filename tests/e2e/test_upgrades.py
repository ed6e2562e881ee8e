"""Today's proxy serves, offline, a cache directory and a bundle written by the release a40a93d."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import aiohttp

from proxy.bundle import import_bundle
from proxy.config import Settings
from tests.support.harness import RunningProxy, make_settings, pip_install, start_proxy

DATA = Path(__file__).parent.parent / "data" / "a40a93d"
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text())
FILES = {f["filename"]: f["sha256"] for f in EXPECTED["files"]}
WHEELS = [name for name in FILES if name.endswith(".whl")]
SDIST = next(name for name in FILES if name.endswith(".tar.gz"))
JSON = "application/vnd.pypi.simple.v1+json"
FILE_ROUTE = "/api/v4/projects/42/packages/pypi/files"


def offline_settings(cache: Path) -> Settings:
    """Offline, with every stored page long expired, and a GitLab that cannot be reached."""
    return make_settings(
        "https://gitlab.invalid", cache, "", cache={"offline": True, "index_ttl": 0}
    )


def page_url(proxy: RunningProxy, key: str) -> str:
    view, _, name = key.partition(":")
    return proxy.index_url(view) + (f"{name}/" if name else "")


async def get(url: str, accept: str = "*/*") -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Accept": accept}, allow_redirects=False) as response,
    ):
        return response.status, await response.read()


async def serves_pages_and_files(
    proxy: RunningProxy, keys: list[str], views: tuple[str, ...], tmp_path: Path
) -> None:
    """Every page of `keys` in both formats, every file verified, and pip installs from `views`."""
    for key in keys:
        for accept in ("text/html", JSON):
            status, body = await get(page_url(proxy, key), accept)
            assert status == 200, (key, accept, body)
            name = key.partition(":")[2]
            # An index lists the project names, a project page its files.
            listed = name.replace("-", "_").encode() + b"-1.0" if name else b"corp-lib"
            assert listed in body, (key, accept, body)
    for filename, sha256 in FILES.items():
        status, body = await get(f"{proxy.url}{FILE_ROUTE}/{sha256}/{filename}")
        assert status == 200, (filename, body)
        assert hashlib.sha256(body).hexdigest() == sha256
    # Every wheel by its pinned hash, pip refusing any other bytes.
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(
        "".join(
            f"{n.split('-')[0].replace('_', '-')}==1.0 --hash=sha256:{FILES[n]}\n" for n in WHEELS
        )
    )
    for view in views:
        target = tmp_path / view.replace("/", "-")
        extra = ["--require-hashes", "-r", str(requirements)]
        (await pip_install(proxy.index_url(view), target, extra=extra)).check()
        assert {p.name for p in target.iterdir() if p.name.endswith(".dist-info")} == {
            "corp_app-1.0.dist-info",
            "corp_util-1.0.dist-info",
        }


async def test_a_cache_directory_of_a40a93d_is_served_offline(tmp_path: Path) -> None:
    with tarfile.open(DATA / "cache.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    proxy = await start_proxy(offline_settings(tmp_path / "cache"))
    try:
        views = ("projects/42", "groups/7")
        await serves_pages_and_files(proxy, EXPECTED["pages"], views, tmp_path)
    finally:
        await proxy.stop()


async def test_a_bundle_of_a40a93d_imports_and_is_served_offline(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path / "cache")
    result = await import_bundle(settings, DATA / "bundle.tar.gz")
    project_pages = [key for key in EXPECTED["pages"] if key.startswith("projects/42:")]
    assert (result.added, result.pages) == (len(FILES), len(project_pages))
    proxy = await start_proxy(settings)
    try:
        await serves_pages_and_files(proxy, project_pages, ("projects/42",), tmp_path)
    finally:
        await proxy.stop()
