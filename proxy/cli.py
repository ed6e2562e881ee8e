"""Command line: `serve` (and the maintenance subcommands), all reading the same config."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger
from rich.filesize import decimal

from . import bundle, explain_cli, maintenance, warm_cli
from .access import hash_token
from .accesslog import AccessLog, access_logger_class, root_stream
from .app import create_app
from .blobs import BlobStore, LocalBlobStore
from .config import ConfigError, Settings, inert_settings, load_settings
from .connections import ConnectionGuard, capacity_for, raise_open_files_limit
from .log import ACCESS_LOGGER, MIN_SECRET_LENGTH, announce_start, setup_logging
from .metrics import Metrics
from .shared_tier import TierFailed, open_shared_tier
from .store import DB_NAME, Store
from .workers import exec_supervisor

log = logging.getLogger("proxy")


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, what: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help starts by saying what it does, and takes --config FILE."""
    parser = commands.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
    if name != "hash-token":
        parser.add_argument(
            "--config",
            type=Path,
            dest="sub_config",
            metavar="FILE",
            help="TOML config file (default: $GITLAB_PYPI_PROXY_CONFIG)",
        )
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitlab-pypi-proxy",
        description="A caching pull-through proxy in front of GitLab's PyPI registry.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('gitlab-pypi-proxy')}"
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (default: $GITLAB_PYPI_PROXY_CONFIG)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = _command(commands, "serve", "run the proxy")
    serve.add_argument("--host", metavar="ADDRESS", help="address to bind (server.host)")
    serve.add_argument("--port", type=int, help="port to bind (server.port)")
    serve.add_argument(
        "--offline", action="store_true", help="never contact upstream (cache.offline)"
    )
    warm_parser = _command(
        commands, "warm", "fill the cache from requirements or a whole scope, while online"
    )
    warm_cli.add_arguments(warm_parser)
    explain = _command(
        commands,
        "explain",
        "list a package's files: upload time, age, size, yanked, and whether [policy] shows them",
    )
    explain_cli.add_arguments(explain)
    export = _command(commands, "export", "write cached pages and files to a bundle")
    bundle.add_export_arguments(export)
    import_ = _command(commands, "import", "merge a bundle into the cache, verified")
    bundle.add_import_arguments(import_)
    hash_cmd = _command(
        commands,
        "hash-token",
        "print the access.tokens_file line (or ops_tokens entry) for a token from stdin",
    )
    hash_cmd.add_argument(
        "--generate",
        action="store_true",
        help="make a new random token, print it on stderr and its hash line on stdout",
    )
    verify = _command(
        commands,
        "verify",
        "re-hash every cached file (and the shared tier's, with storage.url); "
        "remove and list bad ones (exit 1 if any)",
    )
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    _command(commands, "gc", "evict least recently used files beyond cache.max_size now")
    return parser


