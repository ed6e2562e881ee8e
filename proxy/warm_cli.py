"""The `warm` command line: its arguments, its progress bar and its summary (engine: warm.py)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement
from rich.filesize import decimal

from .config import Settings
from .errors import ProxyError
from .scope import Scope
from .warm import Plan, Tally, Target, Warmer, warm

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn, TaskID
    from rich.table import Table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scope", help="projects/ID or groups/ID (a path or a numeric id)")
    parser.add_argument("requirements", nargs="*", help="requirement strings, e.g. 'foo>=1.2'")
    parser.add_argument(
        "-r",
        "--requirement",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="requirements file; repeatable",
    )
    for flag, metavar, what in [
        ("--python-version", "VERSION", "e.g. 3.11"),
        ("--platform", "PLATFORM", "e.g. manylinux2014_x86_64, win_amd64"),
        ("--implementation", "NAME", "e.g. cp, pp"),
        ("--abi", "ABI", "e.g. cp311, abi3"),
    ]:
        parser.add_argument(
            flag,
            action="append",
            metavar=metavar,
            help=f"target environment ({what}); repeatable",
        )
    parser.add_argument("--all", action="store_true", help="every file of every package in scope")
    parser.add_argument(
        "--package",
        action="append",
        type=_requirement,
        default=[],
        help="with --all: only this package, optionally with a version specifier ('foo>=1.2')",
    )
    parser.add_argument("--only-binary", action="store_true", help="wheels only, no sdists")
    parser.add_argument(
        "--jobs", type=_positive, default=4, metavar="N", help="concurrent downloads (default: 4)"
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations that could only do nothing or something else than asked."""
    try:
        args.scope = parse_scope(args.scope)
    except ValueError as e:
        parser.error(str(e))
    wants_resolve = bool(args.requirements or args.requirement)
    if not (wants_resolve or args.all):
        parser.error("warm needs requirements (-r FILE or 'name>=1.0') or --all")
    if args.package and not args.all:
        parser.error("--package filters --all; for requirements, name them directly")
    if not wants_resolve and any(t.restricted for t in targets_of(args)):
        parser.error("--python-version/--platform/--implementation/--abi shape requirements")
    for path in args.requirement:
        if not path.is_file():
            parser.error(f"-r {path}: no such file")


def parse_scope(text: str) -> Scope:
    """A scope argument, or ValueError saying what is wrong with it."""
    try:
        return Scope.from_text(text)
    except ProxyError as e:
        raise ValueError(f"{text!r}: {e.message}") from None


def targets_of(args: argparse.Namespace) -> list[Target]:
    """Every combination of the target flags; ABIs go together, pip picks among them."""
    return [
        Target(python, platform, implementation, tuple(args.abi or ()))
        for python, platform, implementation in itertools.product(
            args.python_version or [None], args.platform or [None], args.implementation or [None]
        )
    ]


def plan_of(args: argparse.Namespace) -> Plan:
    """What checked arguments ask the warm-up to fetch."""
    return Plan(
        scope=args.scope,
        requirements=tuple(args.requirements),
        requirement_files=tuple(args.requirement),
        targets=tuple(targets_of(args)),
        mirror_all=args.all,
        packages=tuple(args.package),
        only_binary=args.only_binary,
        jobs=args.jobs,
    )


def _requirement(text: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _bytes_column() -> ProgressColumn:
    """Bytes fetched from upstream so far, and the rate since the start."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class BytesColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            fetched = int(task.fields.get("fetched", 0))
            elapsed = task.elapsed or 0.0
            rate = fetched / elapsed if elapsed > 0 else 0.0
            return Text(f"{decimal(fetched)} at {decimal(int(rate))}/s", style="progress.download")

    return BytesColumn()


async def _tick(progress: Progress, task: TaskID, warmer: Warmer) -> None:
    while True:
        tally = warmer.tally
        progress.update(
            task,
            completed=tally.files_done(),
            total=warmer.total,
            fetched=tally.bytes_fetched(),
        )
        await asyncio.sleep(0.2)


async def _warm_showing_progress(settings: Settings, plan: Plan) -> Tally:
    """The warm-up, with a progress bar on stderr while it runs."""
    # Here, not at the top: `serve` never needs rich's console, and it costs start-up time.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        _bytes_column(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task(plan.scope.key, total=None, fetched=0)
        tally = await warm(settings, plan, lambda warmer: _tick(progress, task, warmer))
        done = tally.files_done()
        progress.update(task, completed=done, total=done, fetched=tally.bytes_fetched())
    return tally


def summary(tally: Tally, scope: Scope) -> Table:
    from rich.table import Table

    fetched = tally.fetched
    table = Table(title=f"warm-up of {scope.key}")
    table.add_column("")
    table.add_column("files", justify="right")
    table.add_column("size", justify="right")
    table.add_row("fetched", str(len(fetched)), decimal(sum(fetched.values())))
    table.add_row("already there", str(len(tally.present)), decimal(sum(tally.present.values())))
    table.add_row("failed", str(len(tally.failed)), "")
    total = sum(fetched.values()) + sum(tally.present.values())
    table.add_row("total", str(len(fetched) + len(tally.present)), decimal(total))
    return table


def main(settings: Settings, args: argparse.Namespace) -> int:
    if settings.cache.offline:
        print(
            "gitlab-pypi-proxy: warm needs the network, and cache.offline is set", file=sys.stderr
        )
        return 2
    started = time.monotonic()
    tally = asyncio.run(_warm_showing_progress(settings, plan_of(args)))
    from rich.console import Console

    Console().print(summary(tally, args.scope))
    elapsed = time.monotonic() - started
    print(f"took {elapsed:.1f}s")
    for what, why in sorted(tally.failed.items()):
        print(f"failed: {what}: {why}", file=sys.stderr)
    return 1 if tally.failed else 0
