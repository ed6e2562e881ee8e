"""MultipartScanner over chunked bodies, and the aiohttp expect handler uploads.py copies."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable

import pytest
from aiohttp import web, web_urldispatcher
from aiohttp.abc import AbstractStreamWriter
from aiohttp.test_utils import TestServer

from proxy import keys, uploads
from proxy.access import AccessGuard
from proxy.auth import Gatekeeper
from proxy.config import Settings, UpstreamSettings
from proxy.errors import BadRequest, Malformed
from proxy.uploads import MAX_PREAMBLE, MultipartScanner
from tests.support.memory_upstream import MemoryUpstream
from tests.support.multipart import GOOD, multipart

CONTENT = b"\x1f\x8b" + b"z" * 500


def scan(*chunks: bytes) -> MultipartScanner:
    scanner = MultipartScanner(b"xyz")
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner


def summary(scanner: MultipartScanner) -> tuple[object, ...]:
    return (
        scanner.fields,
        scanner.filename,
        scanner.content_bytes,
        scanner.done,
        scanner.closing_at,
        scanner.sha256_hexdigest(),
    )


def test_a_well_formed_body_yields_its_fields_filename_and_file_digest() -> None:
    scanner = scan(GOOD)
    scanner.check()
    assert scanner.fields == {"name": "corp-util", "version": "1.0.0"}
    assert scanner.filename == "corp_util-1.0.0.tar.gz"
    assert scanner.content_bytes == len(CONTENT)
    assert scanner.sha256_hexdigest() == hashlib.sha256(CONTENT).hexdigest()
    assert scanner.done and scanner.fed == len(GOOD)
    # The closing delimiter is CRLF, `--xyz--`, and a final CRLF.
    assert scanner.closing_at == len(GOOD) - len(b"\r\n--xyz--\r\n")


def test_every_split_into_two_chunks_reads_the_same() -> None:
    whole = summary(scan(GOOD))
    for at in range(1, len(GOOD)):
        assert summary(scan(GOOD[:at], GOOD[at:])) == whole, at


def test_a_body_fed_byte_by_byte_reads_the_same() -> None:
    assert summary(scan(*(GOOD[i : i + 1] for i in range(len(GOOD))))) == summary(scan(GOOD))


def test_a_delimiter_lookalike_inside_the_file_is_file_bytes() -> None:
    content = b"a\r\n--xy\r\n--x\r\nb--xyz"
    body = multipart(
        ("name", None, b"demo"), ("version", None, b"1"), ("content", "demo-1.tar.gz", content)
    )
    scanner = scan(body)
    scanner.check()
    assert scanner.content_bytes == len(content)


def test_the_epilogue_after_the_closing_boundary_is_ignored() -> None:
    scanner = scan(GOOD, b"--xyz\r\nnot a header\r\n\r\n")
    scanner.check()
    assert scanner.fields == {"name": "corp-util", "version": "1.0.0"}


def test_a_digest_that_does_not_match_the_file_is_refused() -> None:
    body = multipart(
        ("name", None, b"demo"),
        ("version", None, b"1"),
        ("sha256_digest", None, b"0" * 64),
        ("content", "demo-1.tar.gz", CONTENT),
    )
    with pytest.raises(BadRequest, match="does not match"):
        scan(body).check()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"x" * (MAX_PREAMBLE + 1), "no boundary"),
        (b"--xyzXX", "not followed by CRLF"),
        (b"--xyz\r\nno colon here\r\n\r\n", "without a colon"),
        (b"--xyz\r\nContent-Disposition: attachment\r\n\r\n", "form-data name"),
        (b"--xyz\r\n\r\n", "without a colon"),
        (b"--xyz\r\nX: " + b"h" * (16 * 1024 + 1), "headers too long"),
    ],
)
def test_malformed_bodies_are_malformed(body: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        scan(body)


def test_a_body_without_its_closing_boundary_is_malformed() -> None:
    with pytest.raises(Malformed, match="before the closing boundary"):
        scan(GOOD[:-12]).check()


def test_missing_fields_are_named() -> None:
    scanner = scan(multipart(("name", None, b"demo")))
    with pytest.raises(BadRequest, match="content is missing, version is missing") as refused:
        scanner.check()
    assert not isinstance(refused.value, Malformed)


def test_a_long_kept_field_is_refused() -> None:
    with pytest.raises(BadRequest, match="name is too long"):
        scan(multipart(("name", None, b"n" * 2000)))


# uploads.expect_continue copies what aiohttp's default expect handler does after its own checks;
# aiohttp is pinned below 3.15 (pyproject.toml), and this test says when the copy is out of date.
CONTINUE_STEPS = (
    'await request.writer.write(b"HTTP/1.1 100 Continue\\r\\n\\r\\n")',
    "request.writer.output_size = 0",
)


def _statements(function: Callable[..., object]) -> list[str]:
    return [line.strip() for line in inspect.getsource(function).splitlines()]


def test_expect_continue_copies_aiohttps_default_expect_handler() -> None:
    theirs = _statements(web_urldispatcher._default_expect_handler)
    ours = _statements(uploads.expect_continue)
    for step in CONTINUE_STEPS:
        assert step in theirs, f"aiohttp's expect handler no longer does {step}"
        assert step in ours
    # The interim answer is kept out of the response's size through this writer attribute.
    assert "output_size" in AbstractStreamWriter.__annotations__


async def _exchange(port: int, content_type: str) -> tuple[bytes, bytes]:
    """Send the headers with `Expect: 100-continue`; the body only after the interim answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/v4/projects/42/packages/pypi HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Basic Y2k6Z2xwYXQtMQ==\r\nExpect: 100-continue\r\n"
            + f"Content-Type: {content_type}\r\nContent-Length: {len(GOOD)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
        )
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        if not first.startswith(b"HTTP/1.1 100 "):
            return first, b""  # refused: the body is never sent
        writer.write(GOOD)
        return first, await asyncio.wait_for(reader.read(), 2)
    finally:
        writer.close()


async def test_expect_continue_lets_a_good_upload_send_and_refuses_a_bad_one_first() -> None:
    settings = Settings(upstream=UpstreamSettings(url="http://gitlab.test", token="secret"))
    app = web.Application()
    app[keys.SETTINGS] = settings
    app[keys.ACCESS] = AccessGuard(settings.access)
    app[keys.GATE] = Gatekeeper(settings.upstream, MemoryUpstream())

    async def received(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app.router.add_post(
        "/api/v4/projects/{id}/packages/pypi", received, expect_handler=uploads.expect_continue
    )
    server = TestServer(app)
    await server.start_server()
    try:
        first, rest = await _exchange(server.port or 0, "multipart/form-data; boundary=xyz")
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(str(len(GOOD)).encode())
        refused, _ = await _exchange(server.port or 0, "application/json")
        assert refused.startswith(b"HTTP/1.1 400 ")
    finally:
        await server.close()
