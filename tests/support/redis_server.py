"""A real `redis-server` on a free loopback port, with nothing saved to disk, for tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or next(
    (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(p, os.X_OK)),
    None,
)
SKIP_REASON = "needs redis-server (apt-get install -y redis-server)"
PASSWORD = "redis-secret-password-7f3a"


class RedisServer:
    """One redis-server that a test may kill and start again on the same port."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """With the password, as an operator writes cluster.redis_url."""
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        # Nothing persisted: each start is an empty Redis, as after a real crash without AOF.
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            PASSWORD,
            "--dir",
            str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(200):
            if self.proc.returncode is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise AssertionError("redis-server did not start listening")

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as across a network partition."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL: Redis gone without a word, as when its node dies."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            # A stopped process dies of SIGKILL too; SIGCONT lets the kernel reap it at once.
            self.proc.send_signal(signal.SIGCONT)
            await self.proc.wait()
        self.proc = None
