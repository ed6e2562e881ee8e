"""Invalidations between replicas: the names of uploaded projects, through Redis pub/sub."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from .config import ClusterSettings
from .metrics import Metrics
from .pages import PageCache

if TYPE_CHECKING:
    import redis.asyncio as redis
    from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)

CHANNEL = "gitlab-pypi-proxy:invalidations"
# The message's format: {"v": 1, "origin": <process id>, "name": <normalized name>}.
VERSION = 1
UNREACHABLE = "redis unreachable: invalidations from other replicas are not received"
# Seconds: a local Redis answers in well under a millisecond; one that does not answer within
# these is treated as gone, so an upload's answer is never held up for long.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0
# The subscription is probed with a PING this often: a Redis that stops answering (a network
# partition, a hung host) leaves the connection open, and only its silence tells.
PING_SECONDS = 2.0
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
POLL_SECONDS = 1.0


class Cluster:
    """Drops pages made stale by an upload here, and on every other replica and worker.

    Without `cluster.redis_url` it only drops this process's pages, as a single instance needs.
    Each process has its own origin, so the workers of one replica hear each other too.
    """

    def __init__(self, settings: ClusterSettings, pages: PageCache, metrics: Metrics) -> None:
        self.pages = pages
        self.metrics = metrics
        self.origin = uuid.uuid4().hex
        self._redis = _connect(settings.redis_url) if settings.redis_url else None
        # What a lost Redis raises; redis-py is imported only when a URL is set.
        self._lost: tuple[type[BaseException], ...] = (OSError,)
        if self._redis is not None:
            from redis.exceptions import RedisError

            self._lost = (RedisError, OSError)
        self._pubsub: PubSub | None = None
        # Names this process could not publish: sent once Redis answers again, since the
        # others may never have lost it, and would serve their pages of them for index_ttl.
        self._unsent: set[str] = set()
        self._error: BaseException | None = None
        self.subscribed = False
        if self._redis is not None:
            metrics.redis_connected = False

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    @property
    def problem(self) -> str | None:
        """What `/-/ready` reports as degraded while this process hears no other replica."""
        return UNREACHABLE if self.enabled and not self.subscribed else None

    async def invalidate(self, name: str) -> None:
        """Drop the pages that may list `name` here, then tell every other process to."""
        await self.pages.invalidate(name)
        if self._redis is None:
            return
        try:
            await self._publish(name)
        except self._lost as e:
            self._unsent.add(name)
            self.metrics.invalidation("unsent")
            log.warning(
                "could not tell the other replicas about the upload of %s (%s): told once "
                "redis answers again",
                name,
                _describe(e),
            )

    async def _publish(self, name: str) -> None:
        assert self._redis is not None
        message = json.dumps({"v": VERSION, "origin": self.origin, "name": name})
        await self._redis.publish(CHANNEL, message)
        self.metrics.invalidation("sent")

    async def _send_unsent(self) -> None:
        """Publish what could not be published before; what fails again waits once more."""
        for name in sorted(self._unsent):
            try:
                await self._publish(name)
            except self._lost:
                return
            self._unsent.discard(name)

    async def start(self) -> None:
        """Subscribe once before serving, so an upload elsewhere is heard from the first request."""
        if self._redis is not None and not await self._subscribe():
            self._outage_began()

    async def run(self) -> None:
        """Apply the other processes' invalidations; after an outage, reconnect with backoff."""
        if self._redis is None:
            return
        delay = RETRY_FIRST
        while True:
            if self.subscribed:
                try:
                    await self._listen()
                except self._lost as e:
                    self._error = e
                    self._outage_began()
                    await self._unsubscribe()
                delay = RETRY_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            if await self._subscribe():
                # Whatever was published meanwhile is lost: every page here may be stale.
                await self.pages.expire_all()
                log.warning("redis reachable again: invalidations from other replicas are received")
                await self._send_unsent()

    async def _subscribe(self) -> bool:
        assert self._redis is not None
        self._pubsub = self._redis.pubsub()
        try:
            await asyncio.wait_for(self._pubsub.subscribe(CHANNEL), CONNECT_TIMEOUT * 2)
        # TimeoutError (wait_for's) is an OSError.
        except self._lost as e:
            self._error = e
            await self._unsubscribe()
            return False
        self.subscribed = True
        self.metrics.redis_connected = True
        return True

    async def _unsubscribe(self) -> None:
        self.subscribed = False
        self.metrics.redis_connected = False
        if self._pubsub is not None:
            # redis-py leaves PubSub.aclose unannotated.
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None

    async def _listen(self) -> None:
        assert self._pubsub is not None
        loop = asyncio.get_running_loop()
        heard = pinged = loop.time()
        while True:
            if self._unsent:
                # Its publish failed while this subscription stayed up (a timeout, a blip).
                await self._send_unsent()
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=POLL_SECONDS
            )
            now = loop.time()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    await self._received(message["data"])
            if now - heard > PING_SECONDS + COMMAND_TIMEOUT:
                # The built-in ConnectionError: an OSError, which every outage path catches.
                raise ConnectionError(f"no answer to PING for {now - heard:.0f} s")
            if now - pinged >= PING_SECONDS:
                await self._pubsub.ping()
                pinged = now

    async def _received(self, data: bytes) -> None:
        try:
            document: Any = json.loads(data)
        except ValueError:
            document = None
        if not isinstance(document, dict) or document.get("v") != VERSION:
            log.warning("ignoring an invalidation in an unknown format on %s", CHANNEL)
            return
        name, origin = document.get("name"), document.get("origin")
        if not isinstance(name, str) or origin == self.origin:
            return
        self.metrics.invalidation("received")
        await self.pages.invalidate(name)

    def _outage_began(self) -> None:
        """Once per outage: a log line and a count; serving goes on without the others' news."""
        self.metrics.redis_outages += 1
        log.warning("%s (%s); retrying", UNREACHABLE, _describe(self._error))

    async def close(self) -> None:
        if self._redis is None:
            return
        await self._unsubscribe()
        await self._redis.aclose()


def _connect(url: str) -> redis.Redis:
    """A client for `url`; redis-py is imported here, so a lone instance never loads it."""
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        # Reconnecting is run()'s job, so an outage is seen, logged and counted.
        retry=Retry(NoBackoff(), 0),
    )


def _describe(error: BaseException | None) -> str:
    """redis-py's messages name the host and port, never the password."""
    if error is None or not str(error):
        return type(error).__name__
    return f"{type(error).__name__}: {error}"
