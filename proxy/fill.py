"""One upstream download into a temp file that any number of clients read as it grows."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import aiohttp
import yarl
from aiohttp import web

from .accesslog import SENDFILE_BYTES
from .blobs import CHUNK
from .errors import (
    CacheUnwritable,
    CredentialsRefused,
    ProxyError,
    UpstreamStatus,
    UpstreamUnavailable,
)
from .upstream import fingerprint

log = logging.getLogger(__name__)


class FillState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Outcome(enum.Enum):
    """Where a fill stands, as the clients reading it need to know."""

    RUNNING = "running"
    # Downloaded here and verified.
    DONE = "done"
    # Finished by another worker process while this one waited for its lock: never started here.
    ADOPTED = "adopted"
    # The disk gave out: clients that have nothing yet go to a pass-through.
    UNWRITABLE = "unwritable"
    FAILED = "failed"


class Fill:
    """One upstream download into a temp file that any number of clients read as it grows."""

    def __init__(
        self,
        sha256: str,
        filename: str,
        path: Path,
        source: yarl.URL | None = None,
        credential: str = "",
    ) -> None:
        self.sha256 = sha256
        self.filename = filename
        # Where it is fetched from (None: bytes that came whole with another request, never
        # joined): a joiner asking through another scope's URL is not its own.
        self.source = source
        # The starter's credential fingerprint: GitLab's no to it is not a no to a joiner's.
        self.credential = credential
        # The temp file while running; the blob's own path once verified and renamed.
        self.path = path
        self.size: int | None = None
        self.written = 0
        self.state = FillState.RUNNING
        self.error: ProxyError | None = None
        self.started = False
        # Read back from the shared tier, not downloaded: GitLab never answered anyone for it.
        self.from_shared = False
        # How often the bytes started over (the tier's copy failed, GitLab's follow), and the
        # first byte where the new ones differ from what readers of the old ones may have had.
        self.restarts = 0
        self.cut_past: int | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def mark_started(self, size: int | None) -> None:
        if self.restarts and size != self.size:
            # Readers of the first bytes were told another length: none of them can go on.
            self.diverged_at(-1)
        self.size = size
        self.started = True
        self._notify()

    def restart(self) -> int:
        """Start the bytes over, from GitLab, after the shared tier's copy failed; how many
        bytes of the first attempt readers may have been sent (all but the last)."""
        had = self.written
        self.written = 0
        self.restarts += 1
        self.from_shared = False
        # Readers that join now wait for GitLab's headers, its length.
        self.started = False
        self._notify()
        return had

    def diverged_at(self, offset: int) -> None:
        """The new bytes differ from the first attempt's at `offset`: a reader sent past it has
        a wrong byte and is cut; one sent no further goes on with the new bytes."""
        if self.cut_past is None or offset < self.cut_past:
            self.cut_past = offset
            self._notify()

    def must_cut(self, restarts: int, offset: int) -> bool:
        """Whether a reader that started at `restarts` and was sent `offset` bytes has a
        byte the fill's new bytes contradict."""
        return restarts != self.restarts and self.cut_past is not None and offset > self.cut_past

    def advance(self, nbytes: int) -> None:
        self.written += nbytes
        self._notify()

    def finish(self, final_path: Path) -> None:
        self.path = final_path
        self.state = FillState.DONE
        self._notify()

    def fail(self, error: ProxyError) -> None:
        self.error = error
        self.state = FillState.FAILED
        self._notify()

    @property
    def outcome(self) -> Outcome:
        if self.state is FillState.RUNNING:
            return Outcome.RUNNING
        if self.state is FillState.DONE:
            return Outcome.DONE if self.started else Outcome.ADOPTED
        if isinstance(self.error, CacheUnwritable):
            return Outcome.UNWRITABLE
        return Outcome.FAILED

    @property
    def running(self) -> bool:
        return self.state is FillState.RUNNING

    async def wait_until(self, predicate: Callable[[Fill], bool]) -> None:
        """Wait, step by step (bytes written, headers known, done or failed), until `predicate`."""
        while not predicate(self):
            await self._changed.wait()

    async def ended(self) -> None:
        await self.wait_until(lambda fill: not fill.running)

    async def readable_past(self, offset: int) -> None:
        """Wait until a reader at `offset` may send more, or the fill is over."""
        await self.wait_until(lambda fill: fill.readable_limit() > offset or not fill.running)

    async def headers_known(self) -> None:
        """Wait until upstream's headers are in (the size is known) or the fill is over."""
        await self.wait_until(lambda fill: fill.started or not fill.running)

    def refused_only_its_starter(self, authorization: str | None) -> bool:
        """Whether this fill ended, before a byte, on GitLab's answer to its starter's credential
        (a refusal, a per-user throttle, a 5xx), which says nothing to a joiner with other ones.
        A timeout is not asked again: the joiner would only wait as long once more."""
        return (
            self.state is FillState.FAILED
            and not self.started
            and self.credential != fingerprint(authorization)
            and isinstance(self.error, UpstreamStatus | CredentialsRefused | UpstreamUnavailable)
        )

    def readable_limit(self) -> int:
        """How many bytes a reader may send: all once verified, else all but the last."""
        if self.state is FillState.DONE:
            return self.written
        # Holding one byte back means no client ever completes a file that then fails to verify.
        return max(0, self.written - 1)


