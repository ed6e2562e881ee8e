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
from .cluster import Cluster
from .config import Settings
from .errors import error_middleware
from .eviction import run_evictor
from .files import FileCache, FileEvents
from .gitlab import GitLab
from .metadata import CoreMetadata
from .metrics import Metrics, metrics_middleware
from .pages import PageCache
from .rendering import PageRenderer
from .shared_tier import check_client, open_shared_tier

# How the index opened, and why not read-write: the file cache and the background tasks need it.
_OPENED: web.AppKey[tuple[CacheMode, str]] = web.AppKey("opened")


def create_app(settings: Settings, metrics_dir: Path | None = None) -> web.Application:
    """The application; raises ConfigError when the access tokens file is unusable, or no
    S3 client can be made for storage.url.

    `metrics_dir`: where the workers of one supervisor share their counters.
    """
    guard = AccessGuard(settings.access)
    if settings.storage.url:
        check_client(settings.storage)
    metrics = Metrics(metrics_dir)
    # Metrics outermost, so it counts the statuses clients really get, errors mapped.
    app = web.Application(
        middlewares=[metrics_middleware(metrics), error_middleware, access_middleware(guard)]
    )
    app[keys.SETTINGS] = settings
    app[keys.ACCESS] = guard
    app[keys.METRICS] = metrics
    # One context per resource, in the order they depend on each other: when one fails to
    # start, aiohttp's cleanup closes those before it, in reverse.
    app.cleanup_ctx.extend([_index, _session, _shared, _files, _pages, _cluster, _background])
    handlers.add_routes(app)
    return app


async def _index(app: web.Application) -> AsyncIterator[None]:
    """The SQLite index and the blob directory it describes."""
    settings = app[keys.SETTINGS]
    blobs = LocalBlobStore(settings.cache.dir, accel_redirect=settings.server.accel_redirect)
    # An unwritable or read-only directory still serves: see cachehealth.CacheMode.
    store, mode, reason = await open_index(blobs)
    app[keys.STORE] = store
    app[keys.BLOBS] = blobs
    app[_OPENED] = (mode, reason)
    try:
        yield
    finally:
        await store.close()


async def _session(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client session to GitLab, and the upstream client using it."""
    settings = app[keys.SETTINGS]
    metrics = app[keys.METRICS]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=50, ttl_dns_cache=300),
        # Cookies from GitLab must never travel from one client's request to another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Proxies come only from our config, never from the environment of the process.
        trust_env=False,
    ) as session:
        upstream = GitLab(settings.upstream, session, metrics, offline=settings.cache.offline)
        app[keys.UPSTREAM] = upstream
        yield


async def _shared(app: web.Application) -> AsyncIterator[None]:
    """The shared tier behind the local disk (storage.url), or None; its uploads end last."""
    settings = app[keys.SETTINGS]
    async with open_shared_tier(settings.storage, app[keys.METRICS]) as tier:
        app[keys.SHARED] = tier
        app[keys.METRICS].shared_tier_on = tier is not None
        try:
            yield
        finally:
            if tier is not None:
                await tier.close(settings.server.shutdown_grace)


async def _files(app: web.Application) -> AsyncIterator[None]:
    """The file cache, reconciled with the disk, and the core metadata derived from it."""
    settings = app[keys.SETTINGS]
    store = app[keys.STORE]
    mode, reason = app[_OPENED]
    metrics = app[keys.METRICS]
    events = FileEvents()
    files = FileCache(
        settings.cache,
        app[keys.BLOBS],
        store,
        app[keys.UPSTREAM],
        metrics,
        events=events,
        shared=app[keys.SHARED],
    )
    files.health.opened(mode, reason)
    # Until the yield nothing of theirs runs that close() would have to wait for or write.
    await files.load()
    metrics.cache_limit = settings.cache.max_size
    metadata = CoreMetadata(files, store, events)
    await metadata.load()
    app[keys.FILES] = files
    app[keys.METADATA] = metadata
    try:
        yield
    finally:
        await files.close(settings.server.shutdown_grace)
        await metadata.close()


async def _pages(app: web.Application) -> AsyncIterator[None]:
    """The page cache, the credential gate before it and the renderer after it; nothing to close."""
    settings = app[keys.SETTINGS]
    upstream = app[keys.UPSTREAM]
    gate = Gatekeeper(settings.upstream, upstream)
    app[keys.GATE] = gate
    pages = PageCache(settings, upstream, app[keys.STORE], gate, shared=app[keys.SHARED])
    app[keys.PAGES] = pages
    app[keys.RENDERER] = PageRenderer(app[keys.FILES], app[keys.METADATA], pages.policy)
    yield


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """Invalidations to and from the other replicas (`cluster.redis_url`), heard beside requests."""
    cluster = Cluster(app[keys.SETTINGS].cluster, app[keys.PAGES], app[keys.METRICS])
    await cluster.start()
    app[keys.CLUSTER] = cluster
    listener = asyncio.create_task(cluster.run())
    try:
        yield
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await cluster.close()


async def _background(app: web.Application) -> AsyncIterator[None]:
    """The tasks that run beside requests, cancelled first on the way down."""
    files = app[keys.FILES]
    metrics = app[keys.METRICS]
    mode, _ = app[_OPENED]
    background = [
        asyncio.create_task(files.run_access_flusher()),
        asyncio.create_task(run_evictor(files)),
    ]
    if mode is not CacheMode.READ_WRITE:
        background.append(asyncio.create_task(reopen_when_writable(files, app[keys.METADATA])))
    if metrics.shared is not None:
        background.append(asyncio.create_task(metrics.run_publisher()))
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
