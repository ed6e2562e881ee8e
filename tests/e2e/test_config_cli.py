"""The command line with a configuration: one-line errors, exit codes, starting with none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from proxy.access import hash_token
from tests.support.cli_process import serve, write_config
from tests.support.fake_gitlab import FakeGitLab
from tests.support.harness import TOKEN, clean_env, run


async def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[server]\nport = 'x'\n")
    result = await run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)], env=clean_env()
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "server.port" in result.stderr
    assert "Traceback" not in result.stderr


async def test_serve_starts_with_no_config_at_all(tmp_path: Path) -> None:
    async with await serve(tmp_path) as proxy:
        assert (tmp_path / "cache" / "index.sqlite3").exists()
        assert await proxy.stop() == 0
    assert "policy." not in proxy.log()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"policy_min_age": "7d"}, ("policy.min_age", "upstream.forwarding")),
        (
            {"policy_unknown_age": "deny"},
            ("policy.unknown_age", "policy.min_age", "policy.min_age_internal"),
        ),
    ],
    ids=["min_age-under-redirect", "unknown_age-without-min_age"],
)
async def test_serve_warns_once_of_a_setting_that_does_less_than_it_seems(
    gitlab: FakeGitLab, tmp_path: Path, settings: dict[str, str], named: tuple[str, ...]
) -> None:
    # Two workers: the supervisor says it once, not each worker.
    async with await serve(
        tmp_path, upstream_url=gitlab.url, upstream_token=TOKEN, server_workers="2", **settings
    ) as proxy:
        assert await proxy.stop() == 0
    lines = [line for line in proxy.log().splitlines() if named[0] in line]
    assert len(lines) == 1, proxy.log()
    assert " WARNING proxy: " in lines[0]
    assert all(key in lines[0] for key in named)


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
