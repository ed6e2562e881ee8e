"""The SQLite index (aiosqlite, WAL): which blobs exist, page models, and their schema."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from .page_key import NAME_SQL, PageKey

log = logging.getLogger(__name__)

# 2: core_metadata.provisional (metadata read by Range, not yet checked against its wheel).
# 3: upload_times (upload time and size of GitLab-hosted files, from its Packages API).
SCHEMA_VERSION = 3
# The index's file name inside cache.dir.
DB_NAME = "index.sqlite3"
# Upload time (PEP 700 text) and size of a file GitLab hosts, by its sha256 and filename, as
# GitLab's Packages API gave them: a file's never change, so they are asked for once.
_UPLOAD_TIMES = """CREATE TABLE IF NOT EXISTS upload_times (
    sha256 TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    upload_time TEXT NOT NULL,
    PRIMARY KEY (sha256, filename)
)"""
# SQLite's limit on the variables of one statement is 32,766 since 3.32, 999 before.
_IN_BATCH = 500
_SCHEMA = (
    """
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
-- provisional: read by HTTP Range from a wheel not yet downloaded and verified.
CREATE TABLE IF NOT EXISTS core_metadata (
    wheel_sha256 TEXT PRIMARY KEY,
    metadata_sha256 TEXT,
    problem TEXT,
    provisional INTEGER NOT NULL DEFAULT 0
);
"""
    + _UPLOAD_TIMES
    + ";\n"
)
# Each step brings a database written at version N-1 (the index) to version N.
_MIGRATIONS = {
    2: "ALTER TABLE core_metadata ADD COLUMN provisional INTEGER NOT NULL DEFAULT 0",
    3: _UPLOAD_TIMES,
}

_PUT_FORWARDED = (
    "INSERT INTO forwarded_files (scope, sha256, filename, url) VALUES (?,?,?,?)"
    " ON CONFLICT(scope, sha256, filename) DO UPDATE SET url=excluded.url"
)


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
    provisional: bool = False


@dataclass(frozen=True, slots=True)
class UploadTimeRow:
    """What GitLab's Packages API says of one file: its size and upload time (PEP 700 text)."""

    sha256: str
    filename: str
    size: int
    upload_time: str


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


async def _migrate(db: aiosqlite.Connection) -> None:
    """Create the schema, or bring one an earlier release wrote up to SCHEMA_VERSION."""
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    found = int(rows[0][0])  # 0: a new database
    if found:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await db.execute(_MIGRATIONS[version])
    await db.executescript(_SCHEMA)
    await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    await db.commit()


