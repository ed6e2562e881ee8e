"""The composition root: resources start in dependency order, and close when a later one fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from proxy import keys
from proxy.app import create_app
from proxy.gitlab import GitLab
from tests.support.harness import make_settings


async def test_when_the_file_cache_cannot_start_the_index_and_session_before_it_close(
    tmp_path: Path,
) -> None:
    # A directory where a stale lock file is expected: the start-up clean-up cannot open it.
    (tmp_path / "tmp" / "left-by-a-crash.lock").mkdir(parents=True)
    app = create_app(make_settings("http://127.0.0.1:9", tmp_path, "glpat-unused"))
    runner = web.AppRunner(app)
    try:
        with pytest.raises(IsADirectoryError):
            await runner.setup()
    finally:
        await runner.cleanup()
    assert keys.FILES not in app
    assert _gitlab(app).session.closed
    with pytest.raises(ValueError, match="no active connection"):
        await app[keys.STORE].db.execute("SELECT 1")


async def test_every_resource_starts_and_closes_in_turn(tmp_path: Path) -> None:
    app = create_app(make_settings("http://127.0.0.1:9", tmp_path, "glpat-unused"))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert app[keys.RENDERER] is not None
        assert not _gitlab(app).session.closed
        assert list(await app[keys.STORE].db.execute_fetchall("SELECT 1")) == [(1,)]
    finally:
        await runner.cleanup()
    assert _gitlab(app).session.closed
    with pytest.raises(ValueError, match="no active connection"):
        await app[keys.STORE].db.execute("SELECT 1")


def _gitlab(app: web.Application) -> GitLab:
    upstream = app[keys.UPSTREAM]
    assert isinstance(upstream, GitLab)
    return upstream


def test_a_proxy_without_a_shared_tier_never_imports_its_s3_client() -> None:
    # In a fresh interpreter: this one's test modules may have imported it already.
    code = (
        "import sys, proxy.app, proxy.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'aiobotocore')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
