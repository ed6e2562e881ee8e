"""Issue 6 end to end: warm a cache online, carry a bundle across, install with no network."""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest

from proxy.cli import main as cli_main
from tests.support.clients import installed
from tests.support.fake_gitlab import FakeGitLab, FakePublicIndex
from tests.support.harness import (
    TOKEN,
    Completed,
    clean_env,
    make_settings,
    pip_install,
    run,
    start_proxy,
)
from tests.support.http import get


def online_env(gitlab: FakeGitLab, public: FakePublicIndex | None, cache: Path) -> dict[str, str]:
    """The command line's config for a cache in front of the fakes, all by environment."""
    env = {
        "GITLAB_PYPI_PROXY_UPSTREAM_URL": gitlab.url,
        "GITLAB_PYPI_PROXY_UPSTREAM_USERNAME": "proxy",
        "GITLAB_PYPI_PROXY_UPSTREAM_TOKEN": TOKEN,
        "GITLAB_PYPI_PROXY_CACHE_DIR": str(cache),
    }
    if public is not None:
        env["GITLAB_PYPI_PROXY_UPSTREAM_FORWARDING"] = "cache"
        env["GITLAB_PYPI_PROXY_UPSTREAM_FORWARD_HOSTS"] = public.url.removeprefix("http://")
    return clean_env(**env)


async def cli(env: dict[str, str], *args: str | Path) -> Completed:
    return await run([sys.executable, "-m", "proxy", *map(str, args)], env=env)


def row(output: str, label: str) -> tuple[int, str]:
    """(files, size) of one row of warm's summary table."""
    match = re.search(rf"{label}\s*│\s*(\d+)\s*│\s*([^│]*?)\s*│", output)
    assert match, f"no {label!r} row in:\n{output}"
    return int(match.group(1)), match.group(2)


def blobs_in(cache: Path) -> set[str]:
    """The distributions on disk; each wheel's extracted METADATA blob (PEP 658) is left out."""
    on_disk = {p.name for p in (cache / "blobs").rglob("*") if p.is_file()}
    if not on_disk:
        return on_disk
    with sqlite3.connect(cache / "index.sqlite3") as db:
        metadata = {
            sha
            for (sha,) in db.execute("SELECT sha256 FROM blobs WHERE filename LIKE '%.metadata'")
        }
    return on_disk - metadata


def publish(gitlab: FakeGitLab, public: FakePublicIndex) -> list[str]:
    """Private packages that depend on public ones, two levels deep; the sha256s pip needs."""
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    util = gitlab.add_wheel(42, "corp-util", "1.1.0")
    app = gitlab.add_wheel(42, "corp-app", "2.0.0", requires=["corp.util>=1.1", "tiny-json>=1.1"])
    public.add_wheel("tiny-json", "1.0.0")
    json_ = public.add_wheel("tiny-json", "1.1.0", requires=["tiny-util"])
    tiny = public.add_wheel("tiny-util", "0.5")
    return [f.sha256 for f in (util, app, json_, tiny)]


EXPECTED = {
    "corp_app-2.0.0.dist-info",
    "corp_util-1.1.0.dist-info",
    "tiny_json-1.1.0.dist-info",
    "tiny_util-0.5.dist-info",
}


async def test_warm_export_import_then_install_offline_with_no_network(
    gitlab: FakeGitLab, public: FakePublicIndex, tmp_path: Path
) -> None:
    needed = publish(gitlab, public)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("corp-app\n")
    online = tmp_path / "online-cache"
    env = online_env(gitlab, public, online)

    # 1. Warm: pip resolves through the in-process proxy, partly via GitLab's forwarding.
    warmed = (await cli(env, "warm", "projects/42", "-r", requirements)).check()
    assert row(warmed.stdout, "fetched")[0] == 4
    assert row(warmed.stdout, "failed")[0] == 0
    assert blobs_in(online) == set(needed)
    assert gitlab.counts["file"] == 2
    # Public wheels: the index's own .metadata file (PEP 714), then the wheel.
    assert public.counts["file"] == 4
    assert not any("Authorization" in r.headers for r in public.requests), "token left GitLab"

    # Resumable: a second run fetches nothing and says so.
    again = (await cli(env, "warm", "projects/42", "-r", requirements)).check()
    assert row(again.stdout, "fetched")[0] == 0
    assert row(again.stdout, "already there")[0] == 4
    assert (gitlab.counts["file"], public.counts["file"]) == (2, 4)

    # 2. Export, and import into an empty cache with nothing configured but its directory.
    bundle = tmp_path / "mirror.tar"
    exported = (await cli(env, "export", "--scope", "projects/42", "--out", bundle)).check()
    assert "4 files" in exported.stdout
    offline = tmp_path / "offline-cache"
    bare = clean_env(GITLAB_PYPI_PROXY_CACHE_DIR=str(offline))
    imported = (await cli(bare, "import", bundle)).check()
    assert "4 files added" in imported.stdout
    assert blobs_in(offline) == set(needed)

    # 3. Serve offline. The fakes stay up first, so any request would be seen there.
    settings = make_settings(gitlab.url, offline, TOKEN, cache={"offline": True, "index_ttl": 0})
    proxy = await start_proxy(settings)
    try:
        seen = (len(gitlab.requests), len(public.requests))
        index = proxy.index_url("projects/42")
        extra = ["-r", str(requirements)]
        (await pip_install(index, tmp_path / "one", extra=extra)).check()
        assert installed(tmp_path / "one") == EXPECTED
        assert (len(gitlab.requests), len(public.requests)) == seen, "offline proxy went online"

        # Then with both upstreams gone: the install still succeeds.
        await gitlab.stop()
        await public.stop()
        (await pip_install(index, tmp_path / "two", extra=extra)).check()
        assert installed(tmp_path / "two") == EXPECTED
        status, _, body = await get(f"{proxy.url}/-/ready")
        assert (status, b'"offline": true' in body) == (200, True)
    finally:
        await proxy.stop()


