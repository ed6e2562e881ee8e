"""Typed `web.AppKey`s for every shared resource of the application."""

from __future__ import annotations

from aiohttp import web

from .blobs import BlobStore
from .config import Settings
from .files import FileCache
from .metadata import CoreMetadata
from .pages import PageCache
from .rendering import PageRenderer
from .store import Store
from .upstream import Upstream

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
BLOBS = web.AppKey("blobs", BlobStore)
UPSTREAM = web.AppKey("upstream", Upstream)
FILES = web.AppKey("files", FileCache)
PAGES = web.AppKey("pages", PageCache)
METADATA = web.AppKey("metadata", CoreMetadata)
RENDERER = web.AppKey("renderer", PageRenderer)
