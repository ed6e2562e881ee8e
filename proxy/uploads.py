"""Uploads (`POST .../packages/pypi`): streamed to GitLab, checked as they pass, never buffered."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from aiohttp.helpers import parse_mimetype
from aiohttp.multipart import parse_content_disposition

from . import keys
from .auth import Caller
from .credentials import own_upload_refused
from .errors import (
    BadRequest,
    ClientGone,
    Malformed,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    error_response,
)
from .scope import Scope
from .simple import normalize
from .upstream import UploadAnswer, message_of

log = logging.getLogger(__name__)

MAX_PART_HEADERS = 16 * 1024
MAX_PREAMBLE = 16 * 1024
# Only these short fields are kept: `name` and `version` name the pages to drop, and the
# digests are checked against the file, since GitLab stores them as sent.
MAX_KEPT_FIELD = 1024
REQUIRED_FIELDS = ("name", "version")
DIGEST_FIELDS = ("sha256_digest", "md5_digest")
KEPT_FIELDS = REQUIRED_FIELDS + DIGEST_FIELDS
DUPLICATE = "File name has already been taken"


@dataclass
class MultipartScanner:
    """Follows a multipart/form-data body as it streams past, holding only a few bytes of it.

    It keeps the short `name` and `version` fields and the file part's filename; the file's
    bytes are only counted. `done` turns true on the closing boundary, and not before.
    """

    boundary: bytes
    fields: dict[str, str] = field(default_factory=dict)
    filename: str = ""
    content_bytes: int = 0
    done: bool = False
    # Bytes fed so far, and where the closing delimiter (CRLF, `--boundary--`) starts.
    fed: int = 0
    closing_at: int | None = None
    _digests: dict[str, Any] = field(
        default_factory=lambda: {
            "sha256_digest": hashlib.sha256(),
            "md5_digest": hashlib.md5(usedforsecurity=False),
        }
    )
    _buffer: bytearray = field(default_factory=bytearray)
    _state: str = "preamble"
    _part: str | None = None
    _value: bytearray = field(default_factory=bytearray)

    @property
    def _delimiter(self) -> bytes:
        return b"\r\n--" + self.boundary

    @property
    def closing_length(self) -> int:
        """Bytes from where the closing delimiter starts to where it is recognised."""
        return len(self._delimiter) + 2

    def sha256_part(self, hexdigest: str) -> bytes:
        """A `sha256_digest` part with this digest, to go just before the closing delimiter."""
        return (
            self._delimiter
            + b'\r\nContent-Disposition: form-data; name="sha256_digest"\r\n\r\n'
            + hexdigest.encode("ascii")
        )

    def sha256_hexdigest(self) -> str:
        return str(self._digests["sha256_digest"].hexdigest())

    def feed(self, data: bytes) -> None:
        self.fed += len(data)
        if self.done:
            return  # the epilogue after the closing boundary carries nothing
        self._buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        """Advance over the buffer once; False when more bytes are needed."""
        buf = self._buffer
        if self._state == "preamble":
            # Prefixing CRLF lets a boundary on the very first line match like any other.
            at = (b"\r\n" + bytes(buf[: len(self._delimiter) + 2])).find(self._delimiter)
            if at == 0:
                return self._after_delimiter(len(self._delimiter) - 2)
            at = buf.find(self._delimiter)
            if at < 0:
                if len(buf) > MAX_PREAMBLE:
                    raise Malformed("no boundary where the body starts")
                return False
            return self._after_delimiter(at + len(self._delimiter))
        if self._state == "headers":
            end = buf.find(b"\r\n\r\n")
            if buf.startswith(b"\r\n"):
                end = -2  # a part with no headers at all
            if end == -1:
                if len(buf) > MAX_PART_HEADERS:
                    raise Malformed("part headers too long")
                return False
            self._start_part(bytes(buf[: max(end, 0)]))
            del buf[: end + 4]
            self._state = "body"
            return True
        if self._state == "body":
            at = buf.find(self._delimiter)
            if at < 0:
                # Keep a tail that may hold the start of a delimiter split across chunks.
                keep = len(self._delimiter) - 1
                if len(buf) > keep:
                    self._body(bytes(buf[: len(buf) - keep]))
                    del buf[: len(buf) - keep]
                return False
            self._body(bytes(buf[:at]))
            self._end_part()
            return self._after_delimiter(at + len(self._delimiter))
        return False

    def _after_delimiter(self, end: int) -> bool:
        """After `--boundary`: `--` closes the body, CRLF starts the next part's headers."""
        buf = self._buffer
        if len(buf) < end + 2:
            return False
        tail = bytes(buf[end : end + 2])
        if tail == b"--":
            self.done = True
            self.closing_at = self.fed - len(buf) + end - len(self._delimiter)
            self._buffer = bytearray()
            return False
        if tail != b"\r\n":
            raise Malformed("boundary not followed by CRLF")
        del buf[: end + 2]
        self._state = "headers"
        return True

    def _start_part(self, raw_headers: bytes) -> None:
        disposition = None
        for line in raw_headers.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon:
                raise Malformed("part header without a colon")
            if name.strip().lower() == b"content-disposition":
                disposition = value.strip().decode("utf-8", "replace")
        kind, params = parse_content_disposition(disposition)
        if kind != "form-data" or not params.get("name"):
            raise Malformed("part without a form-data name")
        self._part = params["name"]
        self._value = bytearray()
        if self._part == "content":
            self.filename = params.get("filename", "")

    def _body(self, data: bytes) -> None:
        if self._part == "content":
            self.content_bytes += len(data)
            for digest in self._digests.values():
                digest.update(data)
        elif self._part in KEPT_FIELDS:
            self._value += data
            if len(self._value) > MAX_KEPT_FIELD:
                raise BadRequest(f"400 Bad request - {self._part} is too long")

    def _end_part(self) -> None:
        if self._part in KEPT_FIELDS:
            try:
                self.fields[self._part] = self._value.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise BadRequest(f"400 Bad request - {self._part} is not UTF-8") from None
        self._part = None

    def check(self) -> None:
        """At the end: a closed body with the fields GitLab requires, else a clear 400."""
        if not self.done:
            raise Malformed("it ends before the closing boundary")
        missing = [f for f in REQUIRED_FIELDS if not self.fields.get(f)]
        if not self.filename:
            missing.insert(0, "content")
        if missing:
            raise BadRequest("400 Bad request - " + ", ".join(f"{m} is missing" for m in missing))
        # GitLab would store a wrong digest unchecked; then no download of the file verifies.
        for name, digest in self._digests.items():
            claimed = self.fields.get(name, "").lower()
            if claimed and claimed != digest.hexdigest():
                raise BadRequest(
                    f"400 Bad request - {name} {claimed} does not match the uploaded file "
                    f"({digest.hexdigest()})"
                )


