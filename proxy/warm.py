"""`warm`'s engine: fill the cache while online, from requirements pip resolves or a whole scope."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from aiohttp import web
from packaging.requirements import Requirement

from . import keys
from .app import create_app
from .cachehealth import CacheMode
from .config import ConfigError, Settings
from .credentials import for_warming
from .files import X_CACHE, X_CHECKSUM_SHA256
from .fill import Fill, FillState
from .metadata import SUFFIX as METADATA_SUFFIX
from .scope import Scope
from .simple import Distribution, PageParseError, is_sha256, normalize, version_of
from .simple_html import parse_index_page, parse_project_page
from .upstream import REDIRECTS, message_of

# Enough to keep pip's ERROR lines without flooding the summary.
_REASON_LINES = 6


@dataclass(frozen=True, slots=True)
class Target:
    """One environment pip resolves for; None means the running interpreter's own."""

    python_version: str | None = None
    platform: str | None = None
    implementation: str | None = None
    abis: tuple[str, ...] = ()

    def pip_args(self) -> list[str]:
        args: list[str] = []
        if self.python_version:
            args += ["--python-version", self.python_version]
        if self.platform:
            args += ["--platform", self.platform]
        if self.implementation:
            args += ["--implementation", self.implementation]
        for abi in self.abis:
            args += ["--abi", abi]
        return args

    @property
    def restricted(self) -> bool:
        return bool(self.pip_args())

    def describe(self) -> str:
        parts = [
            f"python {self.python_version}" if self.python_version else "",
            self.platform or "",
            self.implementation or "",
            "/".join(self.abis),
        ]
        return ", ".join(p for p in parts if p) or "this interpreter"


@dataclass(frozen=True, slots=True)
class Plan:
    """What one warm-up fetches: the files pip resolves from requirements, or every file of
    the scope (or of `packages`) with `mirror_all`, or both."""

    scope: Scope
    requirements: tuple[str, ...] = ()
    requirement_files: tuple[Path, ...] = ()
    targets: tuple[Target, ...] = (Target(),)
    mirror_all: bool = False
    packages: tuple[Requirement, ...] = ()
    only_binary: bool = False
    jobs: int = 4

    @property
    def resolving(self) -> bool:
        return bool(self.requirements or self.requirement_files)


@dataclass
class Tally:
    """What this run did with each file, by sha256, as seen by the proxy serving it."""

    fills: dict[str, Fill] = field(default_factory=dict)
    present: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def add_fill(self, fill: Fill) -> None:
        # A retry after a failed fill replaces it: the last attempt is the outcome.
        self.fills[fill.sha256] = fill

    @property
    def fetched(self) -> dict[str, int]:
        return {sha: f.written for sha, f in self.fills.items() if f.state is FillState.DONE}

    def bytes_fetched(self) -> int:
        return sum(fill.written for fill in self.fills.values())

    def files_done(self) -> int:
        finished = {sha for sha, f in self.fills.items() if f.state is not FillState.RUNNING}
        return len(finished | set(self.present))

    def settle(self) -> None:
        """Turn failed fills into named failures; a file fetched is not also 'already there'."""
        for fill in self.fills.values():
            if fill.state is not FillState.DONE:
                reason = fill.error.message if fill.error else "download did not complete"
                self.failed.setdefault(fill.filename, reason)
        for sha in self.fetched:
            self.present.pop(sha, None)


class Warmer:
    """Drives pip and direct downloads against an in-process proxy, counting what they cause."""

    def __init__(self, app: web.Application, scope: Scope, jobs: int, *, resolving: bool) -> None:
        self.app = app
        self.scope = scope
        # pip's files are not known ahead, so with requirements there is no total to show.
        self.resolving = resolving
        self.jobs = asyncio.Semaphore(jobs)
        self.tally = Tally()
        self.total: int | None = None
        self.index_url = ""
        self.files_url = ""
        self._session: aiohttp.ClientSession | None = None

    def connect(self, base_url: str, session: aiohttp.ClientSession) -> None:
        """Where the proxy listens, once it does."""
        self.index_url = f"{base_url}{self.scope.api_path}/simple/"
        self.files_url = f"{base_url}{self.scope.api_path}/files/"
        self._session = session
        self.app[keys.FILES].events.on_fill(self.tally.add_fill)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "connect() first"
        return self._session

    async def record(self, request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: every file the proxy answers from the cache."""
        sha256 = response.headers.get(X_CHECKSUM_SHA256)
        # A wheel's METADATA (PEP 658) is derived from the wheel, not a file of the mirror.
        if sha256 is None or request.path.endswith(METADATA_SUFFIX):
            return
        # Fills are counted as they start (see connect); here only hits.
        blob = self.app[keys.FILES].known.get(sha256)
        if response.headers.get(X_CACHE) == "HIT" and blob is not None:
            self.tally.present[sha256] = blob.size

    async def index(self) -> None:
        """The scope's index page, so the offline side can list it too."""
        status, body = await self._get(self.index_url)
        if status != 200:
            self.tally.failed["index page"] = _message(status, body)

    async def resolve(
        self,
        target: Target,
        requirements: Sequence[str],
        files: Sequence[Path],
        only_binary: bool,
    ) -> None:
        """pip resolves for `target` through the proxy, then every file it chose is made sure of."""
        async with self.jobs:
            chosen = await self._pip(target, requirements, files, only_binary)
        if chosen is None:
            return
        through_proxy = []
        for url, sha256, filename in chosen:
            if url.startswith(self.files_url) and is_sha256(sha256):
                through_proxy.append(self.ensure(sha256, filename))
            else:
                self.tally.failed[filename] = (
                    f"pip was sent elsewhere for it ({_host(url)}): GitLab forwards this name; "
                    "set upstream.forwarding = 'cache' and forward_hosts to mirror it"
                )
        await asyncio.gather(*through_proxy)

    async def mirror(self, packages: Sequence[Requirement], only_binary: bool) -> None:
        """Every file of every package (or of `packages`) the scope's pages list."""
        if packages:
            wanted = {normalize(p.name): p for p in packages}
        else:
            status, body = await self._get(self.index_url)
            if status != 200:
                self.tally.failed["index page"] = _message(status, body)
                return
            wanted = {normalize(n): Requirement(n) for n in parse_index_page(body).projects}
        pages = await asyncio.gather(*(self._files_of(req, only_binary) for req in wanted.values()))
        dists = [d for page in pages for d in page]
        if not self.resolving:
            self.total = len({d.sha256 for d in dists})
        await asyncio.gather(*(self.ensure(d.sha256 or "", d.filename) for d in dists))

    async def ensure(self, sha256: str, filename: str) -> None:
        """The file in the cache: already there, or fetched through the proxy now."""
        files = self.app[keys.FILES]
        blob = files.hit(sha256, filename)
        if blob is not None:
            self.tally.present.setdefault(sha256, blob.size)
            return
        url = f"{self.files_url}{sha256}/{quote(filename, safe='')}"
        async with self.jobs:
            try:
                async with self.session.get(url) as resp:
                    if resp.status != 200:
                        self.tally.failed[filename] = _message(resp.status, await resp.read())
                        return
                    async for _ in resp.content.iter_chunked(256 * 1024):
                        pass
            except aiohttp.ClientError:
                # The proxy cut the download: the fill failed, and settle() names its reason.
                if sha256 not in self.tally.fills:
                    self.tally.failed[filename] = "the download was cut"

    async def _files_of(self, req: Requirement, only_binary: bool) -> list[Distribution]:
        name = normalize(req.name)
        status, body = await self._get(f"{self.index_url}{name}/")
        if status != 200:
            self.tally.failed[f"page {name}"] = _message(status, body)
            return []
        try:
            project = parse_project_page(body, f"{self.index_url}{name}/", name)
        except PageParseError:
            self.tally.failed[f"page {name}"] = "not a simple page"
            return []
        chosen = []
        for dist in project.files:
            version = version_of(dist.filename)
            if dist.sha256 is None or not is_sha256(dist.sha256) or version is None:
                continue
            if only_binary and not dist.is_wheel:
                continue
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                continue
            chosen.append(dist)
        return chosen

    async def _get(self, url: str) -> tuple[int, bytes]:
        # Not followed: a redirect means GitLab forwards the name, which --all cannot mirror.
        async with self.jobs, self.session.get(url, allow_redirects=False) as resp:
            return resp.status, await resp.read()

    async def _pip(
        self,
        target: Target,
        requirements: Sequence[str],
        files: Sequence[Path],
        only_binary: bool,
    ) -> list[tuple[str, str, str]] | None:
        """(url, sha256, filename) of every file pip resolved, or None when it failed."""
        with tempfile.TemporaryDirectory(prefix="gitlab-pypi-proxy-warm-") as tmp:
            report = Path(tmp) / "report.json"
            args = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--isolated",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
                "--quiet",
                "--report",
                str(report),
                "--index-url",
                self.index_url,
                *target.pip_args(),
                # pip only resolves for another environment from wheels.
                *(["--only-binary", ":all:"] if only_binary or target.restricted else []),
                *itertools.chain.from_iterable(("-r", str(f)) for f in files),
                *requirements,
            ]
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=_pip_env(),
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                self.tally.failed[f"resolving for {target.describe()}"] = _pip_reason(err)
                return None
            data = json.loads(await asyncio.to_thread(report.read_text, encoding="utf-8"))
        return list(_report_files(data))


