"""The command line with a configuration: one-line errors, exit codes, starting with none."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.cli_process import serve
from tests.support.harness import clean_env, run


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
