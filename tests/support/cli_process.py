"""The real command line (`python -m proxy ... serve`) as a child process on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.harness import clean_env

PROXY = [sys.executable, "-m", "proxy"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A TOML file from plain values (str, int, float, bool)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def children_of(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, then ppid.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class ServeProcess:
    """One proxy process listening on 127.0.0.1:`port`; its stdout and stderr go to `log_path`.

    As an async context manager, it is closed on exit.
    """

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        port: int,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path | None = None,
        ready: str = "/-/health",
    ) -> ServeProcess:
        """Start `argv` (which must make the proxy listen on `port`); return once `ready` is 200."""
        log_path = log_path or cwd / f"serve-{port}.log"
        with log_path.open("ab") as sink:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=dict(env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
            )
        process = cls(proc, port, log_path)
        await process.wait_serving(ready)
        return process

    @classmethod
    async def from_config(cls, config: Path, port: int) -> ServeProcess:
        """`python -m proxy --config FILE serve`, the file saying `port`; logs to FILE.log."""
        return await cls.start(
            [*PROXY, "--config", str(config), "serve"],
            port=port,
            env=clean_env(),
            cwd=config.parent,
            log_path=config.with_suffix(".log"),
        )

    async def __aenter__(self) -> ServeProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_serving(self, path: str = "/-/health", timeout: float = 20) -> None:
        """Poll until `path` answers 200; if it never does, kill the process, fail with its log."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and self.proc.returncode is None:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(self.url + path) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        await self.kill()
        raise AssertionError(f"the proxy did not serve {path}:\n{self.log()}")

    def send_signal(self, signum: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    async def wait(self, timeout: float = 30) -> int:
        """The exit status; a process still running after `timeout` is killed and the test fails."""
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(f"the proxy did not exit in time:\n{self.log()}") from None

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit status."""
        self.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        """SIGKILL the workers and then the process itself, if still running."""
        if self.proc.returncode is not None:
            return
        # SIGKILL to the whole group would be broad; the workers are its only children.
        for child in children_of(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        self.proc.kill()
        await self.proc.wait()

    async def close(self, grace: float = 15) -> None:
        """For teardown: SIGTERM, and SIGKILL (workers too) if it is still running after `grace`."""
        self.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace)
        await self.kill()


async def serve(workdir: Path, **settings: str) -> ServeProcess:
    """`python -m proxy serve` in `workdir` on a free port, configured only by the environment.

    Each keyword is one `GITLAB_PYPI_PROXY_<KEY>` variable (`upstream_url=...`); the cache is
    `workdir/cache` unless `cache_dir` says otherwise.
    """
    port = free_port()
    env = clean_env(
        **{f"GITLAB_PYPI_PROXY_{key.upper()}": value for key, value in settings.items()}
    )
    return await ServeProcess.start(
        [*PROXY, "serve", "--port", str(port)], port=port, env=env, cwd=workdir
    )


def uptime_of(pid: int) -> float:
    """Seconds since `pid` started, from /proc (its start time is in clock ticks after boot)."""
    started = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    booted_for = float(Path("/proc/uptime").read_text().split()[0])
    return booted_for - started / os.sysconf("SC_CLK_TCK")


def workers_of(supervisor: int) -> list[int]:
    """The serving processes: the supervisor's `python -m proxy.worker` children."""
    found = []
    for pid in children_of(supervisor):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"proxy.worker\0" in cmdline:
            found.append(pid)
    return found