def _report_files(report: object) -> Iterator[tuple[str, str, str]]:
    """(url, sha256, filename) of the files in a pip installation report."""
    installs = report.get("install", []) if isinstance(report, dict) else []
    for item in installs:
        url = str(item.get("download_info", {}).get("url", ""))
        head, _, filename = url.rpartition("/")
        yield url, head.rpartition("/")[2], unquote(filename)


def _host(url: str) -> str:
    return urlsplit(url).netloc or "another host"


def _pip_env() -> dict[str, str]:
    """This environment without pip's own config: only the proxy is an index for this pip."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    # The proxy is on loopback: no HTTP proxy from the environment may stand in between.
    env["NO_PROXY"] = env["no_proxy"] = ",".join(
        filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1"])
    )
    return env


def _pip_reason(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines
    return " / ".join(errors[-_REASON_LINES:]) or "pip failed"


def _message(status: int, body: bytes) -> str:
    if status in REDIRECTS:
        return (
            "GitLab forwards this name to the public index; set upstream.forwarding = 'cache'"
            " and forward_hosts to mirror it"
        )
    message = message_of(body, status)
    return f"HTTP {status}" if message == str(status) else f"{status}: {message}"


@contextlib.asynccontextmanager
async def _served(app: web.Application) -> AsyncIterator[str]:
    """The proxy itself on a free loopback port, for pip and for the direct downloads."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
    try:
        # Inside the try: when one resource fails to start, cleanup closes those before it.
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def warm(
    settings: Settings, plan: Plan, watch: Callable[[Warmer], Coroutine[Any, Any, None]]
) -> Tally:
    """Run `plan` through an in-process proxy and return what it did; `watch(warmer)` runs
    beside it (a progress display), cancelled when the downloads are over."""
    settings = for_warming(settings)
    app = create_app(settings)
    warmer = Warmer(app, plan.scope, plan.jobs, resolving=plan.resolving)
    app.on_response_prepare.append(warmer.record)
    async with (
        _served(app) as url,
        aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=settings.upstream.timeout * 4),
            trust_env=False,
        ) as session,
    ):
        health = app[keys.FILES].health
        if health.mode is not CacheMode.READ_WRITE:
            # It would pass every file through and keep none: say so instead.
            raise ConfigError(f"cache.dir: {health.problem}; warm needs a cache it can write")
        warmer.connect(url, session)
        watcher = asyncio.create_task(watch(warmer))
        try:
            await warmer.index()
            jobs = []
            if plan.resolving:
                jobs += [
                    warmer.resolve(t, plan.requirements, plan.requirement_files, plan.only_binary)
                    for t in plan.targets
                ]
            if plan.mirror_all:
                jobs.append(warmer.mirror(plan.packages, plan.only_binary))
            await asyncio.gather(*jobs)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    # The proxy has stopped, so every fill it ran has ended one way or the other.
    warmer.tally.settle()
    return warmer.tally