async def test_warm_for_several_target_environments(gitlab: FakeGitLab, tmp_path: Path) -> None:
    linux = gitlab.add_wheel(42, "corp-native", "1.0", tag="cp311-cp311-manylinux2014_x86_64")
    windows = gitlab.add_wheel(42, "corp-native", "1.0", tag="cp311-cp311-win_amd64")
    gitlab.add_wheel(42, "corp-native", "1.0", tag="cp312-cp312-win_amd64")
    cache = tmp_path / "cache"
    result = await cli(
        online_env(gitlab, None, cache),
        "warm",
        "projects/42",
        "corp-native",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "win_amd64",
    )
    result.check()
    assert blobs_in(cache) == {linux.sha256, windows.sha256}
    assert row(result.stdout, "fetched")[0] == 2


async def test_warm_all_with_filters_then_the_rest(gitlab: FakeGitLab, tmp_path: Path) -> None:
    gitlab.add_wheel(42, "corp-util", "1.0.0")
    gitlab.add_sdist(42, "corp-util", "1.1.0")
    new_wheel = gitlab.add_wheel(42, "corp-util", "1.1.0")
    gitlab.add_wheel(42, "corp-app", "2.0.0")
    cache = tmp_path / "cache"
    env = online_env(gitlab, None, cache)

    filtered = await cli(
        env, "warm", "groups/platform", "--all", "--package", "corp-util>=1.1", "--only-binary"
    )
    filtered.check()
    assert blobs_in(cache) == {new_wheel.sha256}
    assert row(filtered.stdout, "fetched")[0] == 1

    everything = (await cli(env, "warm", "groups/platform", "--all", "--jobs", "2")).check()
    assert row(everything.stdout, "fetched")[0] == 3
    assert row(everything.stdout, "already there")[0] == 1
    assert len(blobs_in(cache)) == 4
    assert gitlab.counts["file"] == 4


async def test_warm_exits_non_zero_naming_what_failed_and_why(
    gitlab: FakeGitLab, tmp_path: Path
) -> None:
    good = gitlab.add_wheel(42, "corp-util", "1.0.0")
    content = b"not the bytes the digest was taken of"
    gitlab.add_file(
        42, "corp-bad", "1.0", "corp_bad-1.0-py3-none-any.whl", content, sha256="0" * 64
    )
    cache = tmp_path / "cache"
    env = online_env(gitlab, None, cache)

    result = await cli(env, "warm", "projects/42", "--all")
    assert result.returncode == 1
    assert "failed: corp_bad-1.0-py3-none-any.whl: sha256 mismatch" in result.stderr
    assert row(result.stdout, "failed")[0] == 1
    assert blobs_in(cache) == {good.sha256}

    gitlab.forwarding = False
    result = await cli(env, "warm", "projects/42", "no-such-package")
    assert result.returncode == 1
    assert "failed: resolving for this interpreter:" in result.stderr
    assert "no-such-package" in result.stderr


def test_warm_refuses_what_it_cannot_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITLAB_PYPI_PROXY_CACHE_DIR", str(tmp_path / "cache"))
    for args, message in [
        (["projects/42"], "needs requirements"),
        (["projects/42", "--all", "--platform", "win_amd64"], "shape requirements"),
        (["projects/42", "foo", "--package", "foo"], "--package filters --all"),
        (["projects/42", "-r", str(tmp_path / "missing.txt")], "no such file"),
        (["nowhere/42", "foo"], "unknown scope kind"),
        (["projects/42", "--all", "--package", "foo>>1"], "argument --package"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli_main(["warm", *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    monkeypatch.setenv("GITLAB_PYPI_PROXY_CACHE_OFFLINE", "true")
    assert cli_main(["warm", "projects/42", "--all"]) == 2
    assert "offline" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


async def test_warm_says_when_forwarding_would_bypass_the_cache(
    gitlab: FakeGitLab, public: FakePublicIndex, tmp_path: Path
) -> None:
    public.add_wheel("tiny-json", "1.0")
    cache = tmp_path / "cache"
    # forwarding = "redirect" (the default): pip is sent to the public index itself.
    env = online_env(gitlab, None, cache)
    for args in (["tiny-json"], ["--all", "--package", "tiny-json"]):
        result = await cli(env, "warm", "projects/42", *args)
        assert result.returncode == 1, result.stderr
        assert "GitLab forwards this name" in result.stderr
    assert not blobs_in(cache)
