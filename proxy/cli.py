"""Command line: `serve` (and the maintenance subcommands), all reading the same config."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from . import maintenance
from .app import DB_NAME, create_app
from .blobs import BlobStore
from .config import ConfigError, Settings, load_settings
from .log import setup_logging
from .store import Store
from .workers import supervise

log = logging.getLogger("proxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitlab-pypi-proxy",
        description="A caching pull-through proxy in front of GitLab's PyPI registry.",
    )
    parser.add_argument(
        "--config", type=Path, help="TOML config file (default: $GITLAB_PYPI_PROXY_CONFIG)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, dest="sub_config", help="TOML config file")
    serve.add_argument("--host", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to bind (server.port)")
    serve.add_argument(
        "--offline", action="store_true", help="never contact upstream (cache.offline)"
    )
    verify = commands.add_parser(
        "verify", help="re-hash every cached file; remove and list bad ones (exit 1 if any)"
    )
    verify.add_argument("--config", type=Path, dest="sub_config", help="TOML config file")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    gc = commands.add_parser("gc", help="evict least recently used files beyond cache.max_size now")
    gc.add_argument("--config", type=Path, dest="sub_config", help="TOML config file")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(getattr(args, "sub_config", None) or args.config)
    server = settings.server
    if getattr(args, "host", None):
        server = dataclasses.replace(server, host=args.host)
    if getattr(args, "port", None) is not None:
        if not 0 < args.port < 65536:
            raise ConfigError(f"--port: {args.port} is not a TCP port")
        server = dataclasses.replace(server, port=args.port)
    cache = settings.cache
    if getattr(args, "offline", False):
        cache = dataclasses.replace(cache, offline=True)
    return dataclasses.replace(settings, server=server, cache=cache)


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    setup_logging(settings.server.log_format, [settings.upstream.token])
    if settings.server.workers > 1 and not reuse_port:
        return supervise(settings, serve_worker)
    log.info(
        "gitlab-pypi-proxy serving http://%s:%d/ in front of %s, cache in %s",
        settings.server.host,
        settings.server.port,
        settings.upstream.url,
        settings.cache.dir,
    )
    web.run_app(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        print=None,
        shutdown_timeout=settings.server.shutdown_grace,
        reuse_port=reuse_port or None,
    )
    return 0


def serve_worker(settings: Settings) -> int:
    """One of `server.workers` processes, all bound to one port with SO_REUSEPORT."""
    return serve(settings, reuse_port=True)


async def _open_cache(settings: Settings) -> tuple[Store, BlobStore]:
    settings.cache.dir.mkdir(parents=True, exist_ok=True)
    return await Store.open(settings.cache.dir / DB_NAME), BlobStore(settings.cache.dir)


async def _verify(settings: Settings, quiet: bool) -> int:
    store, blobs = await _open_cache(settings)
    try:
        count, size = await maintenance.census(blobs)
        with Progress(
            TextColumn("verifying {task.fields[count]} files"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            disable=quiet,
        ) as progress:
            task = progress.add_task("verify", total=size, count=count)
            report = await maintenance.verify(store, blobs, lambda n: progress.advance(task, n))
    finally:
        await store.close()
    for line in report.bad:
        print(f"bad (removed): {line}")
    for line in report.missing:
        print(f"missing (row removed): {line}")
    print(
        f"verified {report.checked} files ({report.checked_bytes} bytes): "
        f"{len(report.bad)} bad, {len(report.missing)} missing, {report.skipped} busy"
    )
    return 0 if report.ok else 1


async def _gc(settings: Settings) -> int:
    store, blobs = await _open_cache(settings)
    try:
        removed_temp, report = await maintenance.gc(store, blobs, settings.cache.max_size)
    finally:
        await store.close()
    print(
        f"gc: removed {report.removed} files ({report.freed} bytes) and {removed_temp} temp files; "
        f"cache now {report.after} of {settings.cache.max_size} bytes; {report.busy} in use kept"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as e:
        print(f"gitlab-pypi-proxy: config error: {e}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings)
    setup_logging(settings.server.log_format, [settings.upstream.token], level=logging.WARNING)
    if args.command == "verify":
        return asyncio.run(_verify(settings, args.quiet))
    if args.command == "gc":
        return asyncio.run(_gc(settings))
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects the rest
