"""The size limit: least recently used blobs go once the cache passes `cache.max_size`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .blobs import BlobStore
from .cachehealth import CacheMode
from .files import FileCache
from .store import Store

log = logging.getLogger(__name__)

# Evict down to this share of max_size, so one new file does not mean one eviction run.
LOW_WATER = 0.9
# The size is also looked at this often when nothing was added (another worker may have).
INTERVAL_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class EvictionReport:
    before: int
    after: int
    removed: int
    freed: int
    # Least recently used, yet kept: being sent to a client, or being filled, right now.
    busy: int


async def evict(
    store: Store,
    blobs: BlobStore,
    max_size: int,
    *,
    forget: Callable[[str], None] = lambda sha256: None,
    free_target: int = 0,
) -> EvictionReport:
    """Remove least recently used blobs until the cache is under LOW_WATER of `max_size`, and
    its file system has `free_target` bytes free (a disk shared with other files fills up
    before `max_size` is reached).

    A blob is removed only under its fill lock and with no client reading it, in any process.
    """
    total = await store.total_size()
    # Only when removing the whole cache would reach it: a file larger than all the cache
    # and the free space together must not flush everything for nothing.
    free_short = 0 < free_target - blobs.free_space() <= total
    if not free_short and (max_size <= 0 or total <= max_size):
        return EvictionReport(total, total, 0, 0, 0)
    # One evictor at a time across workers; the others find the work done.
    guard = blobs.try_lock("evict")
    if guard is None:
        return EvictionReport(total, total, 0, 0, 0)
    with guard:
        before = total = await store.total_size()
        target = int(max_size * LOW_WATER) if 0 < max_size < total else total
        removed: list[str] = []
        freed = busy = 0
        for row in await store.blobs():
            if total <= target and (not free_short or blobs.free_space() >= free_target):
                break
            lock = blobs.try_lock(row.sha256)
            if lock is None:
                busy += 1
                continue
            with lock:
                if not await asyncio.to_thread(blobs.remove_unless_read, row.sha256):
                    busy += 1
                    continue
                # Under the lock: a fill of the same blob right after must keep its new row.
                await store.remove_blobs([row.sha256])
            forget(row.sha256)
            removed.append(row.sha256)
            total -= row.size
            freed += row.size
    return EvictionReport(before, total, len(removed), freed, busy)


async def run_evictor(files: FileCache) -> None:
    """Background task: evict after blobs are added, and every INTERVAL_SECONDS anyway."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(files.grown.wait(), INTERVAL_SECONDS)
        files.grown.clear()
        try:
            # Access times first, so "least recently used" counts this process's hits.
            await files.flush_access()
            if files.health.mode is not CacheMode.READ_WRITE:
                continue  # nothing here may be removed
            free_target = files.health.free_target()
            report = await evict(
                files.store,
                files.blobs,
                files.settings.max_size,
                forget=files.forget,
                free_target=free_target,
            )
            if free_target and files.blobs.free_space() >= free_target:
                files.health.room_made()
        except Exception:
            log.exception("eviction failed")
            continue
        if report.removed or report.busy:
            log.info(
                "evicted %d files (%d bytes); cache now %d of %d bytes; %d in use kept",
                report.removed,
                report.freed,
                report.after,
                files.settings.max_size,
                report.busy,
            )
