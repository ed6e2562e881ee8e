"""Opening the cache directory: read-write, read-only (its index as it is), or not at all."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from .blobs import BlobStore, LocalBlobStore
from .cachehealth import CacheMode
from .files import FileCache
from .metadata import CoreMetadata
from .store import DB_NAME, Store

log = logging.getLogger(__name__)


def write_problem(blobs: BlobStore, cache_dir: Path) -> str | None:
    """Why the cache directory cannot be written now (created if missing), or None."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return e.strerror or type(e).__name__
    error = blobs.write_problem()
    return None if error is None else error.strerror or type(error).__name__


async def open_index(blobs: LocalBlobStore) -> tuple[Store, CacheMode, str]:
    """The index to serve from, the mode that implies, and why it is not read-write.

    A directory that cannot be written is never a reason not to start: its index is read as
    it is when there is one, and otherwise pages are kept in memory and files passed through.
    """
    database = blobs.root / DB_NAME
    reason = write_problem(blobs, blobs.root)
    if reason is None:
        try:
            return await Store.open(database), CacheMode.READ_WRITE, ""
        except sqlite3.Error as e:
            reason = f"{DB_NAME}: {e}"
    if _exists(database):
        try:
            return await Store.open_read_only(database), CacheMode.READ_ONLY, reason
        except sqlite3.Error as e:
            log.warning("cannot read %s either: %s", database, e)
    return await Store.in_memory(), CacheMode.PASS_THROUGH, reason


def _exists(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


async def reopen_when_writable(files: FileCache, metadata: CoreMetadata) -> None:
    """Background task: once a directory opened read-only or not at all takes writes, use it
    read-write (the index and files it holds are reconciled as at start-up), no restart."""
    health = files.health
    while health.mode is not CacheMode.READ_WRITE:
        await asyncio.sleep(health.recheck)
        if write_problem(files.blobs, files.settings.dir) is not None:
            continue
        try:
            disk = await Store.open(files.settings.dir / DB_NAME)
        except sqlite3.Error as e:
            log.debug("cache directory writable, but not its index yet: %s", e)
            continue
        await files.store.adopt(disk)
        health.opened(CacheMode.READ_WRITE)
        await files.load()
        # Loading changes `metadata.generation`, so pages rendered meanwhile are rendered again.
        await metadata.load()
