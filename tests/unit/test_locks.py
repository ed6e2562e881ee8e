"""Cross-process locks: one exclusive holder, read holds that eviction skips, unlinked files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from proxy.locks import FileLock, ReadHold, try_exclusive


def test_one_holder_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first = FileLock.try_acquire(path)
    assert first is not None
    assert FileLock.try_acquire(path) is None
    first.release()
    assert not path.exists()
    again = FileLock.try_acquire(path)
    assert again is not None
    again.release(unlink=False)
    assert path.exists()


async def test_acquire_waits_for_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    held = FileLock.try_acquire(path)
    assert held is not None
    waiter = asyncio.create_task(FileLock.acquire(path))
    await asyncio.sleep(0.06)
    assert not waiter.done()
    held.release()
    lock = await asyncio.wait_for(waiter, 2)
    lock.release()


def test_a_read_hold_keeps_exclusive_out(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x")
    hold = ReadHold.take(blob)
    assert hold is not None
    assert try_exclusive(blob) is None
    hold.release()
    fd = try_exclusive(blob)
    assert fd is not None
    # Being removed: no new read hold.
    assert ReadHold.take(blob) is None
    os.close(fd)


def test_a_missing_blob_has_no_hold(tmp_path: Path) -> None:
    assert ReadHold.take(tmp_path / "gone") is None
    assert try_exclusive(tmp_path / "gone") is None
