"""Bundles: cached pages and files exported to one tar, imported back verified, all or nothing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import math
import re
import shutil
import sys
import tarfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import yarl
from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .blobs import LocalBlobStore, fsync_file
from .codec import decode_page, encode_page
from .config import Settings
from .errors import ProxyError
from .page_key import PageKey
from .scope import Scope
from .simple import (
    Index,
    Project,
    is_distribution_filename,
    is_file_url,
    is_sha256,
    is_valid_name,
    normalize,
)
from .store import DB_NAME, BlobRow, ForwardedRow, PageRow, Store
from .upstream import is_listed_host

FORMAT = "gitlab-pypi-proxy-bundle"
# Version 1 is the only manifest ever written (96ca97b through a40a93d to today). As with pages
# (codec.py), a new key needs no new version: readers ignore keys they do not know, and a missing
# `created`, `scopes` or `forwarded` reads as empty. Only a change that version 1 readers would
# misread bumps it; the reader then turns each earlier version into the next, so all still read.
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
CHUNK = 1024 * 1024
_BLOB_MEMBER = re.compile(r"^blobs/([0-9a-f]{64})$")
_MANIFEST_KEYS = ("format", "version", "blobs", "pages")


class BundleError(Exception):
    """A bundle that cannot be written, or must not be imported; the message says why."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    pages: int
    blobs: int
    size: int
    # Files the exported pages list but the cache does not hold (never warmed).
    missing: int
    forwarded: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    added: int
    added_size: int
    present: int
    pages: int
    forwarded: int
    # Forwarded-file sources on hosts this side's upstream.forward_hosts does not list.
    dropped: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """A verified bundle, ready to commit: its rows, and where its files are staged."""

    blobs: list[BlobRow]
    pages: list[PageRow]
    forwarded: list[ForwardedRow]
    dropped: int
    staged: dict[str, Path]


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scope",
        action="append",
        default=[],
        help="projects/ID or groups/ID as clients spell it; repeatable (default: everything)",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the bundle: .tar or .tar.gz"
    )


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a bundle written by export")


# Export.


# Called from the worker thread as files go by: (bytes done, bytes in all).
ByteProgress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    """The default: nobody is watching."""


async def export_bundle(
    settings: Settings, scopes: list[Scope], out: Path, progress: ByteProgress = _no_progress
) -> ExportResult:
    """Write the pages of `scopes` (all when empty), the files they list, and a manifest."""
    db = settings.cache.dir / DB_NAME
    if not db.is_file():
        raise BundleError(f"no cache in {settings.cache.dir} (cache.dir)")
    store = await Store.open(db)
    try:
        pages = await store.pages([s.key for s in scopes] if scopes else None)
        forwarded = await store.forwarded([s.key for s in scopes] if scopes else None)
        cached = {row.sha256: row for row in await store.blobs()}
    finally:
        await store.close()
    entries = []
    listed: set[str] = set()
    for row in pages:
        data = json.loads(row.model)
        model = decode_page(data)
        if isinstance(model, Project):
            listed |= {d.sha256 for d in model.files if d.sha256 is not None}
        entries.append({"key": row.key, "fetched_at": row.fetched_at, "model": data})
    blobs = [cached[sha] for sha in sorted(listed) if sha in cached]
    links = [r for r in forwarded if r.sha256 in cached]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scopes": [s.key for s in scopes],
        "blobs": [{"sha256": b.sha256, "size": b.size, "filename": b.filename} for b in blobs],
        "pages": entries,
        "forwarded": [
            {"scope": r.scope, "sha256": r.sha256, "filename": r.filename, "url": r.url}
            for r in links
        ],
    }
    await asyncio.to_thread(
        _write, out, manifest, blobs, LocalBlobStore(settings.cache.dir), progress
    )
    return ExportResult(
        len(entries),
        len(blobs),
        sum(b.size for b in blobs),
        len(listed - cached.keys()),
        len(links),
    )


