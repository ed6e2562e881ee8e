"""Load and timing clients: wrk when installed (else an aiohttp load loop), curl for timed GETs."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from bench.procs import die_with_parent

_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    bytes_per_s: float
    errors: int  # non-2xx answers and socket errors; a measurement with errors is not used


async def _output(*args: str, merge_stderr: bool = False) -> bytes:
    """A load tool's output. It dies with the bench, and is killed if the bench cancels it."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else None,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out


def _bytes(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?B)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


class LoadGenerator:
    """`wrk -t THREADS -c CONNS -d SECS` when wrk exists; an aiohttp loop otherwise."""

    def __init__(self, wrk: str | None, threads: int) -> None:
        self.wrk = wrk
        self.threads = threads

    @property
    def name(self) -> str:
        return f"wrk -t{self.threads}" if self.wrk else "aiohttp load loop (client-bound)"

    async def run(
        self, url: str, connections: int, seconds: float, headers: Mapping[str, str] = {}
    ) -> Load:
        if self.wrk:
            return await self._wrk(url, connections, seconds, headers)
        return await _aiohttp_load(url, connections, seconds, headers)

    async def _wrk(
        self, url: str, connections: int, seconds: float, headers: Mapping[str, str]
    ) -> Load:
        assert self.wrk is not None
        args = [self.wrk, f"-t{min(self.threads, connections)}", f"-c{connections}"]
        args += [f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
        for key, value in headers.items():
            args += ["-H", f"{key}: {value}"]
        text = (await _output(*args, url, merge_stderr=True)).decode()
        rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
        done = re.search(r"(\d+) requests in ([\d.]+)(m?s), ([\d.]+[KMGT]?B) read", text)
        if rps is None or done is None:
            raise RuntimeError(f"could not read wrk's output:\n{text}")
        elapsed = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
        errors = 0
        if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
            errors += int(bad.group(1))
        if sock := re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
            # wrk counts a server closing an idle keep-alive connection as a read error.
            errors += int(sock.group(1)) + int(sock.group(3)) + int(sock.group(4))
        return Load(float(rps.group(1)), _bytes(done.group(4)) / elapsed, errors)


async def _aiohttp_load(
    url: str, connections: int, seconds: float, headers: Mapping[str, str]
) -> Load:
    count = 0
    nbytes = 0
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=dict(headers)) as session:

        async def worker() -> None:
            nonlocal count, nbytes, errors
            while time.monotonic() < deadline:
                async with session.get(url) as resp:
                    async for chunk in resp.content.iter_any():
                        nbytes += len(chunk)
                    if resp.status >= 400:
                        errors += 1
                count += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - start
    return Load(count / elapsed, nbytes / elapsed, errors)


async def bulk_load(url: str, connections: int, seconds: float) -> Load:
    """Big files: keep-alive GETs read with 1 MiB recv_into, one thread per connection.

    wrk reads 8 KiB at a time and tops out near 1 GB/s here, below what nginx sends.
    """
    return await asyncio.to_thread(_bulk, url, connections, seconds)


def _bulk(url: str, connections: int, seconds: float) -> Load:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    deadline = time.monotonic() + seconds
    totals: list[tuple[int, int, int]] = []

    def connection() -> None:
        nbytes = count = errors = 0
        buffer = memoryview(bytearray(1 << 20))
        with socket.create_connection((host, port)) as sock:
            while time.monotonic() < deadline:
                sock.sendall(request)
                head = b""
                while b"\r\n\r\n" not in head:
                    more = sock.recv(65536)
                    if not more:
                        raise ConnectionError(f"{url}: closed mid-answer")
                    head += more
                header, _, rest = head.partition(b"\r\n\r\n")
                status = int(header.split(None, 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in header.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                left = length - len(rest)
                while left:
                    got = sock.recv_into(buffer, min(left, len(buffer)))
                    if not got:
                        raise ConnectionError(f"{url}: closed mid-body")
                    left -= got
                nbytes += length
                count += 1
                errors += status != 200
        totals.append((nbytes, count, errors))

    threads = [threading.Thread(target=connection) for _ in range(connections)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    if len(totals) != connections:
        raise RuntimeError(f"{url}: {connections - len(totals)} connections failed")
    return Load(
        sum(t[1] for t in totals) / elapsed,
        sum(t[0] for t in totals) / elapsed,
        sum(t[2] for t in totals),
    )


@dataclass(frozen=True)
class Timed:
    status: int
    ttfb: float  # seconds to the first byte of the answer
    total: float
    size: int


async def timed_get(url: str, headers: Mapping[str, str] = {}) -> Timed:
    """One GET on a new connection, timed by curl (out of our process) or else aiohttp."""
    curl = shutil.which("curl")
    if curl is None:
        return await _aiohttp_timed(url, headers)
    args = [curl, "-s", "-o", "/dev/null", "--max-time", "300"]
    args += ["-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    status, ttfb, total, size = (await _output(*args, url)).decode().split()
    return Timed(int(status), float(ttfb), float(total), int(size))


async def _aiohttp_timed(url: str, headers: Mapping[str, str]) -> Timed:
    start = time.perf_counter()
    ttfb = 0.0
    size = 0
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            if not size:
                ttfb = time.perf_counter() - start
            size += len(chunk)
        return Timed(resp.status, ttfb, time.perf_counter() - start, size)