async def relay_verified(
    request: web.Request,
    response: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    sha256: str,
    filename: str,
    sent: BinaryIO | None = None,
    skip: int = 0,
) -> None:
    """Copy a body, holding the last byte back until it verifies; cut the client if not.

    The client may have the first `skip` bytes already (they are in the file `sent`): those
    are compared with the body instead of sent again.
    """
    digest = hashlib.sha256()
    held = b""
    received = 0
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            if not chunk:
                continue
            digest.update(chunk)
            start = received
            received += len(chunk)
            if start < skip and sent is not None:
                had = chunk[: skip - start]
                if os.pread(sent.fileno(), len(had), start) != had:
                    log.warning("pass-through of %s failed: upstream sent other bytes", filename)
                    cut(request)
                    return
                chunk = chunk[len(had) :]
                if not chunk:
                    continue
            await response.write(held + chunk[:-1])
            held = chunk[-1:]
    except ConnectionError:
        raise
    except (aiohttp.ClientError, TimeoutError):
        log.warning("pass-through of %s failed: upstream body incomplete", filename)
        cut(request)
        return
    if upstream.content_length not in (None, received) or digest.hexdigest() != sha256:
        log.warning("pass-through of %s failed: sha256 mismatch or short body", filename)
        cut(request)
        return
    await response.write(held)
    await response.write_eof()


async def stream_fill(
    request: web.Request, response: web.StreamResponse, fill: Fill, reader: BinaryIO
) -> int | None:
    """Send a fill's bytes as they land in its file; complete only once verified.

    When the fill lost the disk (CacheUnwritable), how many bytes the client has, for the
    caller to go on from; None once the response is complete, cut or its client gone.
    """
    # With a known length the body goes by sendfile, never copied through Python: that is what
    # lets one fill feed dozens of clients. Chunked framing needs write() instead. (A
    # StreamResponse has sent its headers on prepare(), so the body follows them.)
    transport = request.transport if fill.size is not None else None
    loop = asyncio.get_running_loop()
    offset = 0
    restarts = fill.restarts
    while True:
        if fill.must_cut(restarts, offset):
            cut(request)
            return None
        limit = fill.readable_limit()
        if offset < limit and transport is not None:
            if transport.is_closing():
                return None  # the client left; the fill goes on for the others
            offset += await loop.sendfile(transport, reader, offset, limit - offset)
            response[SENDFILE_BYTES] = offset
        elif offset < limit:
            # Just written by the fill, so read from the page cache: no disk wait.
            chunk = reader.read(min(CHUNK, limit - offset))
            offset += len(chunk)
            await response.write(chunk)
        elif fill.outcome is Outcome.RUNNING:
            await fill.readable_past(offset)
        elif fill.state is FillState.DONE:
            await response.write_eof()
            return None
        elif fill.outcome is Outcome.UNWRITABLE:
            return offset
        else:
            cut(request)
            return None


def cut(request: web.Request) -> None:
    """Close the client's connection mid-body, so its download fails loudly."""
    if request.transport is not None:
        request.transport.close()
