"""Measure the proxy's memory while a big upload streams through it (a measurement, not a test).

    .venv/bin/python -m tests.measure_upload_rss [--size-mb 500]

The proxy runs as its own process (`python -m proxy serve`) in front of a sink standing in for
GitLab, which hashes what arrives. RSS and peak RSS (VmHWM) come from /proc/PID/status.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.cli_process import serve

CHUNK = 1024 * 1024
BOUNDARY = "measure-boundary-1234"


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class Sink:
    """GitLab's upload endpoint reduced to: read the body as it comes, hash it, answer 201."""

    def __init__(self) -> None:
        self.received = 0
        self.digest = hashlib.sha256()

    async def upload(self, request: web.Request) -> web.Response:
        self.received = 0
        self.digest = hashlib.sha256()
        async for chunk in request.content.iter_chunked(CHUNK):
            self.received += len(chunk)
            self.digest.update(chunk)
        return web.json_response({"message": "201 Created"}, status=201)


def body_parts(size: int) -> tuple[bytes, bytes, int]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig-pkg\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="version"\r\n\r\n1.0.0\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="content"; '
        'filename="big_pkg-1.0.0.tar.gz"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, tail, len(head) + size + len(tail)


async def body(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """The multipart body, made as it is sent: never more than one chunk in memory."""
    head, tail, _ = body_parts(size)
    digest.update(head)
    yield head
    block = bytes(range(256)) * (CHUNK // 256)
    sent = 0
    while sent < size:
        chunk = block[: min(CHUNK, size - sent)]
        # Vary each chunk, so nothing along the way could get away with deduplicating it.
        chunk = sent.to_bytes(8, "big") + chunk[8:]
        digest.update(chunk)
        sent += len(chunk)
        yield chunk
    digest.update(tail)
    yield tail


async def upload(url: str, size: int) -> tuple[int, str]:
    _, _, length = body_parts(size)
    digest = hashlib.sha256()
    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(length),
        "Authorization": "Basic c29tZW9uZTpnbHBhdC1tZWFzdXJl",
    }
    timeout = aiohttp.ClientTimeout(total=None)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(url, data=body(size, digest), headers=headers) as resp,
    ):
        await resp.read()
        return resp.status, digest.hexdigest()


async def measure(size_mb: int) -> None:
    sink = Sink()
    app = web.Application()
    app.router.add_post("/api/v4/projects/{id}/packages/pypi", sink.upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with tempfile.TemporaryDirectory() as tmp:
        async with await serve(Path(tmp), upstream_url=f"http://127.0.0.1:{port}") as served:
            url = f"{served.url}/api/v4/projects/42/packages/pypi"
            # One small upload first, so the code paths are loaded before the baseline.
            await upload(url, 64 * 1024)
            before = status_kib(served.pid)
            peak_seen = before["VmRSS"]
            task = asyncio.create_task(upload(url, size_mb * 1024 * 1024))
            started = time.monotonic()
            while not task.done():
                peak_seen = max(peak_seen, status_kib(served.pid)["VmRSS"])
                await asyncio.sleep(0.1)
            status, sent_digest = await task
            elapsed = time.monotonic() - started
            after = status_kib(served.pid)
    await runner.cleanup()
    intact = sink.digest.hexdigest() == sent_digest
    print(f"upload of {size_mb} MiB through the proxy: status {status}, {elapsed:.1f}s")
    print(f"bytes at the sink: {sink.received}, sha256 intact: {intact}")
    print(
        f"proxy VmRSS before: {before['VmRSS'] / 1024:.1f} MiB, after: {after['VmRSS'] / 1024:.1f}"
    )
    print(f"proxy VmRSS highest sampled during the upload: {peak_seen / 1024:.1f} MiB")
    print(
        f"proxy VmHWM (peak) before: {before['VmHWM'] / 1024:.1f} MiB, "
        f"after: {after['VmHWM'] / 1024:.1f} MiB, "
        f"growth: {(after['VmHWM'] - before['VmRSS']) / 1024:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    asyncio.run(measure(parser.parse_args().size_mb))


if __name__ == "__main__":
    main()
