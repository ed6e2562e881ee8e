"""The cache directory's blob store, through the BlobStore protocol: write, commit, serve."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.blobs import BlobMismatch, BlobStore, LocalBlobStore

DATA = b"0123456789" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


def local(root: Path, accel_redirect: str = "") -> BlobStore:
    blobs = LocalBlobStore(root, accel_redirect=accel_redirect)
    blobs.ensure_dirs()
    return blobs


async def store(blobs: BlobStore, data: bytes = DATA) -> None:
    writer = blobs.writer(hashlib.sha256(data).hexdigest())
    try:
        await writer.write(data[:10])
        await writer.write(data[10:])
        await writer.commit()
    finally:
        writer.abort()


async def test_a_committed_blob_is_stored_and_its_temp_file_gone(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    writer = blobs.writer(SHA)
    await writer.write(DATA)
    # Readers of the growing file read it before it is committed.
    assert writer.path.read_bytes() == DATA
    assert writer.verified()
    await writer.commit()
    writer.abort()
    assert blobs.size_of(SHA) == len(DATA)
    with blobs.open(SHA) as file:
        assert file.read() == DATA
    assert list(blobs.scan()) == [(SHA, len(DATA))]
    assert blobs.read_verified(SHA) == DATA
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_an_aborted_write_leaves_nothing(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    writer = blobs.writer(SHA)
    await writer.write(DATA[:100])
    writer.abort()
    assert blobs.size_of(SHA) is None
    assert list(blobs.scan()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_commit_refuses_bytes_that_do_not_hash_to_the_name(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    writer = blobs.writer(SHA)
    await writer.write(DATA + b"!")
    assert not writer.verified()
    with pytest.raises(BlobMismatch):
        await writer.commit()
    writer.abort()
    assert blobs.size_of(SHA) is None
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_a_live_writer_survives_temp_clean_up(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    writer = blobs.writer(SHA)
    assert blobs.clean_temp() == 0
    await writer.write(DATA)
    await writer.commit()
    writer.abort()
    assert blobs.size_of(SHA) == len(DATA)


async def test_read_verified_refuses_a_blob_that_changed(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    blobs.ensure_dirs()
    await store(blobs)
    blobs.path(SHA).write_bytes(b"not it")
    assert blobs.read_verified(SHA) is None


def serving(blobs: BlobStore, responses: list[web.StreamResponse]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = blobs.serve(SHA, {"X-Cache": "HIT"})
        if response is None:
            raise web.HTTPNotFound()
        responses.append(response)
        return response

    app = web.Application()
    app.router.add_get("/blob", handler)
    return app


async def test_serve_answers_a_range_and_holds_the_blob_until_sent(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    await store(blobs)
    responses: list[web.StreamResponse] = []
    async with TestClient(TestServer(serving(blobs, responses))) as client:
        resp = await client.get("/blob", headers={"Range": "bytes=10-19"})
        assert resp.status == 206
        assert await resp.read() == DATA[10:20]
        assert resp.headers["X-Cache"] == "HIT"
        whole = await client.get("/blob")
        assert await whole.read() == DATA
    # Sent: nothing holds it any more, so it may go.
    assert blobs.remove_unless_read(SHA)
    assert blobs.serve(SHA, {}) is None


async def test_a_blob_being_sent_is_not_removed(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    await store(blobs)
    response = blobs.serve(SHA, {})
    assert response is not None
    assert not blobs.remove_unless_read(SHA)
    assert blobs.size_of(SHA) == len(DATA)

    async def send_it(request: web.Request) -> web.StreamResponse:
        assert response is not None
        return response

    app = web.Application()
    app.router.add_get("/blob", send_it)
    async with TestClient(TestServer(app)) as client:
        assert await (await client.get("/blob")).read() == DATA
    assert blobs.remove_unless_read(SHA)
    assert blobs.size_of(SHA) is None


async def test_with_nginx_serve_names_the_blob_and_sends_no_body(tmp_path: Path) -> None:
    blobs = local(tmp_path, accel_redirect="/_blobs/")
    await store(blobs)
    assert blobs.serves_elsewhere
    response = blobs.serve(SHA, {})
    assert response is not None
    assert response.headers["X-Accel-Redirect"] == f"/_blobs/{SHA[:2]}/{SHA[2:4]}/{SHA}"
    assert blobs.path(SHA) == tmp_path / "blobs" / SHA[:2] / SHA[2:4] / SHA


async def test_named_locks_exclude_each_other(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    held = blobs.try_lock(SHA)
    assert held is not None
    assert blobs.try_lock(SHA) is None
    assert blobs.try_lock("evict") is not None
    held.release()
    (await blobs.lock(SHA)).release()


async def test_a_rewound_writer_commits_only_what_it_wrote_since(tmp_path: Path) -> None:
    blobs = local(tmp_path)
    writer = blobs.writer(SHA)
    await writer.write(b"x" * (len(DATA) + 500))
    writer.rewind()
    # What the first attempt wrote stays readable until overwritten.
    assert writer.path.read_bytes()[:10] == b"x" * 10
    await writer.write(DATA)
    assert writer.verified()
    await writer.commit()
    writer.abort()
    assert blobs.read_verified(SHA) == DATA
