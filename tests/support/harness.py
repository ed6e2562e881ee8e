"""Starts the real proxy app on a real port, and runs real pip/uv/twine with a clean environment."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.config import CacheSettings, ServerSettings, Settings, UpstreamSettings

TOKEN = "glpat-proxy-secret-token-1234567890"


BIN = Path(sys.executable).parent


@dataclass
class RunningProxy:
    runner: web.AppRunner
    url: str
    settings: Settings

    @property
    def app(self) -> web.Application:
        return self.runner.app

    def index_url(self, scope: str) -> str:
        """pip's --index-url for 'projects/42' or 'groups/7'."""
        kind, _, raw_id = scope.partition("/")
        if kind == "projects":
            return f"{self.url}/api/v4/projects/{raw_id}/packages/pypi/simple/"
        return f"{self.url}/api/v4/groups/{raw_id}/-/packages/pypi/simple/"

    async def stop(self) -> None:
        await self.runner.cleanup()


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


def make_settings(
    upstream_url: str, cache_dir: Path, token: str, **sections: Mapping[str, Any]
) -> Settings:
    """Settings for a test proxy; `sections` override keys, e.g. upstream={"forwarding": "deny"}."""
    settings = Settings(
        server=ServerSettings(host="127.0.0.1", port=8080),
        upstream=UpstreamSettings(url=upstream_url, username="proxy", token=token, timeout=10),
        cache=CacheSettings(dir=cache_dir),
    )
    for name, values in sections.items():
        section = dataclasses.replace(getattr(settings, name), **values)
        settings = dataclasses.replace(settings, **{name: section})
    return settings


async def start_proxy(settings: Settings, port: int = 0) -> RunningProxy:
    """The proxy on `port` (0: a free one); a given port lets a test restart a proxy in place."""
    runner = web.AppRunner(create_app(settings), handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = runner.addresses[0][1]
    return RunningProxy(runner, f"http://127.0.0.1:{port}", settings)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this machine's pip/uv config, so only our index is used."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "UV_", "GITLAB_PYPI_PROXY_", "CI_"))
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["UV_NO_CONFIG"] = "1"
    env.update(extra)
    return env


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        assert self.returncode == 0, f"exit {self.returncode}\n{self.stdout}\n{self.stderr}"
        return self


async def run(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 180
) -> Completed:
    """Run a command without blocking the event loop the in-process servers live on.

    One that outlasts `timeout` fails the test with every thread's stack in the message: a
    Python child is sent SIGABRT, which PYTHONFAULTHANDLER makes it print before it dies.
    """
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**(env if env is not None else clean_env()), "PYTHONFAULTHANDLER": "1"},
    )
    # Not cancelled on a timeout, so what the child said until then (and its stacks) is kept.
    communicating = asyncio.ensure_future(proc.communicate())
    done, _ = await asyncio.wait({communicating}, timeout=timeout)
    if not done:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = await asyncio.wait_for(asyncio.shield(communicating), 10)
        except TimeoutError:
            proc.kill()
            out, err = await communicating
        raise AssertionError(
            f"{' '.join(args)} still ran after {timeout} s; its output and stacks:\n"
            f"{out.decode(errors='replace')}\n{err.decode(errors='replace')}"
        )
    out, err = communicating.result()
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def pip_install(
    index_url: str, target: Path, *requirements: str, extra: Sequence[str] = ()
) -> Completed:
    """Real pip, isolated from user config and caches, installing into `target`."""
    return await run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            # Neither changes what is fetched: pip's closing scan of every distribution in this
            # venv for conflicts is a fifth of each run, and bytecode is never imported here.
            "--no-warn-conflicts",
            "--no-compile",
            "--only-binary",
            ":all:",
            "--index-url",
            index_url,
            "--target",
            str(target),
            *extra,
            *requirements,
        ]
    )


async def twine(url: str, password: str, *args: str | Path) -> Completed:
    """Real `twine upload` to `url` (a proxy's or GitLab's `.../packages/pypi`)."""
    return await run(
        [
            str(BIN / "twine"),
            "upload",
            "--repository-url",
            url,
            "--username",
            "someone",
            "--password",
            password,
            "--disable-progress-bar",
            *map(str, args),
        ],
        env=clean_env(TWINE_NON_INTERACTIVE="1"),
    )


async def uv_pip_install(
    index_url: str,
    target: Path,
    *requirements: str,
    cache_dir: Path,
    extra: Sequence[str] = (),
) -> Completed:
    """Real uv, with its own empty cache so every run downloads through the proxy."""
    return await run(
        [
            str(BIN / "uv"),
            "pip",
            "install",
            "--no-config",
            "--index-url",
            index_url,
            "--target",
            str(target),
            "--cache-dir",
            str(cache_dir),
            "--python",
            sys.executable,
            "--only-binary",
            ":all:",
            *extra,
            *requirements,
        ]
    )
