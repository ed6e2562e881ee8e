"""The `explain` command line: each file of a package, its age, and whether the policy shows it."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from rich.filesize import decimal

from . import keys
from .app import create_app
from .config import Settings
from .credentials import for_warming
from .errors import ProxyError, Redirect
from .policy import Policy, iso, parse_upload_time
from .rendering import view_of
from .scope import Scope
from .simple import Project, is_sha256, is_valid_name, normalize
from .warm_cli import parse_scope

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True, slots=True)
class Row:
    """One file as `explain` prints it."""

    filename: str
    origin: str
    uploaded: str
    age: str
    size: str
    yanked: str
    seen: bool
    why: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scope", help="projects/ID or groups/ID (a path or a numeric id)")
    parser.add_argument("name", help="the package name")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    try:
        args.scope = parse_scope(args.scope)
    except ValueError as e:
        parser.error(str(e))
    if not is_valid_name(args.name):
        parser.error(f"{args.name!r} is not a package name")


def age_text(seconds: float) -> str:
    """A file's age to a person: '3d 4h', '2h 5m', '40s'."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def rows(
    project: Project,
    policy: Policy,
    now: float,
    sizes: dict[str, int],
    cached: set[str] | None,
) -> list[Row]:
    """Each file of the fetched page, as clients of the proxy see it at `now`; `sizes` of the
    cached files by sha256; `cached` offline: the sha256s a client may have."""
    shown = view_of(project, cached, policy, now)
    seen = {(f.sha256, f.filename) for f in shown.project.files}
    result = []
    for dist in project.files:
        uploaded = parse_upload_time(dist.upload_time)
        yanked = policy.yanked(project.name, dist)
        verdict = policy.verdict(project.name, dist, now)
        if (dist.sha256, dist.filename) in seen:
            why = ""
        elif not (dist.sha256 and is_sha256(dist.sha256)):
            why = "no sha256 on GitLab's page: cannot be served by hash"
        elif not verdict.visible:
            why = policy.message(dist.filename, verdict).removeprefix(dist.filename + " ")
        else:
            why = "not in the cache, and the proxy is offline"
        size = dist.size if dist.size is not None else sizes.get(dist.sha256 or "")
        result.append(
            Row(
                filename=dist.filename,
                origin="public index" if dist.public else "GitLab",
                uploaded=iso(uploaded) if uploaded is not None else "unknown",
                age=age_text(now - uploaded) if uploaded is not None else "unknown",
                size=decimal(size) if size is not None else "unknown",
                yanked="no" if yanked is False else "yes" if yanked is True else f"yes: {yanked}",
                seen=(dist.sha256, dist.filename) in seen,
                why=why,
            )
        )
    return result


def table(name: str, scope: Scope, found: list[Row]) -> Table:
    from rich.table import Table

    out = Table(title=f"{name} in {scope.key}")
    for column in ("file", "from", "uploaded", "age", "size", "yanked", "clients see it", "why"):
        out.add_column(column, overflow="fold")
    for row in found:
        out.add_row(
            row.filename,
            row.origin,
            row.uploaded,
            row.age,
            row.size,
            row.yanked,
            "yes" if row.seen else "no",
            row.why,
        )
    return out


async def explain(settings: Settings, scope: Scope, name: str) -> list[Row]:
    """The page of `name` in `scope` as the proxy has it: fetched through its page cache online
    (as the proxy's own credentials see it), the stored copy offline."""
    # As warm does: the proxy's own credentials, there is no client to pass any on.
    app = create_app(for_warming(settings))
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()
        pages = app[keys.PAGES]
        caller = app[keys.GATE].caller({})
        result = await pages.project(scope, normalize(name), caller)
        files = app[keys.FILES]
        sizes = {sha: blob.size for sha, blob in files.known.items()}
        cached = set(files.known) if files.upstream.offline else None
        return rows(result.project, pages.policy, time.time(), sizes, cached)
    finally:
        await runner.cleanup()


def main(settings: Settings, args: argparse.Namespace) -> int:
    try:
        found = asyncio.run(explain(settings, args.scope, args.name))
    except ProxyError as e:
        message = e.message
        if isinstance(e, Redirect):
            # A client of the proxy is sent there too, out of the [policy] rules' reach.
            message = (
                f"not in GitLab: GitLab forwards it to {e.headers['Location']} "
                "(upstream.forwarding = 'redirect': clients go there, the proxy lists nothing)"
            )
        print(
            f"gitlab-pypi-proxy: explain {args.scope.key} {args.name}: {message}", file=sys.stderr
        )
        return 1
    from rich.console import Console

    # Piped or captured, the table keeps whole lines rather than folding at 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(
        table(normalize(args.name), args.scope, found)
    )
    return 0
