"""SQLite shared by worker processes: concurrent writers wait for each other, never fail."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from proxy.store import Store


async def test_writes_while_reading_and_while_another_worker_writes(tmp_path: Path) -> None:
    # Two connections are two workers: each has its own thread, as each process would.
    one, two = [await Store.open(tmp_path / "index.sqlite3") for _ in range(2)]
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3000)]
    for sha in shas:
        await one.add_blob(sha, 10, "f-1.0.tar.gz")

    async def reader(store: Store) -> None:
        # A long listing (eviction's) in progress while this same worker writes.
        for _ in range(5):
            assert len(await store.blobs()) == len(shas)

    async def writer(store: Store, offset: int) -> None:
        for round_ in range(40):
            await store.touch_blobs({shas[(offset + round_) % len(shas)]: float(round_)})
            await store.put_page(f"projects/42:p{offset}", "{}", float(round_))

    try:
        await asyncio.gather(reader(one), writer(one, 0), writer(two, 1000), reader(two))
    finally:
        await one.close()
        await two.close()
