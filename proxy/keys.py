"""Typed `web.AppKey`s for every shared resource of the application."""

from __future__ import annotations

from aiohttp import web

from .access import AccessGuard
from .auth import Gatekeeper
from .blobs import BlobStore
from .cluster import Cluster
from .config import Settings
from .files import FileCache
from .metadata import CoreMetadata
from .metrics import Metrics
from .pages import PageCache
from .rendering import PageRenderer
from .shared_tier import SharedTier
from .store import Store
from .upstream import Upstream

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
BLOBS = web.AppKey("blobs", BlobStore)
UPSTREAM = web.AppKey[Upstream]("upstream")
# None without storage.url: the local disk only.
SHARED = web.AppKey[SharedTier | None]("shared_tier")
FILES = web.AppKey("files", FileCache)
PAGES = web.AppKey("pages", PageCache)
GATE = web.AppKey("gate", Gatekeeper)
ACCESS = web.AppKey("access", AccessGuard)
METRICS = web.AppKey("metrics", Metrics)
METADATA = web.AppKey("metadata", CoreMetadata)
RENDERER = web.AppKey("renderer", PageRenderer)
CLUSTER = web.AppKey("cluster", Cluster)
