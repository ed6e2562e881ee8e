"""Waiting without fixed sleeps: for background work the proxy does after it has answered, and
for a child process to listen."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    what: str,
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> None:
    """Poll `check()` (sync or async) until it is true: generous, for a loaded machine."""
    for _ in range(max(1, round(timeout / interval))):
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"never happened: {what}")


async def listening(proc: asyncio.subprocess.Process, port: int) -> bool:
    """Whether `proc` accepts connections on 127.0.0.1:`port` within 5 s (False once it exits)."""
    for _ in range(200):
        if proc.returncode is not None:
            return False
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.025)
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False
