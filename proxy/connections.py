"""Client connections: the open-files limit, header and idle timeouts, shedding when full."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .cachehealth import Throttled

log = logging.getLogger(__name__)

# Descriptors kept for what is not a client connection: upstream sockets (the connector holds
# up to 100), SQLite, fills' temp and lock files, the listening socket, stdio.
RESERVED_FDS = 150
# A client downloading a cached file holds its socket, the open blob and the blob's read hold.
FDS_PER_CONNECTION = 3
ACCEPT_EXHAUSTED = "socket.accept() out of system resource"
_BUSY = {"message": "the proxy has too many connections open; try again in a moment"}
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
) % (len(json.dumps(_BUSY).encode()), json.dumps(_BUSY).encode())


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (the soft limit before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        # Unlimited hard limits exist (root in some containers); the soft one is then kept.
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def capacity_for(open_files: int) -> int:
    """How many client connections fit in `open_files` descriptors, each one busy."""
    return max(1, (open_files - RESERVED_FDS) // FDS_PER_CONNECTION)


class Connection(web.RequestHandler):
    """aiohttp's request handler, also known to the guard: open since when, busy or idle."""

    __slots__ = ("_guard", "_header_timer", "requests_running", "requests_started")

    def __init__(self, guard: ConnectionGuard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self.requests_started = 0
        self.requests_running = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # nginx's client_header_timeout: a first request must be complete (to its headers) by
        # then. Later ones are aiohttp's: keepalive_timeout from the end of the last response.
        self._header_timer = asyncio.get_running_loop().call_later(
            self._guard.header_timeout, self._header_timed_out
        )
        self._guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._guard.closed(self)
        super().connection_lost(exc)

    def request_started(self) -> None:
        self.requests_started += 1
        self.requests_running += 1
        self._cancel_header_timer()

    def request_ended(self) -> None:
        self.requests_running -= 1

    def refuse(self) -> None:
        """Answer 503 and close, before reading anything: there is no room for this one."""
        if self.transport is not None:
            self.transport.write(REFUSAL)
        self.force_close()

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.requests_started == 0:
            self.force_close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None


class ConnectionGuard:
    """Owns the process's client connections, oldest first, and sheds them when descriptors
    run short: the oldest idle one goes, or, when every one is busy, the newcomer is refused.

    Kept below the open-files limit, accept() never meets EMFILE; there, asyncio (before
    CPython gh-151615) keeps calling accept() for its whole backlog, scheduling a retry and
    logging each time, and the retries multiply: ~113,000 log lines in 42 s.
    """

    def __init__(self, header_timeout: float, capacity: int) -> None:
        self.header_timeout = header_timeout
        self.capacity = capacity
        # Insertion-ordered: the first idle one found is the oldest.
        self._open: dict[Connection, None] = {}
        self.shed = 0
        self.refused = 0
        self._warn = Throttled(log)

    def factory(self, server: web.Server, **handler_args: Any) -> Callable[[], Connection]:
        """The protocol factory for `loop.create_server`: one Connection per accepted socket."""
        return lambda: Connection(self, server, loop=asyncio.get_running_loop(), **handler_args)

    def opened(self, connection: Connection) -> None:
        self._open[connection] = None
        if len(self._open) > self.capacity:
            self._make_room(connection)

    def closed(self, connection: Connection) -> None:
        self._open.pop(connection, None)

    def out_of_descriptors(self) -> None:
        """accept() failed with EMFILE (descriptors held by more than connections): shed."""
        self._make_room(None)

    def _make_room(self, newcomer: Connection | None) -> None:
        idle = next((c for c in self._open if c.requests_running == 0 and c is not newcomer), None)
        if idle is not None:
            self.shed += 1
            self.closed(idle)
            idle.force_close()
        elif newcomer is not None:
            self.refused += 1
            self.closed(newcomer)
            newcomer.refuse()
        self._warn.log(
            logging.WARNING,
            "open files nearly exhausted (%d client connections, room for %d): closed the "
            "oldest idle connections (%d so far) or refused new ones while all were busy "
            "(%d so far)",
            len(self._open),
            self.capacity,
            self.shed,
            self.refused,
        )

    def middleware(self) -> Middleware:
        """Marks a connection busy while a request on it is handled: busy ones are not shed."""

        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            connection = request.protocol
            if not isinstance(connection, Connection):
                return await handler(request)
            connection.request_started()
            try:
                return await handler(request)
            finally:
                connection.request_ended()

        return track

    def site(
        self, runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool, **handler_args: Any
    ) -> GuardedSite:
        """A TCP site on `host:port` whose connections this guard owns."""
        assert runner.server is not None
        return GuardedSite(
            runner, host, port, self.factory(runner.server, **handler_args), reuse_port
        )

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's handler: EMFILE on accept is shed and logged at most once a minute."""
        if context.get("message") == ACCEPT_EXHAUSTED:
            self.out_of_descriptors()
            return
        loop.default_exception_handler(context)


class GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, but each accepted socket becomes a guarded Connection."""

    __slots__ = ("_factory", "_host", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        factory: Callable[[], Connection],
        reuse_port: bool,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._factory = factory
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )
