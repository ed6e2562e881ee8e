"""Issue 16 and issue 11 item 7: core metadata read by HTTP Range, and broken wheels never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import random
import sqlite3
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from proxy import keys
from proxy.remotezip import TAIL_BYTES
from proxy.store import SCHEMA_VERSION, Store
from tests.support.fake_gitlab import FakeFile, FakeGitLab, FakePublicIndex
from tests.support.harness import BIN, TOKEN, ProxyFactory, RunningProxy, clean_env, run
from tests.support.http import PROJECT, fetch, fetch_as_written, page, project_file_url
from tests.support.pep691 import advertised
from tests.support.wheels import make_wheel, wheel_metadata

NAME = "corp-big"
METADATA = b"Metadata-Version: 2.1\nName: corp-big\nVersion: 1.0.0\nRequires-Dist: six>=1\n"


class _Unseekable(io.RawIOBase):
    """An output zipfile cannot seek back in, so it writes data descriptors after each member."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self.buffer.write(data)


@contextmanager
def _zip64_everywhere() -> Iterator[None]:
    """zipfile writes zip64 sizes, offsets and end records past these limits (tiny here)."""
    saved = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 1, 1  # type: ignore[misc]
    try:
        yield
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = saved  # type: ignore[misc]


def build_wheel(
    *,
    version: str = "1.0.0",
    metadata: bytes = METADATA,
    compression: int = zipfile.ZIP_DEFLATED,
    metadata_first: bool = False,
    padding: int = 0,
    members: int = 0,
    comment: bytes = b"",
    zip64: bool = False,
    data_descriptors: bool = False,
    extra_member: str = "",
) -> tuple[str, bytes]:
    """A wheel-shaped zip: METADATA first or last, padded with incompressible bytes."""
    dist_info = f"corp_big-{version}.dist-info"
    entries = [(f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\n")]
    body = [(f"corp_big/pad{n:05d}_{'x' * 60}.py", b"") for n in range(members)]
    if padding:
        body.append(("corp_big/payload.bin", random.Random(version).randbytes(padding)))
    if extra_member:
        body.append((extra_member, b"print('hi')\n"))
    meta = [(f"{dist_info}/METADATA", metadata)]
    ordered = meta + body + entries if metadata_first else body + meta + entries
    sink = _Unseekable() if data_descriptors else io.BytesIO()
    with (
        _zip64_everywhere() if zip64 else contextlib.nullcontext(),
        zipfile.ZipFile(sink, "w") as archive,
    ):
        for path, data in ordered:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression if path.endswith("METADATA") else 0
            archive.writestr(info, data)
        archive.comment = comment
    content = sink.buffer.getvalue() if isinstance(sink, _Unseekable) else sink.getvalue()
    return f"corp_big-{version}-py3-none-any.whl", content


def publish(gitlab: FakeGitLab, filename: str, content: bytes, version: str = "1.0.0") -> FakeFile:
    return gitlab.add_file(42, NAME, version, filename, content)


def file_requests(gitlab: FakeGitLab) -> list[str | None]:
    """The Range header of each file request upstream (None: the whole file was asked for)."""
    return [r.headers.get("Range") for r in gitlab.requests if r.kind in ("file", "object")]


async def metadata_of(proxy: RunningProxy, wheel: FakeFile) -> tuple[int, bytes]:
    got = await fetch(project_file_url(proxy, wheel.sha256, wheel.filename) + ".metadata")
    return got.status, got.body


async def advertised_now(proxy: RunningProxy, wheel: FakeFile) -> object:
    return (await page(proxy, NAME)).json()["files"][0].get("core-metadata")


# --- 16.1: a few kilobytes by Range, through GitLab or its object storage ---


@pytest.mark.parametrize("object_storage", [False, True])
async def test_cold_metadata_of_a_big_wheel_reads_kilobytes_not_the_wheel(
    gitlab: FakeGitLab, proxy: RunningProxy, object_storage: bool
) -> None:
    gitlab.object_storage = object_storage
    # METADATA at the start and a central directory bigger than the tail: all three reads.
    filename, content = build_wheel(metadata_first=True, padding=4_000_000, members=1500)
    wheel = publish(gitlab, filename, content)
    assert await metadata_of(proxy, wheel) == (200, METADATA)
    ranges = file_requests(gitlab)
    assert len(ranges) == (6 if object_storage else 3), "tail, directory, METADATA"
    assert all(r is not None and r.startswith("bytes=") for r in ranges)
    assert gitlab.file_bytes_sent < 300_000 < len(content)
    if object_storage:
        # The signed URL carries its own authorization; GitLab's token never goes there.
        storage = [r for r in gitlab.requests if r.kind == "object"]
        assert storage and not any("Authorization" in r.headers for r in storage)
    # Served as it was read: once known, the page names its hash.
    expected = f"sha256={hashlib.sha256(METADATA).hexdigest()}"
    assert advertised(*(await _both(proxy)), filename)[1] == expected


async def _both(proxy: RunningProxy) -> tuple[object, bytes]:
    return (await page(proxy, NAME)).json(), (await page(proxy, NAME, "text/html")).body


@pytest.mark.parametrize(
    "shape",
    [
        {"compression": zipfile.ZIP_STORED},
        {"compression": zipfile.ZIP_DEFLATED},
        {"compression": zipfile.ZIP_BZIP2},
        {"zip64": True},
        {"zip64": True, "metadata_first": True, "padding": 200_000},
        {"data_descriptors": True},
        {"data_descriptors": True, "metadata_first": True, "padding": 200_000},
        # The longest comment a zip can end with: the end record is 64 KiB from the end.
        {"comment": b"c" * 65535},
        {"comment": b"c" * 65535, "metadata_first": True, "padding": 200_000},
    ],
    ids=lambda shape: "-".join(f"{k}={str(v)[:8]}" for k, v in shape.items()),
)
async def test_every_zip_shape_wheels_use_is_read_by_range(
    gitlab: FakeGitLab, proxy: RunningProxy, shape: dict[str, object]
) -> None:
    filename, content = build_wheel(**shape)  # type: ignore[arg-type]
    if shape.get("zip64"):
        assert b"PK\x06\x06" in content, "no zip64 end record was written"
    if shape.get("data_descriptors"):
        assert struct.unpack_from("<H", content, 6)[0] & 0x08, "no data descriptor flag"
    wheel = publish(gitlab, filename, content)
    assert await metadata_of(proxy, wheel) == (200, METADATA)
    assert all(r is not None for r in file_requests(gitlab))
    assert len(file_requests(gitlab)) <= 3


async def test_a_small_wheel_read_whole_by_the_tail_request_is_cached_verified(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    wheel = gitlab.add_wheel(42, NAME, "1.0.0")
    assert len(wheel.content) < TAIL_BYTES
    assert await metadata_of(proxy, wheel) == (200, wheel_metadata(wheel.content))
    got = await fetch(project_file_url(proxy, wheel.sha256, wheel.filename))
    assert (got.status, got.headers["X-Cache"], got.body) == (200, "HIT", wheel.content)
    # One request for both, and nothing provisional: those bytes verified.
    assert file_requests(gitlab) == [f"bytes=-{TAIL_BYTES}"]
    assert [r.provisional for r in await proxy.app[keys.STORE].core_metadata()] == [False]


async def test_one_range_read_for_many_clients(gitlab: FakeGitLab, proxy: RunningProxy) -> None:
    filename, content = build_wheel(metadata_first=True, padding=1_000_000)
    wheel = publish(gitlab, filename, content)
    answers = await asyncio.gather(*(metadata_of(proxy, wheel) for _ in range(20)))
    assert answers == [(200, METADATA)] * 20
    assert len(file_requests(gitlab)) == 2, "tail and METADATA, once for all twenty"


# --- 16.4: hostile zips are refused with a reason, never buffered whole ---


def _central_entry(content: bytes, member: str) -> int:
    """Offset of `member`'s central directory entry."""
    at = content.find(b"PK\x01\x02")
    while at != -1:
        name_length = struct.unpack_from("<H", content, at + 28)[0]
        if content[at + 46 : at + 46 + name_length] == member.encode():
            return at
        at = content.find(b"PK\x01\x02", at + 4)
    raise ValueError(member)


def _patched(content: bytes, offset: int, value: int) -> bytes:
    return content[:offset] + struct.pack("<I", value) + content[offset + 4 :]


def _metadata_entry(content: bytes) -> int:
    return _central_entry(content, "corp_big-1.0.0.dist-info/METADATA")


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        # A METADATA that claims 1 GiB (deflate makes that from a few MB): not read at all.
        (lambda c: _patched(c, _metadata_entry(c) + 24, 1 << 30), "larger than it may be"),
        # Its local header past the end of the file.
        (lambda c: _patched(c, _metadata_entry(c) + 42, len(c) + 10_000), "outside the file"),
        # A central directory of 1 GiB claimed by the end record.
        (lambda c: _patched(c, c.rfind(b"PK\x05\x06") + 12, 1 << 30), "not a readable zip"),
    ],
    ids=["huge-metadata", "member-outside", "huge-directory"],
)
async def test_hostile_directories_are_a_404_with_a_reason(
    gitlab: FakeGitLab, proxy: RunningProxy, hostile: object, reason: str
) -> None:
    filename, content = build_wheel(metadata_first=True, padding=2_000_000)
    wheel = publish(gitlab, filename, hostile(content))  # type: ignore[operator]
    status, body = await metadata_of(proxy, wheel)
    assert status == 404
    assert reason in json.loads(body)["message"]
    assert gitlab.file_bytes_sent < 200_000
    # No usable metadata: the page stops offering it.
    assert await advertised_now(proxy, wheel) is None


# --- Issue 11 item 7: broken wheels are "no usable metadata", never a 500 ---


def _bad_utf8_name() -> tuple[str, bytes]:
    filename, content = build_wheel(extra_member="corp_big/caf\u00e9.py")
    # Flagged UTF-8 by zipfile; the same length of bytes that are not UTF-8 at all.
    return filename, content.replace("caf\u00e9".encode(), b"caf\xff\xfe")


def _corrupt_bzip2() -> tuple[str, bytes]:
    filename, content = build_wheel(compression=zipfile.ZIP_BZIP2)
    entry = _metadata_entry(content)
    header = struct.unpack_from("<I", content, entry + 42)[0]
    name_length, extra_length = struct.unpack_from("<HH", content, header + 26)
    data = header + 30 + name_length + extra_length
    # The stream's own magic gone: bzip2 says "Invalid data stream" (an OSError).
    return filename, content[:data] + b"XXXX" + content[data + 4 :]


@pytest.mark.parametrize("broken", [_bad_utf8_name, _corrupt_bzip2], ids=["utf8", "bzip2"])
@pytest.mark.parametrize("cached", [False, True], ids=["by-range", "cached-wheel"])
async def test_a_broken_wheel_is_no_usable_metadata_not_a_500(
    gitlab: FakeGitLab, proxy: RunningProxy, broken: object, cached: bool
) -> None:
    filename, content = broken()  # type: ignore[operator]
    wheel = publish(gitlab, filename, content)
    if cached:
        got = await fetch(project_file_url(proxy, wheel.sha256, wheel.filename))
        assert (got.status, got.body) == (200, content)
        await _settled(proxy)
    for _ in range(2):
        status, body = await metadata_of(proxy, wheel)
        assert status == 404
        assert "no core metadata" in json.loads(body)["message"]
    assert await advertised_now(proxy, wheel) is None


async def _settled(proxy: RunningProxy) -> None:
    """Wait for the metadata reads a verified download starts in the background."""
    await proxy.app[keys.METADATA].close()


# --- 16.2: an upstream that ignores Range ---


async def test_an_upstream_that_ignores_range_gets_the_full_verified_download(
    gitlab: FakeGitLab, proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    gitlab.ignore_range = True
    first = publish(gitlab, *build_wheel(version="1.0.0", padding=1_000_000), version="1.0.0")
    second = publish(gitlab, *build_wheel(version="2.0.0", padding=1_000_000), version="2.0.0")
    with caplog.at_level(logging.WARNING):
        assert (await metadata_of(proxy, first))[0] == 200
        assert (await metadata_of(proxy, second))[0] == 200
    # One Range request, answered 200 and closed unread; then whole downloads only.
    assert file_requests(gitlab) == [f"bytes=-{TAIL_BYTES}", None, None]
    assert len([r for r in caplog.records if "whole file" in r.getMessage()]) == 1
    # Both verified and cached as today.
    assert proxy.app[keys.FILES].hit(first.sha256, first.filename) is not None
    assert proxy.app[keys.FILES].hit(second.sha256, second.filename) is not None


async def test_a_whole_small_file_for_a_range_is_a_fair_answer(
    gitlab: FakeGitLab, proxy: RunningProxy
) -> None:
    gitlab.ignore_range = True
    small = gitlab.add_wheel(42, NAME, "1.0.0")
    assert await metadata_of(proxy, small) == (200, wheel_metadata(small.content))
    # All of it is no more than the tail asked for: Range is not known not to work.
    gitlab.ignore_range = False
    big = publish(gitlab, *build_wheel(version="2.0.0", padding=1_000_000), version="2.0.0")
    assert (await metadata_of(proxy, big))[0] == 200
    assert file_requests(gitlab) == [f"bytes=-{TAIL_BYTES}", f"bytes=-{TAIL_BYTES}"]


# --- 16.3: provisional metadata, checked once the wheel verifies ---


async def test_range_metadata_that_the_verified_wheel_contradicts_is_replaced(
    gitlab: FakeGitLab, proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = gitlab.add_wheel(42, NAME, "1.0.0", requires=["six>=1"])
    honest = wheel.content
    _, liar = make_wheel(NAME, "1.0.0", requires=["evil>=6"])
    lying_metadata = wheel_metadata(liar)
    # Upstream serves other bytes under the wheel's name while the metadata is read by Range.
    wheel.content = liar
    assert await metadata_of(proxy, wheel) == (200, lying_metadata)
    lying_hash = hashlib.sha256(lying_metadata).hexdigest()
    assert await advertised_now(proxy, wheel) == {"sha256": lying_hash}

    wheel.content = honest
    with caplog.at_level(logging.WARNING):
        got = await fetch(project_file_url(proxy, wheel.sha256, wheel.filename))
        assert (got.status, got.body) == (200, honest)
        await _settled(proxy)
    true_metadata = wheel_metadata(honest)
    assert await metadata_of(proxy, wheel) == (200, true_metadata)
    assert await advertised_now(proxy, wheel) == {
        "sha256": hashlib.sha256(true_metadata).hexdigest()
    }
    assert any("differs from the verified wheel" in r.getMessage() for r in caplog.records)
    metrics = (await fetch(f"{proxy.url}/-/metrics")).body.decode()
    assert "gitlab_pypi_proxy_core_metadata_replaced_total 1.0" in metrics


async def test_range_metadata_the_wheel_confirms_is_kept_and_no_longer_provisional(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await make_proxy()
    wheel = gitlab.add_wheel(42, NAME, "1.0.0", payload_size=200_000)
    assert (await metadata_of(proxy, wheel))[0] == 200
    store = proxy.app[keys.STORE]
    assert [row.provisional for row in await store.core_metadata()] == [True]
    assert (await fetch(project_file_url(proxy, wheel.sha256, wheel.filename))).status == 200
    await _settled(proxy)
    assert [row.provisional for row in await store.core_metadata()] == [False]
    metrics = (await fetch(f"{proxy.url}/-/metrics")).body.decode()
    assert "gitlab_pypi_proxy_core_metadata_replaced_total 0.0" in metrics


async def test_a_cache_written_by_schema_1_opens_and_keeps_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    with sqlite3.connect(path) as db:
        # The core_metadata table as release 1 wrote it.
        db.executescript(
            "CREATE TABLE core_metadata (wheel_sha256 TEXT PRIMARY KEY, metadata_sha256 TEXT,"
            " problem TEXT); INSERT INTO core_metadata VALUES ('a', 'b', NULL);"
            " PRAGMA user_version=1;"
        )
    store = await Store.open(path)
    try:
        rows = await store.core_metadata()
        assert [(r.wheel_sha256, r.metadata_sha256, r.provisional) for r in rows] == [
            ("a", "b", False)
        ]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


# --- 16.4: offline, only cached metadata ---


async def test_offline_serves_only_cached_metadata(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    known = gitlab.add_wheel(42, NAME, "1.0.0")
    other = gitlab.add_wheel(42, NAME, "2.0.0")
    online = await make_proxy()
    assert (await page(online, NAME)).status == 200
    assert (await metadata_of(online, known))[0] == 200
    await online.stop()
    before = len(gitlab.requests)
    offline = await make_proxy(cache_dir=tmp_path / "cache", cache={"offline": True})
    assert await metadata_of(offline, known) == (200, wheel_metadata(known.content))
    status, body = await metadata_of(offline, other)
    assert status == 404
    assert b"offline" in body
    assert len(gitlab.requests) == before


# --- Issue 11 item 2: a cache with no room still serves .metadata ---


async def test_metadata_is_served_from_memory_when_the_cache_cannot_store_it(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    # A deploy token cannot ask the Packages API: a size is known only once a file is cached.
    gitlab.deploy_tokens.add(TOKEN)
    wheel = gitlab.add_wheel(42, NAME, "1.0.0", payload_size=500_000)
    tmp = tmp_path / "cache" / "tmp"
    # Immutable: even root cannot create a file in it (EPERM), the way a read-only mount acts.
    if subprocess.run(["chattr", "+i", str(tmp)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        for _ in range(2):
            got = await fetch(project_file_url(proxy, wheel.sha256, wheel.filename) + ".metadata")
            assert (got.status, got.body) == (200, wheel_metadata(wheel.content))
        assert gitlab.file_bytes_sent < 100_000
        # An upstream without Range: the wheel verified in memory, still nothing stored.
        gitlab.ignore_range = True
        second = gitlab.add_wheel(42, NAME, "2.0.0", payload_size=500_000)
        got = await fetch(project_file_url(proxy, second.sha256, second.filename) + ".metadata")
        assert (got.status, got.body) == (200, wheel_metadata(second.content))
        # A wheel of unknown size might not fit in memory: not offered while this lasts.
        third = gitlab.add_wheel(42, NAME, "3.0.0")
        await proxy.app[keys.PAGES].invalidate(NAME)  # the page as GitLab lists it now
        json_page, html_page = await _both(proxy)
        assert advertised(json_page, html_page, third.filename) == (None, None)
        assert advertised(json_page, html_page, second.filename)[1] == (
            f"sha256={hashlib.sha256(wheel_metadata(second.content)).hexdigest()}"
        )
    finally:
        subprocess.run(["chattr", "-i", str(tmp)], check=True)
    assert not [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]


# --- 16.5: a public index's own metadata file ---


async def test_a_forwarded_wheel_uses_the_public_indexs_metadata_file(
    gitlab: FakeGitLab, public: FakePublicIndex, make_proxy: ProxyFactory
) -> None:
    wheel = public.add_wheel("tiny-json", "1.0.0", payload_size=500_000)
    host = public.url.removeprefix("http://")
    proxy = await make_proxy(upstream={"forwarding": "cache", "forward_hosts": (host,)})
    assert (await page(proxy, "tiny-json")).status == 200
    got = await fetch(project_file_url(proxy, wheel.sha256, wheel.filename) + ".metadata")
    assert (got.status, got.body) == (200, wheel_metadata(wheel.content))
    assert [r.path.rsplit("/", 1)[1] for r in public.requests if r.kind == "file"] == [
        wheel.filename + ".metadata"
    ]
    assert public.file_bytes_sent == len(wheel_metadata(wheel.content))


# --- Real clients, cold, with upstream bytes counted ---


def _publish_big_tree(gitlab: FakeGitLab) -> int:
    """corp-big in three versions of 2 MB (incompressible) and a small dependency; total bytes."""
    total = 0
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        wheel = gitlab.add_wheel(
            42, NAME, version, requires=["corp-dep>=1"], payload_size=2_000_000
        )
        total += len(wheel.content)
    total += len(gitlab.add_wheel(42, "corp-dep", "1.0.0").content)
    return total


async def test_uv_resolves_big_wheels_through_the_cold_proxy_reading_kilobytes(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    total = _publish_big_tree(gitlab)
    (tmp_path / "requirements.in").write_text(f"{NAME}\n")
    result = await run(
        [
            str(BIN / "uv"),
            "pip",
            "compile",
            "--no-config",
            "--index-url",
            proxy.index_url("projects/42"),
            "--cache-dir",
            str(tmp_path / "uv-cache"),
            "--python",
            sys.executable,
            str(tmp_path / "requirements.in"),
        ]
    )
    result.check()
    assert f"{NAME}==1.2.0" in result.stdout
    assert "corp-dep==1.0.0" in result.stdout
    assert gitlab.file_bytes_sent < 200_000 < total
    assert None not in file_requests(gitlab), "a whole wheel was downloaded to resolve"


async def test_pip_dry_run_resolves_big_wheels_through_the_cold_proxy_reading_kilobytes(
    gitlab: FakeGitLab, proxy: RunningProxy, tmp_path: Path
) -> None:
    total = _publish_big_tree(gitlab)
    report = tmp_path / "report.json"
    result = await run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--no-cache-dir",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            "--index-url",
            proxy.index_url("projects/42"),
            NAME,
        ],
        env=clean_env(),
    )
    result.check()
    resolved = {i["metadata"]["name"]: i["metadata"]["version"] for i in _installs(report)}
    assert resolved == {NAME: "1.2.0", "corp-dep": "1.0.0"}
    assert gitlab.file_bytes_sent < 200_000 < total
    assert None not in file_requests(gitlab)


def _installs(report: Path) -> list[dict[str, dict[str, str]]]:
    data: dict[str, list[dict[str, dict[str, str]]]] = json.loads(report.read_text())
    return data["install"]


async def test_metadata_of_a_wheel_another_process_evicted_is_fetched_again(
    gitlab: FakeGitLab, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """This process still believes in the wheel; its blob is gone (gc, or another worker)."""
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    # No memory copy: what is served must come from disk, where it is now missing.
    proxy = await make_proxy(cache={"memory_size": 0})
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}.metadata"
    status, _, first = await fetch_as_written(url)
    assert status == 200
    for blob in (tmp_path / "cache" / "blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()
    status, _, again = await fetch_as_written(url)
    assert (status, again) == (200, first)
    assert gitlab.counts["file"] == 2


@pytest.mark.parametrize("suffix", ["", ".metadata"])
@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("value", ["bytes=abc", "bytes=5-2", "bytes=0-1,3-4", "items=0-1"])
async def test_malformed_range_is_a_4xx_on_files_and_metadata(
    gitlab: FakeGitLab, proxy: RunningProxy, suffix: str, cached: bool, value: str
) -> None:
    wheel = gitlab.add_wheel(42, "corp-util", "1.0.0")
    url = f"{proxy.url}{PROJECT}/files/{wheel.sha256}/{wheel.filename}"
    if cached:
        assert (await fetch_as_written(url))[0] == 200
    status, _, body = await fetch_as_written(url + suffix, {"Range": value})
    assert status == 416, body
    assert b"Range" in body
    # Nothing was lost: the file and its metadata are still whole for the next client.
    status, _, body = await fetch_as_written(url)
    assert (status, body) == (200, wheel.content)
    assert (await fetch_as_written(url + ".metadata"))[0] == 200
