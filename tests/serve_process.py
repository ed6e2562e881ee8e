"""The proxy as its own process (`python -m proxy serve`), for what only a real process shows."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.proxy_harness import clean_env


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
