"""Runs the real command line (`gitlab-pypi-proxy serve`) as a child process on a free port."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    url: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    async def wait_serving(self, path: str = "/-/health", timeout: float = 20) -> None:
        """Poll until `path` answers 200; fail with the process's log if it never does."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    break
                try:
                    async with session.get(self.url + path) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"the proxy did not serve {path}:\n{self.log()}")

    async def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 30) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"the proxy did not exit in time:\n{self.log()}") from None


async def start_serve(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, port: int
) -> ServeProcess:
    """Start `argv` (which must make the proxy listen on 127.0.0.1:`port`)."""
    stderr = cwd / f"serve-{port}.log"
    with stderr.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    return ServeProcess(proc, f"http://127.0.0.1:{port}", stderr)