class _HashingReader:
    """A file read for tarfile, hashed on the way, so a damaged cached copy is not exported."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.digest.update(data)
        return data


def _write(
    out: Path,
    manifest: Mapping[str, object],
    blobs: list[BlobRow],
    store: LocalBlobStore,
    progress: ByteProgress,
) -> None:
    partial = out.with_name(out.name + ".part")
    now = int(time.time())
    total = sum(b.size for b in blobs)
    done = 0
    try:
        with (
            tarfile.open(partial, "w:gz", format=tarfile.PAX_FORMAT)
            if out.name.endswith((".tar.gz", ".tgz"))
            else tarfile.open(partial, "w", format=tarfile.PAX_FORMAT)
        ) as tar:
            body = json.dumps(manifest, separators=(",", ":")).encode()
            # First, so an importer knows what to expect before the first file arrives.
            tar.addfile(_member(MANIFEST, len(body), now), io.BytesIO(body))
            for blob in blobs:
                with store.path(blob.sha256).open("rb") as file:
                    reader = _HashingReader(file)
                    tar.addfile(_member(f"blobs/{blob.sha256}", blob.size, now), reader)
                if reader.digest.hexdigest() != blob.sha256:
                    raise BundleError(
                        f"the cached copy of {blob.filename} is damaged (sha256 mismatch); "
                        "remove it from the cache and warm again"
                    )
                done += blob.size
                progress(done, total)
        partial.replace(out)
    except OSError as e:
        raise BundleError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        partial.unlink(missing_ok=True)


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    return info


# Import.


async def import_bundle(
    settings: Settings, path: Path, progress: ByteProgress = _no_progress
) -> ImportResult:
    """Verify the whole bundle in a staging area, then merge it; on any refusal change nothing."""
    cache_dir = settings.cache.dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Beside blobs/ (so commit is a rename), outside tmp/ (which start-up empties of files).
    staging = cache_dir / f"import-{uuid.uuid4().hex}"
    try:
        manifest, staged = await asyncio.to_thread(_stage, path, staging, progress)
        plan = _plan(manifest, staged, settings)
        return await _commit(cache_dir, plan)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


async def _commit(cache_dir: Path, plan: _Plan) -> ImportResult:
    blobs = LocalBlobStore(cache_dir)
    blobs.ensure_dirs()
    store = await Store.open(cache_dir / DB_NAME)
    moved: list[str] = []
    try:
        known = {row.sha256: row.size for row in await store.blobs()}
        new = [
            b
            for b in plan.blobs
            if known.get(b.sha256) != b.size or blobs.size_of(b.sha256) != b.size
        ]
        try:
            for blob in new:
                staged = plan.staged[blob.sha256]
                await asyncio.to_thread(fsync_file, staged)
                blobs.commit(staged, blob.sha256)
                moved.append(blob.sha256)
            await store.merge(new, plan.pages, plan.forwarded)
        except BaseException:
            # Rows and files go in together or not at all.
            for sha in moved:
                blobs.remove(sha)
            raise
    finally:
        await store.close()
    return ImportResult(
        added=len(new),
        added_size=sum(b.size for b in new),
        present=len(plan.blobs) - len(new),
        pages=len(plan.pages),
        forwarded=len(plan.forwarded),
        dropped=plan.dropped,
    )


def _stage(
    path: Path, staging: Path, progress: ByteProgress
) -> tuple[dict[str, object], dict[str, Path]]:
    """Read every member, refusing anything but the manifest and files that verify."""
    try:
        tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as e:
        raise BundleError(f"{path} is not a readable tar bundle ({e})") from None
    staging.mkdir(parents=True)
    manifest: dict[str, object] | None = None
    expected: dict[str, tuple[int, str]] = {}
    staged: dict[str, Path] = {}
    total = done = 0
    with tar:
        try:
            for index, member in enumerate(tar):
                _check_member(member, staging)
                if index == 0:
                    if member.name != MANIFEST:
                        raise BundleError(
                            f"{MANIFEST} is not first: not a gitlab-pypi-proxy bundle"
                        )
                    manifest = _read_manifest(tar, member)
                    expected = _expected_blobs(manifest)
                    total = sum(size for size, _ in expected.values())
                    progress(done, total)
                    continue
                match = _BLOB_MEMBER.match(member.name)
                if match is None:
                    raise BundleError(f"unexpected member {member.name!r}")
                sha256 = match.group(1)
                if sha256 in staged:
                    raise BundleError(f"{member.name} appears twice")
                if sha256 not in expected:
                    raise BundleError(f"{member.name} is not listed in the manifest")
                size, filename = expected[sha256]
                if member.size != size:
                    raise BundleError(f"{filename}: {member.size} bytes, the manifest says {size}")
                staged[sha256] = _extract_verified(tar, member, staging, filename)
                done += size
                progress(done, total)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise BundleError(f"{path} is truncated or damaged ({e})") from None
    if manifest is None:
        raise BundleError(f"{path} is empty: not a gitlab-pypi-proxy bundle")
    missing = [expected[sha][1] for sha in expected if sha not in staged]
    if missing:
        raise BundleError(
            f"{len(missing)} files listed in the manifest are not in the bundle "
            f"(truncated?), e.g. {missing[0]}"
        )
    return manifest, staged


def _check_member(member: tarfile.TarInfo, staging: Path) -> None:
    """Only regular files with plain relative names: no links, devices or traversal."""
    name = member.name
    if not member.isreg():
        kinds = {
            tarfile.SYMTYPE: "symbolic link",
            tarfile.LNKTYPE: "hard link",
            tarfile.DIRTYPE: "directory",
            tarfile.CHRTYPE: "character device",
            tarfile.BLKTYPE: "block device",
            tarfile.FIFOTYPE: "fifo",
        }
        kind = kinds.get(member.type, "special file")
        raise BundleError(f"{name!r} is a {kind}; a bundle holds regular files only")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or not parts:
        raise BundleError(f"{name!r} points outside the bundle (path traversal)")
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        # Python's own checks as well (3.11.4+), in case ours ever miss a case.
        try:
            data_filter(member, str(staging))
        except tarfile.FilterError as e:
            raise BundleError(f"{name!r} is refused: {e}") from None


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict[str, object]:
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    file = tar.extractfile(member)
    assert file is not None  # a regular file, checked above
    try:
        data = json.loads(file.read())
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(data, dict) or not _has(data, _MANIFEST_KEYS):
        raise BundleError(f"{MANIFEST} does not have the keys of a bundle manifest")
    version = data["version"]
    if data["format"] != FORMAT or type(version) is not int or not 1 <= version <= VERSION:
        raise BundleError(f"not a version {VERSION} {FORMAT}")
    return data


def _expected_blobs(manifest: Mapping[str, object]) -> dict[str, tuple[int, str]]:
    entries = manifest["blobs"]
    if not isinstance(entries, list):
        raise BundleError("manifest: blobs must be a list")
    expected: dict[str, tuple[int, str]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not _has(entry, ("sha256", "size", "filename")):
            raise BundleError("manifest: a blob entry needs sha256, size and filename")
        sha256, size, filename = entry["sha256"], entry["size"], entry["filename"]
        if not isinstance(sha256, str) or not is_sha256(sha256):
            raise BundleError(f"manifest: {sha256!r} is not a sha256")
        if type(size) is not int or size < 0:
            raise BundleError(f"manifest: size of {sha256} is not a byte count")
        if not isinstance(filename, str) or not is_distribution_filename(filename):
            raise BundleError(f"manifest: {filename!r} is not a distribution filename")
        if sha256 in expected:
            raise BundleError(f"manifest: {sha256} is listed twice")
        expected[sha256] = (size, filename)
    return expected


def _extract_verified(
    tar: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, filename: str
) -> Path:
    """Copy a member into staging, hashing it; a file that does not verify stops the import."""
    source = tar.extractfile(member)
    assert source is not None  # a regular file, checked above
    target = staging / PurePosixPath(member.name).name
    digest = hashlib.sha256()
    with target.open("xb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != PurePosixPath(member.name).name:
        raise BundleError(f"{filename} is damaged: its sha256 does not match; nothing was imported")
    return target


def _plan(manifest: Mapping[str, object], staged: dict[str, Path], settings: Settings) -> _Plan:
    """Every row of the bundle, validated as untrusted input."""
    expected = _expected_blobs(manifest)
    blobs = [BlobRow(sha, size, name, 0.0) for sha, (size, name) in expected.items()]
    pages = [_page_row(entry) for entry in _list(manifest, "pages")]
    up = settings.upstream
    forwarded: list[ForwardedRow] = []
    dropped = 0
    for entry in _list(manifest, "forwarded"):
        row = _forwarded_row(entry)
        # Only a source this side's operator listed could ever be fetched: keep no others.
        if is_listed_host(yarl.URL(row.url, encoded=True), up.forward_hosts):
            forwarded.append(row)
        else:
            dropped += 1
    return _Plan(blobs, pages, forwarded, dropped, staged)


def _has(entry: Mapping[str, object], keys: tuple[str, ...]) -> bool:
    """Whether `entry` has every one of `keys`; others, from a later release, are ignored."""
    return all(key in entry for key in keys)


def _list(manifest: Mapping[str, object], key: str) -> list[object]:
    value = manifest.get(key, [])
    if not isinstance(value, list):
        raise BundleError(f"manifest: {key} must be a list")
    return value


def _page_row(entry: object) -> PageRow:
    if not isinstance(entry, dict) or not _has(entry, ("key", "fetched_at", "model")):
        raise BundleError("manifest: a page entry needs key, fetched_at and model")
    key, fetched_at = entry["key"], entry["fetched_at"]
    if not isinstance(key, str):
        raise BundleError("manifest: a page key must be a string")
    page_key = PageKey.decode(key)
    _scope(page_key.view, f"page {key!r}")
    name = page_key.name
    if name and not (is_valid_name(name) and normalize(name) == name):
        raise BundleError(f"manifest: page {key!r} does not name a normalized project")
    if not isinstance(fetched_at, int | float) or isinstance(fetched_at, bool):
        raise BundleError(f"manifest: page {key!r} has no fetch time")
    if not math.isfinite(fetched_at):
        raise BundleError(f"manifest: page {key!r} has no fetch time")
    try:
        model = decode_page(entry["model"])
    except ValueError as e:
        raise BundleError(f"manifest: page {key!r} is not a valid page model ({e})") from None
    if isinstance(model, Index) != page_key.is_index:
        raise BundleError(f"manifest: page {key!r} holds the wrong kind of page")
    # A time from the future would win every later merge; the bundle cannot know better than now.
    fetched = min(float(fetched_at), time.time())
    # File URLs in models are never fetched: files come from GitLab by scope, or from a
    # forwarded source on forward_hosts. Stored re-serialized from the validated model.
    return PageRow(page_key.encode(), json.dumps(encode_page(model)), fetched)


def _forwarded_row(entry: object) -> ForwardedRow:
    keys = ("scope", "sha256", "filename", "url")
    if not isinstance(entry, dict) or not _has(entry, keys):
        raise BundleError("manifest: a forwarded entry needs " + ", ".join(keys))
    scope, sha256, filename, url = (entry[k] for k in ("scope", "sha256", "filename", "url"))
    if not isinstance(scope, str):
        raise BundleError("manifest: a forwarded entry's scope must be a string")
    _scope(scope, "a forwarded entry")
    if not isinstance(sha256, str) or not is_sha256(sha256):
        raise BundleError(f"manifest: {sha256!r} is not a sha256")
    if not isinstance(filename, str) or not is_distribution_filename(filename):
        raise BundleError(f"manifest: {filename!r} is not a distribution filename")
    if not isinstance(url, str) or not is_file_url(url):
        raise BundleError(f"manifest: {url!r} is not an http(s) file URL")
    return ForwardedRow(scope, sha256, filename, url)


def _scope(scope_key: str, what: str) -> Scope:
    kind, _, raw_id = scope_key.partition("/")
    try:
        scope = Scope.parse(kind, raw_id)
    except ProxyError:
        raise BundleError(f"manifest: {what} has no valid scope") from None
    if scope.key != scope_key:
        raise BundleError(f"manifest: {what} has no valid scope")
    return scope


# Command line.


@contextlib.contextmanager
def _progress(what: str) -> Iterator[ByteProgress]:
    """A progress bar on stderr, as `warm` and `verify` show, fed with bytes done of all."""
    with Progress(
        TextColumn(what),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def export_main(settings: Settings, args: argparse.Namespace) -> int:
    try:
        scopes = [Scope.from_text(text) for text in args.scope]
    except ProxyError as e:
        print(f"gitlab-pypi-proxy: --scope: {e.message}", file=sys.stderr)
        return 2
    try:
        with _progress("exporting") as progress:
            result = asyncio.run(export_bundle(settings, scopes, args.out, progress))
    except BundleError as e:
        print(f"gitlab-pypi-proxy: export failed: {e}", file=sys.stderr)
        return 1
    print(
        f"exported {result.pages} pages and {result.blobs} files ({decimal(result.size)}),"
        f" {result.forwarded} forwarded sources, to {args.out}"
    )
    if result.missing:
        print(
            f"note: {result.missing} files listed on these pages are not in the cache "
            "(never warmed); the offline side cannot serve them",
            file=sys.stderr,
        )
    return 0


def import_main(settings: Settings, args: argparse.Namespace) -> int:
    try:
        with _progress("verifying and importing") as progress:
            result = asyncio.run(import_bundle(settings, args.bundle, progress))
    except BundleError as e:
        print(f"gitlab-pypi-proxy: import refused: {e}; the cache is unchanged", file=sys.stderr)
        return 1
    print(
        f"imported {args.bundle} into {settings.cache.dir}: {result.added} files added"
        f" ({decimal(result.added_size)}), {result.present} already there,"
        f" {result.pages} pages, {result.forwarded} forwarded sources"
    )
    if result.dropped:
        print(
            f"note: {result.dropped} forwarded sources are on hosts not in "
            "upstream.forward_hosts here, so were left out (serving offline does not need them)",
            file=sys.stderr,
        )
    return 0