class Store:
    """One aiosqlite connection per process; WAL lets worker processes share the file.

    Read-only (the index on read-only media) it keeps what it holds and drops every write:
    what the proxy learns meanwhile lives in its memory caches only.
    """

    def __init__(
        self, db: aiosqlite.Connection, *, read_only: bool = False, on_disk: bool = True
    ) -> None:
        self.db = db
        self.read_only = read_only
        # False for the in-memory index used while the cache directory cannot be written.
        self.on_disk = on_disk
        # A private copy of an index whose WAL could not be read in place; removed on close.
        self._copy_dir: Path | None = None
        # One write transaction at a time on this connection; a failed one is rolled back
        # before the next begins, so no coroutine's write rides on another's failure.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        # IMMEDIATE: a write takes SQLite's write lock before reading, so with other worker
        # processes it waits out the busy timeout instead of failing at once on a stale snapshot.
        db = await aiosqlite.connect(path, timeout=30, isolation_level="IMMEDIATE")
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await _migrate(db)
        except BaseException:
            # Its thread would otherwise keep the process alive after the error: the hang of
            # a start-up on a read-only index.
            await db.close()
            raise
        return cls(db)

    @classmethod
    async def in_memory(cls) -> Store:
        """An empty index in memory: pages and sources are kept, nothing reaches the disk."""
        db = await aiosqlite.connect(":memory:", isolation_level="IMMEDIATE")
        await db.executescript(_SCHEMA)
        await db.commit()
        return cls(db, on_disk=False)

    @classmethod
    async def open_read_only(cls, path: Path) -> Store:
        """The index as it is, never written (read-only media, or a directory not ours).

        In WAL mode SQLite reads in place only if it can use (or create) the -shm file. When
        it cannot, a -wal holding changes not yet in the main file is read from a private
        copy; with no such -wal the file is opened immutable, which ignores none of its data.
        """
        path = await asyncio.to_thread(path.resolve)
        try:
            return cls(await _connect_read_only(f"{path.as_uri()}?mode=ro"), read_only=True)
        except sqlite3.Error as e:
            in_place = e
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            copy_dir = Path(tempfile.mkdtemp(prefix="gitlab-pypi-proxy-index-"))
            try:
                await asyncio.to_thread(shutil.copy2, path, copy_dir / path.name)
                await asyncio.to_thread(shutil.copy2, wal, copy_dir / wal.name)
                copy = copy_dir / path.name
                store = cls(await _connect_read_only(f"{copy.as_uri()}?mode=ro"), read_only=True)
            except (OSError, sqlite3.Error) as e:
                shutil.rmtree(copy_dir, ignore_errors=True)
                log.warning(
                    "cannot read %s in place (%s) nor copy it with its WAL (%s): changes "
                    "still in the WAL are ignored",
                    path,
                    in_place,
                    e,
                )
            else:
                log.info("reading %s from a private copy with its WAL (%s)", path, in_place)
                store._copy_dir = copy_dir
                return store
        return cls(await _connect_read_only(f"{path.as_uri()}?immutable=1"), read_only=True)

    async def adopt(self, other: Store) -> None:
        """Carry on with `other`'s connection (the directory became writable); what an
        in-memory index learnt meanwhile (pages, file sources) is written to `other`."""
        async with self._write_lock:
            carried = (await self.pages(), await self.forwarded()) if not self.on_disk else None
            old, old_copy = self.db, self._copy_dir
            self.db, self.read_only, self.on_disk = other.db, other.read_only, other.on_disk
            self._copy_dir = other._copy_dir
        if carried is not None:
            await self.merge([], *carried)
        await old.close()
        if old_copy is not None:
            shutil.rmtree(old_copy, ignore_errors=True)

    async def close(self) -> None:
        await self.db.close()
        if self._copy_dir is not None:
            shutil.rmtree(self._copy_dir, ignore_errors=True)

    async def _write(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement per row in one transaction, committed, or rolled back on error."""
        await self._transaction([(sql, rows)])

    async def _transaction(
        self, statements: Sequence[tuple[str, Sequence[Sequence[object]]]]
    ) -> None:
        """Several statements (each once per row) in one transaction: all of them or none."""
        if self.read_only:
            return
        async with self._write_lock:
            try:
                for sql, rows in statements:
                    await self.db.executemany(sql, rows)
                await self.db.commit()
            except BaseException:
                # Cancelled too: a half-written transaction must not stay open on the connection.
                await self.db.rollback()
                raise

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """All rows in one step: no read snapshot stays open across an await, where this
        connection's next write would find it stale (another worker wrote) and fail at once."""
        return [tuple(row) for row in await self.db.execute_fetchall(sql, params)]

    async def ping(self) -> bool:
        return bool(await self._read("SELECT 1"))

    async def add_blob(self, sha256: str, size: int, filename: str) -> None:
        now = time.time()
        await self._write(
            "INSERT INTO blobs (sha256, size, filename, created, last_access) VALUES (?,?,?,?,?)"
            " ON CONFLICT(sha256) DO UPDATE SET last_access=excluded.last_access",
            [(sha256, size, filename, now, now)],
        )

    async def remove_blobs(self, sha256s: Iterable[str]) -> None:
        await self._write("DELETE FROM blobs WHERE sha256=?", [(s,) for s in sha256s])

    async def blobs(self) -> list[BlobRow]:
        rows = await self._read(
            "SELECT sha256, size, filename, last_access FROM blobs ORDER BY last_access"
        )
        return [BlobRow(*row) for row in rows]

    async def blob(self, sha256: str) -> BlobRow | None:
        rows = await self._read(
            "SELECT sha256, size, filename, last_access FROM blobs WHERE sha256=?", (sha256,)
        )
        return BlobRow(*rows[0]) if rows else None

    async def total_size(self) -> int:
        rows = await self._read("SELECT COALESCE(SUM(size), 0) FROM blobs")
        return int(rows[0][0])

    async def touch_blobs(self, accessed: dict[str, float]) -> None:
        await self._write(
            "UPDATE blobs SET last_access=MAX(last_access, ?) WHERE sha256=?",
            [(at, sha) for sha, at in accessed.items()],
        )

    async def get_page(self, key: str) -> PageRow | None:
        rows = await self._read("SELECT key, model, fetched_at FROM pages WHERE key=?", (key,))
        return PageRow(*rows[0]) if rows else None

    async def put_page(self, key: str, model: str, fetched_at: float) -> None:
        await self._write(
            "INSERT INTO pages (key, model, fetched_at) VALUES (?,?,?)"
            " ON CONFLICT(key) DO UPDATE SET model=excluded.model, fetched_at=excluded.fetched_at",
            [(key, model, fetched_at)],
        )

    async def delete_pages_named(self, name: str) -> None:
        """Delete every view's page for `name` and every view's index."""
        # NAME_SQL is a constant of this program, not input.
        await self._write(f"DELETE FROM pages WHERE {NAME_SQL} IN (?, '')", [(name,)])  # noqa: S608

    async def age_pages(self, fetched_at: float) -> None:
        """Make every stored page at least this old, so none counts as fresh any more."""
        await self._write(
            "UPDATE pages SET fetched_at=? WHERE fetched_at > ?", [(fetched_at, fetched_at)]
        )

    async def pages(self, views: Iterable[str] | None = None) -> list[PageRow]:
        """Stored pages of `views` (scope keys), or all of them."""
        prefixes = [""] if views is None else [PageKey.view_prefix(view) for view in views]
        found: dict[str, PageRow] = {}
        for prefix in prefixes:
            rows = await self._read(
                "SELECT key, model, fetched_at FROM pages WHERE substr(key, 1, ?) = ?",
                (len(prefix), prefix),
            )
            found.update({row[0]: PageRow(*row) for row in rows})
        return [found[key] for key in sorted(found)]

    async def put_forwarded(self, rows: Iterable[ForwardedRow]) -> None:
        await self._write(_PUT_FORWARDED, [(r.scope, r.sha256, r.filename, r.url) for r in rows])

    async def forwarded_url(self, scope: str, sha256: str, filename: str) -> str | None:
        rows = await self._read(
            "SELECT url FROM forwarded_files WHERE scope=? AND sha256=? AND filename=?",
            (scope, sha256, filename),
        )
        return str(rows[0][0]) if rows else None

    async def forwarded(self, scopes: Iterable[str] | None = None) -> list[ForwardedRow]:
        """Forwarded file sources of `scopes` (None: all)."""
        rows = [
            ForwardedRow(*row)
            for row in await self._read(
                "SELECT scope, sha256, filename, url FROM forwarded_files ORDER BY scope, sha256"
            )
        ]
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
        await self._transaction(
            [
                (
                    "INSERT INTO blobs (sha256, size, filename, created, last_access)"
                    " VALUES (?,?,?,?,?) ON CONFLICT(sha256) DO NOTHING",
                    [(b.sha256, b.size, b.filename, now, now) for b in blobs],
                ),
                (
                    "INSERT INTO pages (key, model, fetched_at) VALUES (?,?,?)"
                    " ON CONFLICT(key) DO UPDATE SET model=excluded.model,"
                    " fetched_at=excluded.fetched_at WHERE excluded.fetched_at > pages.fetched_at",
                    [(p.key, p.model, p.fetched_at) for p in pages],
                ),
                (_PUT_FORWARDED, [(r.scope, r.sha256, r.filename, r.url) for r in forwarded]),
            ]
        )

    async def upload_times(self, sha256s: Iterable[str]) -> list[UploadTimeRow]:
        """The known upload times and sizes of files with these sha256s (any filename)."""
        wanted = sorted(set(sha256s))
        found: list[UploadTimeRow] = []
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start : start + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            rows = await self._read(
                # Only "?" marks are formatted in; the values are parameters.
                "SELECT sha256, filename, size, upload_time FROM upload_times"  # noqa: S608
                f" WHERE sha256 IN ({marks})",
                batch,
            )
            found.extend(UploadTimeRow(*row) for row in rows)
        return found

    async def put_upload_times(self, rows: Iterable[UploadTimeRow]) -> None:
        """Remember what GitLab said; a value already known stays (a file's never change)."""
        await self._write(
            "INSERT INTO upload_times (sha256, filename, size, upload_time) VALUES (?,?,?,?)"
            " ON CONFLICT(sha256, filename) DO NOTHING",
            [(r.sha256, r.filename, r.size, r.upload_time) for r in rows],
        )

    async def core_metadata(self, wheel_sha256: str | None = None) -> list[CoreMetadataRow]:
        """Every wheel-to-metadata row, or the one of `wheel_sha256`."""
        query = "SELECT wheel_sha256, metadata_sha256, problem, provisional FROM core_metadata"
        args: tuple[str, ...] = ()
        if wheel_sha256 is not None:
            query += " WHERE wheel_sha256=?"
            args = (wheel_sha256,)
        return [
            CoreMetadataRow(wheel, metadata, problem, bool(provisional))
            for wheel, metadata, problem, provisional in await self._read(query, args)
        ]

    async def put_core_metadata(self, row: CoreMetadataRow) -> None:
        await self._write(
            "INSERT OR REPLACE INTO core_metadata"
            " (wheel_sha256, metadata_sha256, problem, provisional) VALUES (?,?,?,?)",
            [(row.wheel_sha256, row.metadata_sha256, row.problem, int(row.provisional))],
        )


async def _connect_read_only(uri: str) -> aiosqlite.Connection:
    """A read-only connection that has read the schema: a failure to open shows here.

    Tables an earlier release did not have yet are made empty TEMP tables (in memory, not in
    the file), so every query finds what it expects.
    """
    db = await aiosqlite.connect(uri, uri=True, timeout=30)
    try:
        await db.execute_fetchall("SELECT count(*) FROM blobs")
        rows = await db.execute_fetchall("SELECT name FROM sqlite_master WHERE type='table'")
        present = {str(row[0]) for row in rows}
        for name, create in _tables().items():
            if name not in present:
                await db.execute(create.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE"))
        columns = await db.execute_fetchall("PRAGMA table_info(core_metadata)")
        if "core_metadata" in present and "provisional" not in {str(c[1]) for c in columns}:
            # Schema 1 (before metadata by Range): a TEMP view shadows the table, so its rows
            # read as verified ones, as that release kept only metadata from verified wheels.
            await db.execute(
                "CREATE TEMP VIEW core_metadata AS SELECT wheel_sha256, metadata_sha256,"
                " problem, 0 AS provisional FROM main.core_metadata"
            )
    except BaseException:
        await db.close()
        raise
    return db


def _tables() -> dict[str, str]:
    """Each table of _SCHEMA by name: its CREATE TABLE statement."""
    tables = {}
    for statement in _SCHEMA.split(";"):
        code = "\n".join(
            line for line in statement.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if code.startswith("CREATE TABLE IF NOT EXISTS "):
            tables[code.split()[5]] = code
    return tables
