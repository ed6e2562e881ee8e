"""`create_app(settings)`: the one composition root: resources, middlewares, routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from . import handlers, keys
from .access import AccessGuard, access_middleware
from .auth import Gatekeeper
from .blobs import LocalBlobStore
from .cachehealth import CacheMode
from .cacheopen import open_index, reopen_when_writable
from .config import Settings
from .errors import error_middleware
from .eviction import run_evictor
from .files import FileCache, FileEvents
from .metadata import CoreMetadata
from .metrics import Metrics, metrics_middleware
from .pages import PageCache
from .rendering import PageRenderer
from .upstream import Upstream


def create_app(settings: Settings, metrics_dir: Path | None = None) -> web.Application:
    """The application; raises ConfigError when the access tokens file is unusable.

    `metrics_dir`: where the workers of one supervisor share their counters.
    """
    guard = AccessGuard(settings.access)
    metrics = Metrics(metrics_dir)
    # Metrics outermost, so it counts the statuses clients really get, errors mapped.
    app = web.Application(
        middlewares=[metrics_middleware(metrics), error_middleware, access_middleware(guard)]
    )
    app[keys.SETTINGS] = settings
    app[keys.ACCESS] = guard
    app[keys.METRICS] = metrics
    app.cleanup_ctx.append(_resources)
    handlers.add_routes(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    blobs = LocalBlobStore(settings.cache.dir, accel_redirect=settings.server.accel_redirect)
    # An unwritable or read-only directory still serves: see cachehealth.CacheMode.
    store, mode, reason = await open_index(blobs)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=50, ttl_dns_cache=300),
        # Cookies from GitLab must never travel from one client's request to another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Proxies come only from our config, never from the environment of the process.
        trust_env=False,
    )
    metrics = app[keys.METRICS]
    upstream = Upstream(settings.upstream, session, metrics, offline=settings.cache.offline)
    events = FileEvents()
    files = FileCache(
        settings.cache,
        blobs,
        store,
        upstream,
        metrics,
        events=events,
    )
    files.health.opened(mode, reason)
    await files.load()
    metrics.cache_limit = settings.cache.max_size
    metadata = CoreMetadata(files, store, events)
    await metadata.load()
    app[keys.STORE] = store
    app[keys.BLOBS] = blobs
    app[keys.UPSTREAM] = upstream
    app[keys.FILES] = files
    gate = Gatekeeper(settings.upstream, upstream)
    app[keys.GATE] = gate
    app[keys.PAGES] = PageCache(settings, upstream, store, gate)
    app[keys.METADATA] = metadata
    app[keys.RENDERER] = PageRenderer(files, metadata)
    background = [
        asyncio.create_task(files.run_access_flusher()),
        asyncio.create_task(run_evictor(files)),
    ]
    if mode is not CacheMode.READ_WRITE:
        background.append(asyncio.create_task(reopen_when_writable(files, metadata)))
    if metrics.shared is not None:
        background.append(asyncio.create_task(metrics.run_publisher()))
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await files.close(settings.server.shutdown_grace)
        await metadata.close()
        await session.close()
        await store.close()
