"""The access log: a line per request from safe fields, written in batches off the request path."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from json.encoder import encode_basestring as quote
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .config import LogFormat
from .log import ACCESS_LOGGER, MAX_USER_AGENT, REDACTED

# Lines reach the log at most this long after their request; SIGTERM flushes the rest.
FLUSH_SECONDS = 0.1

# Key in a response's own mapping: body bytes sent by sendfile, which aiohttp's writer does
# not count (the body goes from the file to the socket in the kernel).
SENDFILE_BYTES = web.ResponseKey("sendfile_bytes", int)

# remote, method, target, HTTP major, minor, status, bytes sent, seconds, cache, user agent, at.
Entry = tuple[str, str, str, int, int, int, int, float, str, str, float]


def redacted_target(path: str, query: str) -> str:
    """The request target with every query value blanked: a query is where tokens travel.

    A bare item (no `=`) is blanked whole: `?glpat-...` is a token pasted without a key.
    """
    if not query:
        return path
    params = (p.partition("=") for p in query.split("&"))
    return path + "?" + "&".join(f"{k}={REDACTED}" if eq else REDACTED for k, eq, _ in params)


class AccessLog:
    """Collects entries on the event loop; a thread formats and writes them, one write a batch.

    No regex and no redaction run here: every field is safe where it is taken (the target's
    query values blanked, no header but a cut User-Agent), so the generic filter is not needed.
    """

    def __init__(self, stream: TextIO, log_format: LogFormat, lock: threading.RLock) -> None:
        self.stream = stream
        self.lock = lock
        self.format = self._json if log_format == "json" else self._plain
        self.entries: deque[Entry] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._second = -1
        self._stamp = self._utc = ""
        self._thread.start()

    def add(self, request: BaseRequest, response: StreamResponse, seconds: float) -> None:
        url = request.rel_url
        query = url.raw_query_string
        target = redacted_target(url.raw_path, query) if query else url.raw_path
        version = request.version
        self.entries.append(
            (
                request.remote or "-",
                request.method,
                target,
                version.major,
                version.minor,
                response.status,
                # Headers included, as nginx's $bytes_sent: what really went out, even if cut.
                response.body_length + response.get(SENDFILE_BYTES, 0),
                seconds,
                response.headers.get("X-Cache", "-"),
                request.headers.get("User-Agent", "-")[:MAX_USER_AGENT],
                time.time(),
            )
        )

    def close(self) -> None:
        """Write every line still queued; called once the server has stopped."""
        self._stop.set()
        self._thread.join()
        self._flush()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self._flush()

    def _flush(self) -> None:
        lines = []
        entries = self.entries
        while entries:
            lines.append(self.format(entries.popleft()))
        if lines:
            with self.lock:
                self.stream.write("".join(lines))
                self.stream.flush()

    def _message(self, e: Entry) -> str:
        agent = e[9]
        if '"' in agent or not agent.isprintable():
            # The client's own text: it must not end the field, or the line.
            agent = agent.encode("unicode_escape").decode("ascii").replace('"', '\\"')
        request = f"{e[1]} {e[2]} HTTP/{e[3]}.{e[4]}"
        return f'{e[0]} "{request}" {e[5]} {e[6]} {e[7]:.3f}s {e[8]} "{agent}"'

    def _stamps(self, at: float) -> tuple[str, str]:
        """(local time as logging's asctime has it, UTC as JSON lines have it), once a second."""
        second = int(at)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp, self._utc

    def _plain(self, e: Entry) -> str:
        millis = int((e[10] % 1) * 1000)
        return f"{self._stamps(e[10])[0]},{millis:03d} INFO {ACCESS_LOGGER}: {self._message(e)}\n"

    def _json(self, e: Entry) -> str:
        # The keys and levels are fixed; only the client's strings need JSON quoting.
        return (
            f'{{"time": "{self._stamps(e[10])[1]}", "level": "info", '
            f'"logger": "{ACCESS_LOGGER}", "message": {quote(self._message(e))}, '
            f'"remote": {quote(e[0])}, "method": {quote(e[1])}, "path": {quote(e[2])}, '
            f'"status": {e[5]}, "bytes_sent": {e[6]}, "duration": {round(e[7], 6)}, '
            f'"cache": {quote(e[8])}, "user_agent": {quote(e[9])}}}\n'
        )


def access_logger_class(sink: AccessLog) -> type[AbstractAccessLogger]:
    """The class aiohttp instantiates for its access log, writing to `sink`."""

    class AccessLogger(AbstractAccessLogger):
        def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
            sink.add(request, response, time)

    return AccessLogger


def root_stream() -> tuple[TextIO, threading.RLock]:
    """The stream and lock of the root handler `setup_logging` installed, to share its output."""
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler) and handler.lock is not None
    return handler.stream, handler.lock
