"""Offline-safe maintenance of a cache directory: `verify` (re-hash every blob) and `gc`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from .blobs import BlobStore
from .eviction import EvictionReport, evict
from .shared_tier import SharedTier, parse_page, written_later
from .simple import is_sha256
from .store import Store

log = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024

Progress = Callable[[int], None]


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    checked_bytes: int = 0
    # "sha256 filename" of each blob whose bytes did not match its name: removed.
    bad: list[str] = field(default_factory=list)
    # Rows whose blob was missing: removed, so the file is fetched again.
    missing: list[str] = field(default_factory=list)
    # Being filled or removed by a running server right now: left alone.
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad and not self.missing


def hash_blob(blobs: BlobStore, sha256: str, progress: Progress) -> str | None:
    """The blob's actual sha256, reporting bytes as they are read; None if it vanished."""
    digest = hashlib.sha256()
    try:
        with blobs.open(sha256) as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
                progress(len(chunk))
    except FileNotFoundError:
        return None
    return digest.hexdigest()


async def census(blobs: BlobStore) -> tuple[int, int]:
    """How many blobs are on disk, and their bytes, for sizing a progress bar."""
    on_disk = await asyncio.to_thread(lambda: list(blobs.scan()))
    return len(on_disk), sum(size for _, size in on_disk)


async def verify(
    store: Store, blobs: BlobStore, progress: Progress = lambda n: None
) -> VerifyReport:
    """Re-hash every blob; remove those that do not match, and rows whose blob is gone.

    Safe next to a running server: each removal happens under the blob's fill lock.
    """
    report = VerifyReport()
    on_disk = await asyncio.to_thread(lambda: list(blobs.scan()))
    rows = {row.sha256: row for row in await store.blobs()}
    for sha256, size in on_disk:
        actual = await asyncio.to_thread(hash_blob, blobs, sha256, progress)
        if actual is None:
            continue
        report.checked += 1
        report.checked_bytes += size
        row = rows.get(sha256)
        if actual == sha256 and (row is None or row.size == size):
            continue
        lock = blobs.try_lock(sha256)
        if lock is None:
            report.skipped += 1
            continue
        with lock:
            await asyncio.to_thread(blobs.remove, sha256)
            await store.remove_blobs([sha256])
        name = row.filename if row is not None else "(no row)"
        log.error("blob %s (%s) does not match its sha256: removed", sha256, name)
        report.bad.append(f"{sha256} {name}")
    on_disk_names = {sha256 for sha256, _ in on_disk}
    for sha256, row in rows.items():
        if sha256 in on_disk_names:
            continue
        lock = blobs.try_lock(sha256)
        if lock is None:
            report.skipped += 1
            continue
        with lock:
            if blobs.size_of(sha256) is not None:
                continue  # filled since the scan
            await store.remove_blobs([sha256])
        report.missing.append(f"{sha256} {row.filename}")
    return report


async def verify_shared(tier: SharedTier, progress: Progress = lambda n: None) -> VerifyReport:
    """Re-hash every blob of the shared tier and read every page copy; remove the bad ones.

    `bad` lists "tier KEY"; the tier is never emptied otherwise (its lifecycle rules do that).
    Raises TierFailed when the tier does not answer.
    """
    report = VerifyReport()
    async for name, size in tier.objects("blobs"):
        key = f"{tier.prefix}blobs/{name}"
        actual = await tier.hash_object(key, progress)
        report.checked += 1
        report.checked_bytes += size
        if not is_sha256(name) or actual != name:
            await tier.remove(key)
            log.error("shared tier object %s does not match its sha256: removed", key)
            report.bad.append(f"tier {key}")
    async for name, size in tier.objects("pages"):
        key = f"{tier.prefix}pages/{name}"
        body = await tier.read_object(key, progress)
        report.checked += 1
        report.checked_bytes += size
        if written_later(body):
            continue
        page = _page_key_of(body)
        if page is None or tier.page_key(page) != key or parse_page(body, page) is None:
            await tier.remove(key)
            log.error("shared tier page copy %s is unreadable: removed", key)
            report.bad.append(f"tier {key}")
    return report


def _page_key_of(body: bytes) -> str | None:
    """The page key a page copy says it holds, or None when it says none."""
    try:
        key = json.loads(body).get("key")
    except (ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


async def gc(store: Store, blobs: BlobStore, max_size: int) -> tuple[int, EvictionReport]:
    """Remove stale temp files, then evict least recently used blobs beyond `max_size`."""
    removed_temp = await asyncio.to_thread(blobs.clean_temp)
    return removed_temp, await evict(store, blobs, max_size)