@dataclass
class Upload:
    """One upload in flight: the scanner, the byte count, and why it stopped if it did."""

    request: web.Request
    scanner: MultipartScanner
    limit: int
    received: int = 0
    failure: ProxyError | None = None

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives, checked before it goes upstream, and with the file's
        verified `sha256_digest` as its last part (see `SHA256_PART_BYTES`).

        Each chunk goes out only once the next one has arrived, and the last one only once the
        whole body has checked out: a body the proxy refuses, or a client that goes away, always
        leaves GitLab with an incomplete request, never a complete one to accept.
        """
        held = bytearray()
        sent = 0
        try:
            while True:
                try:
                    chunk = await self.request.content.readany()
                except (aiohttp.ClientError, ConnectionError, OSError):
                    raise ClientGone("the client went away mid-upload") from None
                if not chunk:
                    break
                self.received += len(chunk)
                if self.limit and self.received > self.limit:
                    raise _too_large(self.limit)
                self.scanner.feed(chunk)
                held += chunk
                # Kept back too: enough bytes before this chunk to hold the closing delimiter,
                # where the digest part goes in.
                ready = len(held) - len(chunk) - self.scanner.closing_length
                if ready > 0 and not self.scanner.done:
                    out = bytes(held[:ready])
                    del held[:ready]
                    sent += ready
                    yield out
            expected = self.request.content_length
            if self.request.content.exception() is not None or (
                expected is not None and self.received < expected
            ):
                raise ClientGone("the client went away mid-upload")
            self.scanner.check()
        except ProxyError as e:
            # Raised into aiohttp's writer, which then cuts the connection to GitLab.
            self.failure = e
            raise
        assert self.scanner.closing_at is not None  # check() saw the closing delimiter
        at = self.scanner.closing_at - sent
        part = self.scanner.sha256_part(self.scanner.sha256_hexdigest())
        yield bytes(held[:at]) + part + bytes(held[at:])


# Without a digest GitLab stores NULL and the file can never be downloaded by its hash, so the
# proxy always appends the one it computed: a fixed length, so Content-Length is known at the
# start. Rack keeps the last of two same-named fields, and a client's own was checked equal.
SHA256_PART_BYTES = (
    len(b'\r\n--\r\nContent-Disposition: form-data; name="sha256_digest"\r\n\r\n') + 64
)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"413 Payload Too Large - uploads are limited to {limit} bytes")


def _scope(request: web.Request) -> Scope:
    return Scope.of_route(request.rel_url.raw_path)


def _preflight(request: web.Request) -> tuple[Caller, bytes]:
    """Everything that can be refused before a byte of the body is read."""
    limit = request.app[keys.SETTINGS].upstream.max_upload_size
    if limit and request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    gate = request.app[keys.GATE]
    uploader = gate.uploader(request.headers)
    refusal = gate.policy.upload_refusal(
        uploader.authorization, uploader.is_client, request.app[keys.SETTINGS].access
    )
    if refusal is not None:
        raise refusal
    mime = parse_mimetype(request.headers.get(hdrs.CONTENT_TYPE, ""))
    boundary = mime.parameters.get("boundary", "")
    if (mime.type, mime.subtype) != ("multipart", "form-data"):
        raise BadRequest("400 Bad request - expected a multipart/form-data body (as twine sends)")
    if not 0 < len(boundary) <= 70 or not boundary.isascii():
        raise Malformed("missing or invalid boundary")
    return uploader, boundary.encode()


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """On `Expect: 100-continue`, refuse before the client sends its body, or let it send."""
    try:
        await request.app[keys.ACCESS].check(request)
        _preflight(request)
    except ProxyError as e:
        return error_response(e.status, e.message, e.headers)
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        return error_response(417, "417 Expectation Failed - only 100-continue is understood")
    # As aiohttp's own default expect handler does (pinned: see pyproject.toml and
    # tests/unit/test_uploads.py): the interim answer is not part of the response's size.
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


async def upload(request: web.Request) -> web.StreamResponse:
    scope = _scope(request)
    if scope.kind != "projects":
        raise NotFound("404 Not Found")
    uploader, boundary = _preflight(request)
    state = Upload(
        request,
        MultipartScanner(boundary),
        request.app[keys.SETTINGS].upstream.max_upload_size,
    )
    length = request.content_length
    try:
        # Offline, or while GitLab's Retry-After holds, no byte of the body is read or sent.
        answer = await request.app[keys.UPSTREAM].post_upload(
            scope,
            state.body(),
            content_type=request.headers[hdrs.CONTENT_TYPE],
            content_length=None if length is None else length + SHA256_PART_BYTES + len(boundary),
            authorization=uploader.authorization,
        )
    except ProxyError as e:
        if state.failure is not None:
            _log(scope, state, f"stopped: {state.failure.message}; GitLab's request was cut")
            raise state.failure from None
        if isinstance(e.__cause__, aiohttp.ClientError | TimeoutError):
            _log(scope, state, f"failed: {type(e.__cause__).__name__}")
        raise
    if state.failure is not None:
        # GitLab answered before the body was complete: it cannot have accepted it.
        _log(scope, state, f"stopped: {state.failure.message}; GitLab answered {answer.status}")
        raise state.failure
    return await _answer(request, scope, uploader, state, answer)


async def _answer(
    request: web.Request,
    scope: Scope,
    uploader: Caller,
    state: Upload,
    answer: UploadAnswer,
) -> web.StreamResponse:
    """GitLab's answer as the client gets it, after dropping pages the upload made stale."""
    status, challenge = answer.status, answer.challenge
    message = message_of(answer.body, status, challenge)
    name = state.scanner.fields.get("name", "")
    duplicate = status == 400 and DUPLICATE in message
    if status == 201 or duplicate:
        # A duplicate also means the file exists: a page cached before it was uploaded is stale,
        # here and on every other replica.
        await request.app[keys.CLUSTER].invalidate(normalize(name))
    _log(scope, state, f"GitLab answered {status}")
    if duplicate:
        # 409 is what twine, poetry, pdm and uv read as "already there" (--skip-existing).
        return error_response(409, f"409 Conflict - file already exists: {message}")
    if (refusal := own_upload_refused(status, message, is_client=uploader.is_client)) is not None:
        raise refusal
    headers = {hdrs.CONTENT_TYPE: answer.content_type}
    if status == 401 and challenge:
        headers[hdrs.WWW_AUTHENTICATE] = challenge
    return web.Response(status=status, body=answer.body, headers=headers)


def _log(scope: Scope, state: Upload, outcome: str) -> None:
    fields = state.scanner.fields
    log.info(
        "upload to %s of %r %r (%r, %d bytes received): %s",
        scope.key,
        fields.get("name", "?"),
        fields.get("version", "?"),
        state.scanner.filename or "no file",
        state.received,
        outcome,
    )
