"""Fixes from the final read of how the merged features meet; each test failed before its fix."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from proxy.access import hash_token
from tests.support.cli_process import write_config
from tests.support.fake_gitlab import FakeGitLab, FakePublicIndex
from tests.support.harness import TOKEN, ProxyFactory, RunningProxy, clean_env, run
from tests.support.http import PROJECT, basic, fetch_as_written, host_of, post_as_is
from tests.support.multipart import GOOD, GOOD_TYPE

UPLOAD = "/api/v4/projects/42/packages/pypi"


async def test_an_anonymous_refusal_in_prefer_client_does_not_block_other_clients(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    """GitLab refusing the proxy's own token is no outage: it must not hold the page for all."""
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.tokens["glpat-alice"] = None
    proxy = await make_proxy(
        upstream={"credentials": "prefer-client", "token": "glpat-unknown-to-gitlab"}
    )
    page = f"{proxy.url}{PROJECT}/simple/corp-util/"
    status, _, body = await fetch_as_written(page)
    assert status == 502
    assert b"proxy's credentials" in body
    status, _, body = await fetch_as_written(page, {"Authorization": basic("glpat-alice")})
    assert status == 200, body


async def test_an_upload_forgets_a_remembered_404_for_its_name(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    """Else installs right after `uv publish --check-url` see 404 (or PyPI) for negative_ttl."""
    gitlab.forwarding = False
    page = f"{proxy.url}{PROJECT}/simple/corp-util/"
    assert (await fetch_as_written(page))[0] == 404
    status, _, text = await post_as_is(proxy.url + UPLOAD, GOOD, GOOD_TYPE, basic(TOKEN))
    assert status == 201, text
    status, _, body = await fetch_as_written(page)
    assert status == 200
    assert b"corp_util-1.0.0.tar.gz" in body


async def test_a_name_neither_gitlab_nor_the_public_index_has_is_a_404(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host_of(public),)})
    status, _, body = await fetch_as_written(f"{proxy.url}{PROJECT}/simple/no-such-thing/")
    assert status == 404, body
    # The public index was asked, and said no: that is an answer, not an outage.
    assert [r.status for r in public.requests] == [404]


async def test_uploads_never_reach_gitlab_when_offline(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(cache={"offline": True})
    status, _, text = await post_as_is(proxy.url + UPLOAD, GOOD, GOOD_TYPE, basic(TOKEN))
    assert status == 503
    assert "offline" in text
    assert gitlab.requests == []


async def test_small_files_are_served_with_the_memory_cache_off(
    gitlab: FakeGitLab, make_proxy: ProxyFactory
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    proxy = await make_proxy(cache={"memory_size": 0})
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    for expected in ("MISS", "HIT"):
        status, headers, body = await fetch_as_written(url)
        assert (status, headers["X-Cache"]) == (200, expected)
        assert hashlib.sha256(body).hexdigest() == wheel.sha256


async def test_metadata_of_a_wheel_another_process_evicted_is_fetched_again(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """This process still believes in the wheel; its blob is gone (gc, or another worker)."""
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    # No memory copy: what is served must come from disk, where it is now missing.
    proxy = await make_proxy(cache={"memory_size": 0})
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}.metadata"
    status, _, first = await fetch_as_written(url)
    assert status == 200
    for blob in (tmp_path / "cache" / "blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()
    status, _, again = await fetch_as_written(url)
    assert (status, again) == (200, first)
    assert gitlab.counts["file"] == 2


async def cli(config: Path, *args: str) -> tuple[int, str]:
    result = await run(
        [sys.executable, "-m", "proxy", "--config", str(config), *args], env=clean_env()
    )
    return result.returncode, result.stdout + result.stderr


async def test_warm_works_behind_an_access_tokens_file(gitlab: FakeGitLab, tmp_path: Path) -> None:
    """The tokens file guards `serve`; warm's own loopback listener is for its pip alone."""
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    tokens = tmp_path / "tokens"
    tokens.write_text(hash_token("office-token") + "\n")
    config = write_config(
        tmp_path / "c.toml",
        {
            "upstream": {"url": gitlab.url, "token": TOKEN},
            "cache": {"dir": str(tmp_path / "cache")},
            "access": {"tokens_file": str(tokens)},
        },
    )
    code, out = await cli(config, "warm", "projects/42", "--all")
    assert code == 0, out
    assert gitlab.counts["file"] == 1


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_bad_tokens_file_stops_serve_with_one_line_and_exit_2(
    gitlab: FakeGitLab, tmp_path: Path, workers: int
) -> None:
    config = write_config(
        tmp_path / "c.toml",
        {
            "upstream": {"url": gitlab.url, "token": TOKEN},
            "cache": {"dir": str(tmp_path / "cache")},
            "access": {"tokens_file": str(tmp_path / "missing")},
            "server": {"workers": workers},
        },
    )
    code, out = await cli(config, "serve")
    assert code == 2, out
    assert "Traceback" not in out
    assert "access.tokens_file" in out


@pytest.mark.parametrize("command", ["verify", "gc"])
async def test_maintenance_on_a_mistyped_cache_dir_says_so(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path / "c.toml", {"cache": {"dir": str(tmp_path / "nowhere")}})
    code, out = await cli(config, command)
    assert code == 2, out
    assert "no cache in" in out
    assert not (tmp_path / "nowhere").exists()
