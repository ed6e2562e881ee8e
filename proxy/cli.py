"""Command line: `serve` (and the maintenance subcommands), all reading the same config."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from aiohttp.log import access_logger

from .app import create_app
from .config import ConfigError, Settings, load_settings
from .log import setup_logging

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


def serve(settings: Settings) -> int:
    setup_logging(settings.server.log_format, [settings.upstream.token])
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
        access_log=access_logger if settings.server.access_log else None,
        shutdown_timeout=settings.server.shutdown_grace,
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
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects the rest
