"""`create_app(settings)`: the one composition root: resources, middlewares, routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from . import handlers, keys
from .blobs import BlobStore
from .config import Settings
from .errors import error_middleware
from .eviction import run_evictor
from .files import FileCache
from .pages import PageCache
from .store import Store
from .upstream import Upstream

DB_NAME = "index.sqlite3"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[keys.SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    handlers.add_routes(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    cache_dir = settings.cache.dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(cache_dir / DB_NAME)
    blobs = BlobStore(cache_dir)
    blobs.ensure_dirs()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, limit_per_host=50, ttl_dns_cache=300),
        # Cookies from GitLab must never travel from one client's request to another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Proxies come only from our config, never from the environment of the process.
        trust_env=False,
    )
    upstream = Upstream(settings.upstream, session, offline=settings.cache.offline)
    files = FileCache(settings.cache, blobs, store, upstream)
    await files.load()
    app[keys.STORE] = store
    app[keys.BLOBS] = blobs
    app[keys.UPSTREAM] = upstream
    app[keys.FILES] = files
    app[keys.PAGES] = PageCache(settings, upstream, store)
    background = [
        asyncio.create_task(files.run_access_flusher()),
        asyncio.create_task(run_evictor(files)),
    ]
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await files.close()
        await session.close()
        await store.close()
