"""The SQLite index (aiosqlite, WAL): which blobs exist, page models, and their schema."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    filename TEXT NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_last_access ON blobs (last_access);
CREATE TABLE IF NOT EXISTS pages (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    fetched_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS forwarded_files (
    scope TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    filename TEXT NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (scope, sha256, filename)
);
-- PEP 658: which blob holds a wheel's METADATA. NULL metadata_sha256: the wheel has none
-- usable, for the reason in `problem` (a wheel's content never changes, so neither does this).
CREATE TABLE IF NOT EXISTS core_metadata (
    wheel_sha256 TEXT PRIMARY KEY,
    metadata_sha256 TEXT,
    problem TEXT
);
"""


@dataclass(frozen=True, slots=True)
class BlobRow:
    sha256: str
    size: int
    filename: str
    last_access: float


@dataclass(frozen=True, slots=True)
class CoreMetadataRow:
    wheel_sha256: str
    metadata_sha256: str | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class PageRow:
    key: str
    model: str
    fetched_at: float


@dataclass(frozen=True, slots=True)
class ForwardedRow:
    """Where a file of a forwarded page really lives (not on GitLab), for one scope."""

    scope: str
    sha256: str
    filename: str
    url: str


class Store:
    """One aiosqlite connection per process; WAL lets worker processes share the file."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    @classmethod
    async def open(cls, path: Path) -> Store:
        db = await aiosqlite.connect(path, timeout=30)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.executescript(_SCHEMA)
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> bool:
        async with self.db.execute("SELECT 1") as cur:
            return await cur.fetchone() is not None

    async def add_blob(self, sha256: str, size: int, filename: str) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT INTO blobs (sha256, size, filename, created, last_access) VALUES (?,?,?,?,?)"
            " ON CONFLICT(sha256) DO UPDATE SET last_access=excluded.last_access",
            (sha256, size, filename, now, now),
        )
        await self.db.commit()

    async def remove_blobs(self, sha256s: Iterable[str]) -> None:
        await self.db.executemany("DELETE FROM blobs WHERE sha256=?", [(s,) for s in sha256s])
        await self.db.commit()

    async def blobs(self) -> list[BlobRow]:
        async with self.db.execute(
            "SELECT sha256, size, filename, last_access FROM blobs ORDER BY last_access"
        ) as cur:
            return [BlobRow(*row) async for row in cur]

    async def touch_blobs(self, accessed: dict[str, float]) -> None:
        await self.db.executemany(
            "UPDATE blobs SET last_access=MAX(last_access, ?) WHERE sha256=?",
            [(at, sha) for sha, at in accessed.items()],
        )
        await self.db.commit()

    async def get_page(self, key: str) -> PageRow | None:
        async with self.db.execute(
            "SELECT key, model, fetched_at FROM pages WHERE key=?", (key,)
        ) as cur:
            row = await cur.fetchone()
        return PageRow(*row) if row else None

    async def put_page(self, key: str, model: str, fetched_at: float) -> None:
        await self.db.execute(
            "INSERT INTO pages (key, model, fetched_at) VALUES (?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET model=excluded.model, fetched_at=excluded.fetched_at",
            (key, model, fetched_at),
        )
        await self.db.commit()

    async def delete_pages_named(self, name: str) -> None:
        """Delete every scope's page for `name` and every scope's index (keys `scope:name`)."""
        await self.db.execute(
            "DELETE FROM pages WHERE substr(key, instr(key, ':') + 1) IN (?, '')", (name,)
        )
        await self.db.commit()

    async def delete_pages(self, keys: Iterable[str]) -> None:
        await self.db.executemany("DELETE FROM pages WHERE key=?", [(k,) for k in keys])
        await self.db.commit()

    async def pages(self, prefixes: Iterable[str] = ("",)) -> list[PageRow]:
        """Stored pages whose key starts with one of `prefixes` ('' matches all)."""
        rows: dict[str, PageRow] = {}
        for prefix in prefixes:
            async with self.db.execute(
                "SELECT key, model, fetched_at FROM pages WHERE substr(key, 1, ?) = ?",
                (len(prefix), prefix),
            ) as cur:
                rows.update({row[0]: PageRow(*row) async for row in cur})
        return [rows[key] for key in sorted(rows)]

    async def put_forwarded(self, rows: Iterable[ForwardedRow]) -> None:
        await self.db.executemany(
            "INSERT INTO forwarded_files (scope, sha256, filename, url) VALUES (?,?,?,?)"
            " ON CONFLICT(scope, sha256, filename) DO UPDATE SET url=excluded.url",
            [(r.scope, r.sha256, r.filename, r.url) for r in rows],
        )
        await self.db.commit()

    async def forwarded_url(self, scope: str, sha256: str, filename: str) -> str | None:
        async with self.db.execute(
            "SELECT url FROM forwarded_files WHERE scope=? AND sha256=? AND filename=?",
            (scope, sha256, filename),
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def forwarded(self, scopes: Iterable[str] | None = None) -> list[ForwardedRow]:
        """Forwarded file sources of `scopes` (None: all)."""
        async with self.db.execute(
            "SELECT scope, sha256, filename, url FROM forwarded_files ORDER BY scope, sha256"
        ) as cur:
            rows = [ForwardedRow(*row) async for row in cur]
        if scopes is None:
            return rows
        wanted = set(scopes)
        return [r for r in rows if r.scope in wanted]

    async def merge(
        self,
        blobs: Iterable[BlobRow],
        pages: Iterable[PageRow],
        forwarded: Iterable[ForwardedRow],
    ) -> None:
        """A bundle's rows in one transaction; a page already stored stays unless older."""
        now = time.time()
        try:
            await self.db.executemany(
                "INSERT INTO blobs (sha256, size, filename, created, last_access)"
                " VALUES (?,?,?,?,?) ON CONFLICT(sha256) DO NOTHING",
                [(b.sha256, b.size, b.filename, now, now) for b in blobs],
            )
            await self.db.executemany(
                "INSERT INTO pages (key, model, fetched_at) VALUES (?,?,?)"
                " ON CONFLICT(key) DO UPDATE SET model=excluded.model,"
                " fetched_at=excluded.fetched_at WHERE excluded.fetched_at > pages.fetched_at",
                [(p.key, p.model, p.fetched_at) for p in pages],
            )
            await self.db.executemany(
                "INSERT INTO forwarded_files (scope, sha256, filename, url) VALUES (?,?,?,?)"
                " ON CONFLICT(scope, sha256, filename) DO UPDATE SET url=excluded.url",
                [(r.scope, r.sha256, r.filename, r.url) for r in forwarded],
            )
        except BaseException:
            await self.db.rollback()
            raise
        await self.db.commit()

    async def core_metadata(self, wheel_sha256: str | None = None) -> list[CoreMetadataRow]:
        """Every wheel-to-metadata row, or the one of `wheel_sha256`."""
        query = "SELECT wheel_sha256, metadata_sha256, problem FROM core_metadata"
        args: tuple[str, ...] = ()
        if wheel_sha256 is not None:
            query += " WHERE wheel_sha256=?"
            args = (wheel_sha256,)
        async with self.db.execute(query, args) as cur:
            return [CoreMetadataRow(*row) async for row in cur]

    async def put_core_metadata(self, row: CoreMetadataRow) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO core_metadata (wheel_sha256, metadata_sha256, problem)"
            " VALUES (?,?,?)",
            (row.wheel_sha256, row.metadata_sha256, row.problem),
        )
        await self.db.commit()