def hash_token_command(generate: bool) -> int:
    """Read a token (never from argv, where `ps` shows it) and print its tokens-file line."""
    if generate:
        token = secrets.token_urlsafe(32)
        print(f"token: {token}", file=sys.stderr)
    elif sys.stdin.isatty():
        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.readline().strip()
    if not token:
        print("gitlab-pypi-proxy: hash-token: no token given", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


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
    # Built before any worker starts: a bad tokens file is one ConfigError line, not N crashes.
    app = create_app(settings)
    # Before the workers start, so they inherit it: 1,024 is little for an open port.
    before, open_files = raise_open_files_limit()
    log.info(
        "open files: limit %d%s, room for %d client connections per process",
        open_files,
        f" (raised from {before})" if before != open_files else "",
        capacity_for(open_files),
    )
    _warn_short_token(settings)
    for line in inert_settings(settings):
        log.warning("%s", line)
    if settings.server.workers > 1:
        try:
            exec_supervisor(settings)
        except OSError as e:
            # Serving in one process beats not serving at all.
            log.warning("cannot start workers (%s: %s): serving in one process", sys.executable, e)
    return asyncio.run(_serve(settings, app, _guard(settings)))


def _guard(settings: Settings) -> ConnectionGuard:
    """This process's connection guard, sized by the open-files limit it has (or inherited)."""
    _, open_files = raise_open_files_limit()
    return ConnectionGuard(settings.server.header_timeout, capacity_for(open_files))


def _warn_short_token(settings: Settings) -> None:
    token = settings.upstream.token
    if token and len(token) < MIN_SECRET_LENGTH:
        log.warning(
            "upstream.token is only %d characters: GitLab's tokens are longer, and one this "
            "short cannot be told from ordinary words, so logs blank it only where a "
            "credential goes (headers, URLs)",
            len(token),
        )


async def _serve(
    settings: Settings,
    app: web.Application,
    guard: ConnectionGuard,
    *,
    lifeline: int | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT, then stop accepting and let in-flight requests finish.

    `lifeline`: in a worker, the pipe whose end means the supervisor is gone.
    """
    server = settings.server
    reuse_port = lifeline is not None
    access_log = None
    if server.access_log:
        stream, lock = root_stream()
        access_log = AccessLog(stream, server.log_format, lock)
    handler_args: dict[str, Any] = {
        "access_log_class": access_logger_class(access_log) if access_log else AccessLogger,
        "access_log": logging.getLogger(ACCESS_LOGGER) if access_log else None,
        # An idle connection between two requests is closed after this.
        "keepalive_timeout": server.keepalive_timeout,
    }
    app.middlewares.insert(0, guard.middleware())
    runner = web.AppRunner(
        app,
        handle_signals=False,
        # Each request still running gets this long to finish, then it is cancelled.
        shutdown_timeout=server.shutdown_grace,
        **handler_args,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(guard.exception_handler)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if lifeline is not None:

        def supervisor_gone() -> None:
            if not os.read(lifeline, 1):
                loop.remove_reader(lifeline)
                log.warning("the supervisor is gone; stopping")
                stop.set()

        loop.add_reader(lifeline, supervisor_gone)
    try:
        # Inside the try: when one resource fails to start, cleanup closes those before it.
        await runner.setup()
        try:
            site = guard.site(
                runner, server.host, server.port, reuse_port=reuse_port, **handler_args
            )
            await site.start()
        except OSError as e:
            log.error("cannot listen on %s:%d: %s", server.host, server.port, e.strerror)
            return 1
        if lifeline is None:
            # A worker's supervisor announced the instance once it held the port.
            announce_start(settings)
        await stop.wait()
        # A second signal now stops the process at once (SQLite's WAL survives that).
        for signum in (signal.SIGTERM, signal.SIGINT):
            if reuse_port:
                # A worker: the terminal or systemd may signal it beside its supervisor, which
                # escalates by itself; a second signal must not cut the drain short.
                loop.add_signal_handler(signum, lambda: None)
            else:
                loop.remove_signal_handler(signum)
        log.info(
            "stopping: no new connections; requests in flight get up to %gs",
            server.shutdown_grace,
        )
    finally:
        await runner.cleanup()
        if access_log is not None:
            access_log.close()
    log.info("stopped")
    return 0


def serve_worker(settings: Settings, lifeline: int, shared: Path | None) -> int:
    """One of `server.workers` processes, all bound to one port with SO_REUSEPORT.

    `shared` is where the workers publish their counters; `lifeline` ends with the supervisor,
    which announced the instance.
    """
    setup_logging(settings.server.log_format, [settings.upstream.token])
    try:
        app = create_app(settings, shared)
    except ConfigError as e:
        print(f"gitlab-pypi-proxy: config error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(settings, app, _guard(settings), lifeline=lifeline))


async def _open_cache(settings: Settings) -> tuple[Store, BlobStore]:
    """An existing cache: a mistyped cache.dir must not be reported as an empty, healthy one."""
    database = settings.cache.dir / DB_NAME
    if not database.is_file():
        raise ConfigError(f"cache.dir: no cache in {settings.cache.dir} ({DB_NAME} is missing)")
    return await Store.open(database), LocalBlobStore(settings.cache.dir)


async def _verify(settings: Settings, quiet: bool) -> int:
    # Only here: rich.progress alone is tens of milliseconds of every start-up.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

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
    if settings.storage.url:
        tier_report = await _verify_shared(settings, quiet)
        if tier_report is None:
            return 1
        report.checked += tier_report.checked
        report.checked_bytes += tier_report.checked_bytes
        report.bad += tier_report.bad
    for line in report.bad:
        print(f"bad (removed): {line}")
    for line in report.missing:
        print(f"missing (row removed): {line}")
    print(
        f"verified {report.checked} files ({decimal(report.checked_bytes)}): "
        f"{len(report.bad)} bad, {len(report.missing)} missing, {report.skipped} busy"
    )
    return 0 if report.ok else 1


async def _verify_shared(settings: Settings, quiet: bool) -> maintenance.VerifyReport | None:
    """The shared tier's objects re-hashed, bad ones removed; None when it does not answer."""
    from rich.progress import DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    async with open_shared_tier(settings.storage, Metrics()) as tier:
        assert tier is not None
        with Progress(
            TextColumn(f"verifying {settings.storage.url}"),
            DownloadColumn(),
            TransferSpeedColumn(),
            disable=quiet,
        ) as progress:
            task = progress.add_task("verify", total=None)
            try:
                return await maintenance.verify_shared(tier, lambda n: progress.advance(task, n))
            except TierFailed as e:
                print(f"gitlab-pypi-proxy: {e}", file=sys.stderr)
                return None


async def _gc(settings: Settings) -> int:
    store, blobs = await _open_cache(settings)
    try:
        removed_temp, report = await maintenance.gc(store, blobs, settings.cache.max_size)
    finally:
        await store.close()
    print(
        f"gc: removed {report.removed} files ({decimal(report.freed)}) and {removed_temp} temp "
        f"files; cache now {decimal(report.after)} of {limit_text(settings.cache.max_size)}; "
        f"{report.busy} in use kept"
    )
    return 0


def limit_text(nbytes: int) -> str:
    """A limit as it was likely written: '20 GiB' for a whole binary unit, else '17.4 MB'."""
    for power, unit in ((4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if nbytes and nbytes % 1024**power == 0:
            return f"{nbytes // 1024**power} {unit}"
    return decimal(nbytes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "hash-token":
        return hash_token_command(args.generate)
    if args.command == "warm":
        warm_cli.check_arguments(parser, args)
    if args.command == "explain":
        explain_cli.check_arguments(parser, args)
    try:
        return _run(args, _settings(args))
    except ConfigError as e:
        print(f"gitlab-pypi-proxy: config error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        return serve(settings)
    setup_logging(settings.server.log_format, [settings.upstream.token], level=logging.WARNING)
    if args.command == "warm":
        return warm_cli.main(settings, args)
    if args.command == "explain":
        return explain_cli.main(settings, args)
    if args.command == "export":
        return bundle.export_main(settings, args)
    if args.command == "import":
        return bundle.import_main(settings, args)
    if args.command == "verify":
        return asyncio.run(_verify(settings, args.quiet))
    if args.command == "gc":
        return asyncio.run(_gc(settings))
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects the rest
