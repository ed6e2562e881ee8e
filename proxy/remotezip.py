"""A remote file seen through the byte ranges fetched so far, so zipfile can read one member."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# The end of central directory record with the longest comment a zip may carry (64 KiB) and
# the zip64 records before it; a small wheel's central directory and METADATA come along.
TAIL_BYTES = 64 * 1024 + 1024
# A central directory of 100,000 members is about 10 MB; more is not read into memory.
MAX_RANGE_BYTES = 32 * 1024 * 1024
# The tail, the central directory, the member; one more when a local header's extra field is
# longer than the central directory's copy said.
MAX_READS = 4

# (first byte, last byte) inclusive, or (None, n) for the last n bytes -> (offset, body, size).
ReadRange = Callable[[int | None, int], Awaitable[tuple[int, bytes, int]]]


class MissingBytes(Exception):
    """zipfile asked for bytes not fetched yet; fetch [start, stop) and parse again."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__(f"bytes {start}-{stop - 1} not fetched")
        self.start = start
        self.stop = stop


class RemoteZipError(Exception):
    """The zip's own records point where no file could be read; the message says how."""


class RemoteFile(io.BufferedIOBase):
    """A read-only file of `size` bytes of which only fetched parts can be read."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.parts: list[tuple[int, bytes]] = []
        self._position = 0

    def add(self, offset: int, body: bytes) -> None:
        self.parts.append((offset, body))

    def require(self, start: int, stop: int) -> None:
        """Raise MissingBytes unless [start, stop) has been fetched."""
        if self._part(start, stop) is None:
            raise MissingBytes(start, stop)

    def _part(self, start: int, stop: int) -> bytes | None:
        for offset, body in self.parts:
            if offset <= start and stop <= offset + len(body):
                return body[start - offset : stop - offset]
        return None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self._position = base + offset
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        start = self._position
        # Not clamped to the size: a record that points past the end must show as such.
        stop = self.size if size is None or size < 0 else start + size
        if start >= stop:
            return b""
        body = self._part(start, stop)
        if body is None:
            raise MissingBytes(start, stop)
        self._position = stop
        return body

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


async def read_by_range(read_range: ReadRange, parse: Callable[[RemoteFile], T]) -> T:
    """What `parse` makes of a remote file, fetching the ranges it turns out to need.

    The first request is the tail, which also tells the file's size; after that only what
    `parse` asked for and did not find, each range inside the file and of bounded size.
    """
    offset, tail, size = await read_range(None, TAIL_BYTES)
    remote = RemoteFile(size)
    remote.add(offset, tail)
    reads = 1
    while True:
        try:
            # A big central directory takes a while to parse: not on the event loop.
            return await asyncio.to_thread(parse, remote)
        except MissingBytes as missing:
            if missing.start < 0 or missing.stop > size:
                raise RemoteZipError("the zip's directory points outside the file") from None
            if missing.stop - missing.start > MAX_RANGE_BYTES:
                raise RemoteZipError(
                    f"the zip asks for {missing.stop - missing.start} bytes at once"
                ) from None
            if reads >= MAX_READS:
                raise RemoteZipError(f"the zip needs more than {MAX_READS} reads") from None
            offset, body, _ = await read_range(missing.start, missing.stop - 1)
            remote.add(offset, body)
            reads += 1
