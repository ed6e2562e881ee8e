"""The real `python -m proxy serve` in a subprocess: crashes, workers, memory and stderr."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.proxy_harness import clean_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A TOML file from plain values (str, int, float, bool)."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class ServeProcess:
    """`python -m proxy --config FILE serve`, stopped by a signal of the test's choosing."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.log = config.with_suffix(".log")

    async def start(self) -> ServeProcess:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy",
                "--config",
                str(self.config),
                "serve",
                stdout=log,
                stderr=log,
                env=clean_env(),
            )
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/-/health") as resp:
                        if resp.status == 200:
                            return self
                if self.proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
        raise RuntimeError(f"proxy did not start:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def signal(self, signum: int, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await self.signal(signal.SIGTERM)
            if self.proc.returncode is None:
                # SIGKILL to the whole group would be broad; the workers are its only children.
                for child in children_of(self.proc.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                self.proc.kill()
                await self.proc.wait()


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


@dataclass
class ServedProxy:
    process: asyncio.subprocess.Process
    url: str
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@asynccontextmanager
async def serve_process(workdir: Path, settings: Mapping[str, str]) -> AsyncIterator[ServedProxy]:
    """Start the proxy with `settings` as GITLAB_PYPI_PROXY_* env; stop it on exit."""
    port = free_port()
    env = clean_env(**{f"GITLAB_PYPI_PROXY_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("GITLAB_PYPI_PROXY_CACHE_DIR", str(workdir / "cache"))
    stderr_path = workdir / "proxy.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--port",
            str(port),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    served = ServedProxy(process, f"http://127.0.0.1:{port}", stderr_path)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{served.url}/-/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                if process.returncode is not None:
                    raise RuntimeError(f"proxy exited: {served.stderr()}")
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"proxy did not start: {served.stderr()}")
        yield served
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
