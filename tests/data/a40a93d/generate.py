"""Write this folder's test data with the release of commit a40a93d (run in that checkout).

    git worktree add /tmp/old a40a93d && cd /tmp/old && python3 -m venv .venv
    .venv/bin/pip install -e '.[dev]' && PYTHONPATH=. .venv/bin/python <this file> <this folder>

The old proxy, in front of that release's fake GitLab, fills a cache directory (project and
group pages, two wheels and an sdist) and exports project 42 to a bundle.
"""

# That release's test support modules, not today's: mypy here cannot see them.
# mypy: disable-error-code="import-not-found"

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tarfile
import tempfile
from pathlib import Path

import aiohttp
from tests.fake_gitlab import FakeGitLab
from tests.proxy_harness import make_settings, start_proxy

from proxy.bundle import export_bundle
from proxy.scope import Scope

TOKEN = "glpat-proxy-secret-token-1234567890"
PROJECT = "/api/v4/projects/42/packages/pypi"
GROUP = "/api/v4/groups/7/-/packages/pypi"


async def fetch(session: aiohttp.ClientSession, url: str, accept: str = "*/*") -> None:
    async with session.get(url, headers={"Accept": accept}) as response:
        assert response.status == 200, (url, response.status)
        await response.read()


async def main(out: Path, work: Path) -> None:
    gitlab = FakeGitLab(token=TOKEN)
    gitlab.add_group(7, "platform")
    gitlab.add_project(42, "platform/tools", group_id=7)
    files = [
        gitlab.add_wheel(42, "corp-util", "1.0"),
        gitlab.add_wheel(42, "corp-app", "1.0", requires=["corp-util"]),
        gitlab.add_sdist(42, "corp-lib", "1.0"),
    ]
    await gitlab.start()
    cache = work / "cache"
    proxy = await start_proxy(make_settings(gitlab.url, cache, TOKEN))
    async with aiohttp.ClientSession() as session:
        for base in (PROJECT, GROUP):
            await fetch(session, f"{proxy.url}{base}/simple/")
            for name in ("corp-util", "corp-app", "corp-lib"):
                await fetch(session, f"{proxy.url}{base}/simple/{name}/")
        for file in files:
            await fetch(session, f"{proxy.url}{PROJECT}/files/{file.sha256}/{file.filename}")
    await proxy.stop()
    await gitlab.stop()
    await export_bundle(proxy.settings, [Scope("projects", "42")], out / "bundle.tar.gz")
    with sqlite3.connect(cache / "index.sqlite3") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with tarfile.open(out / "cache.tar.gz", "w:gz") as tar:
        for path in sorted(cache.rglob("*")):
            if path.is_file() and not path.name.endswith(("-wal", "-shm")):
                tar.add(path, f"cache/{path.relative_to(cache)}")
    db = sqlite3.connect(cache / "index.sqlite3")
    expected = {
        "files": [{"filename": f.filename, "sha256": f.sha256} for f in files],
        "pages": sorted(key for (key,) in db.execute("SELECT key FROM pages")),
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as work:
        asyncio.run(main(Path(sys.argv[1]).resolve(), Path(work)))
