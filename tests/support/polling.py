"""`eventually`: wait for background work the proxy does after it has answered."""

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
