"""MultipartScanner over chunked bodies, and the aiohttp expect handler uploads.py copies."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable

import pytest
from aiohttp import web_urldispatcher
from aiohttp.abc import AbstractStreamWriter

from proxy import uploads
from proxy.errors import BadRequest, Malformed
from proxy.uploads import MAX_PREAMBLE, MultipartScanner
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
