"""Upload times and sizes of GitLab-hosted files: from GitLab's REST Packages API, then SQLite."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from packaging.version import InvalidVersion, Version

from .cachehealth import Throttled
from .credentials import CredentialPolicy
from .errors import Offline, ProxyError
from .scope import Scope
from .simple import Distribution, Project, is_sha256, normalize, pep700_time, version_of
from .store import Store, UploadTimeRow
from .upstream import ApiAnswer, Upstream

log = logging.getLogger(__name__)

# REST calls in flight at once, over every page this process is fetching.
CONCURRENCY = 8
# The most rows GitLab gives in one page of a list.
PER_PAGE = "100"
# GitLab counts a list's pages (X-Total-Pages) only up to 10,000 rows: a count above this is
# not GitLab's, and is never trusted with that many requests at once.
COUNTED_PAGES = 10_000 // int(PER_PAGE)
# The most pages of one list followed by its next-page links: a group's rows of every name that
# contains the search term may run past GitLab's count, but a list without end is not GitLab's.
MAX_PAGES = 1_000
# Why the times stay unknown, for /-/ready and the log; each ends with what to do.
_TOKEN_ADVICE = "use a token with read_api as upstream.token"
# GitLab's fuzzy name search matches a substring only from this many characters on.
_MIN_PARTIAL_MATCH = 3
# A file's key in GitLab's answers and in the index: its sha256 and its filename.
FileKey = tuple[str, str]
# Whom GitLab's Packages API is left alone for after an answer without times: everything for
# `recheck` after a refusal of the token, or for `retry` after a failure; the one scope for
# `recheck` after its 404 (hidden from the token, or an upstream without the REST API).
_Hold = Literal["recheck", "retry", "scope"]


class _Unknown(Exception):
    """GitLab's Packages API did not tell; the message says why, for an operator."""

    def __init__(self, message: str, *, hold: _Hold | None) -> None:
        super().__init__(message)
        self.message = message
        self.hold = hold


@dataclass(frozen=True, slots=True)
class _Package:
    """One version's row in the Packages API: where its files are listed."""

    project: Scope
    id: int


class UploadTimes:
    """Fills `size` and `upload_time` of the files GitLab hosts, from what is known, else from
    GitLab's Packages API, asking only about the versions with a file not yet known.

    The REST API takes `Private-Token` or Bearer tokens with read_api, never Basic and never a
    deploy token: with those the fields stay absent (they are never guessed), pages are served as
    ever, and `problem` says why, logged once.
    """

    def __init__(
        self,
        policy: CredentialPolicy,
        upstream: Upstream,
        store: Store,
        *,
        recheck: float,
        retry: float,
        wait: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.upstream = upstream
        self.store = store
        self._recheck = recheck
        self._retry = retry
        # Seconds a page waits for GitLab's answer; a slower one is kept for its next fetch.
        self.wait = wait
        self._clock = clock
        # Until when not to ask, per scope key; "" holds every scope.
        self._held_until: dict[str, float] = {}
        self._slots = asyncio.Semaphore(CONCURRENCY)
        # What is being learnt of each (scope key, name), also once its page has gone without.
        self._learning: dict[tuple[str, str], asyncio.Future[dict[FileKey, UploadTimeRow]]] = {}
        # Why some upload times are unknown now; None while GitLab answers.
        self.problem: str | None = None
        self._db_warn = Throttled(log)

    async def fill(self, scope: Scope, name: str, project: Project) -> Project:
        """`project` (a page GitLab served for `name` in `scope`) with every size and upload
        time known or learnt; files that already carry an upload time are left as they are."""
        asked = [
            index
            for index, dist in enumerate(project.files)
            if dist.upload_time is None
            and dist.sha256 is not None
            and is_sha256(dist.sha256)
            # The Dependency Firewall's public files are not GitLab's packages.
            and not self.upstream.may_be_forward_route(dist.url)
        ]
        if not asked:
            return project
        files = list(project.files)
        known = await self._known(files[i].sha256 or "" for i in asked)
        missing = _apply(files, asked, known)
        if missing and self._may_ask(scope):
            wanted = {
                (files[i].sha256 or "", files[i].filename): v
                for i in missing
                if (v := version_of(files[i].filename)) is not None
            }
            learnt = await self._learn_within(scope, normalize(name), wanted)
            if learnt:
                _apply(files, missing, learnt)
        if files == list(project.files):
            return project
        return project.with_files(tuple(files))

    def pending(self, scope: Scope, name: str) -> bool:
        """Whether GitLab's answer about `name` in `scope` is still to come: a page that went
        without it may show files the age rules would hide by it."""
        return (scope.key, normalize(name)) in self._learning

    async def _learn_within(
        self, scope: Scope, name: str, wanted: dict[FileKey, Version]
    ) -> dict[FileKey, UploadTimeRow]:
        """What GitLab says within `wait` seconds. A slower answer still comes and is kept, so
        the page's next fetch has it from the index; this one goes without."""
        key = (scope.key, name)
        learning = self._learning.get(key)
        if learning is None:
            learning = asyncio.ensure_future(self._learn_and_keep(scope, name, wanted))
            self._learning[key] = learning

            def finished(future: asyncio.Future[dict[FileKey, UploadTimeRow]]) -> None:
                self._learning.pop(key, None)
                # Retrieved even when no page waits for it any more, so asyncio does not log it.
                if not future.cancelled():
                    future.exception()

            learning.add_done_callback(finished)
        done, _ = await asyncio.wait({learning}, timeout=self.wait)
        if not done:
            self._report(
                f"upload times unknown for some pages: GitLab's Packages API answers slower "
                f"than {self.wait:g}s (a sixth of upstream.timeout); its answers are kept for "
                "the pages' next fetch"
            )
            return {}
        return learning.result()

    async def _learn_and_keep(
        self, scope: Scope, name: str, wanted: dict[FileKey, Version]
    ) -> dict[FileKey, UploadTimeRow]:
        learnt = await self._learn(scope, name, wanted)
        if learnt:
            await self._keep(learnt.values())
        return learnt

    async def _known(self, sha256s: Iterable[str]) -> dict[FileKey, UploadTimeRow]:
        try:
            rows = await self.store.upload_times(sha256s)
        except sqlite3.Error as e:
            # The page still comes; GitLab is asked what the index cannot say.
            self._db_warn.log(logging.WARNING, "could not read upload times: %s", e)
            return {}
        return {(r.sha256, r.filename): r for r in rows}

    async def _keep(self, rows: Iterable[UploadTimeRow]) -> None:
        try:
            await self.store.put_upload_times(rows)
        except sqlite3.Error as e:
            # A full disk must not cost the client the page: this fetch's copy has them.
            self._db_warn.log(logging.WARNING, "could not store upload times: %s", e)

    def _may_ask(self, scope: Scope) -> bool:
        if self.upstream.offline:
            return False
        if (unusable := self.policy.rest_unusable) is not None:
            self._report(f"upload times unknown: {unusable}; {_TOKEN_ADVICE}")
            return False
        now = self._clock()
        return all(now >= self._held_until.get(key, now) for key in ("", scope.key))

    def _hold(self, scope: Scope, hold: _Hold) -> None:
        now = self._clock()
        for key in [k for k, until in self._held_until.items() if until <= now]:
            del self._held_until[key]
        key = scope.key if hold == "scope" else ""
        self._held_until[key] = now + (self._retry if hold == "retry" else self._recheck)

    async def _learn(
        self, scope: Scope, name: str, wanted: dict[FileKey, Version]
    ) -> dict[FileKey, UploadTimeRow]:
        """What GitLab says of the `wanted` files (each with its version): all of it, or what
        it said before it refused or failed (then `problem` says why)."""
        learnt: dict[FileKey, UploadTimeRow] = {}
        query = {
            "package_type": "pypi",
            "package_name": _search_term(name),
            "order_by": "created_at",
            "sort": "desc",
            "per_page": PER_PAGE,
        }
        page = "1" if wanted else None
        try:
            # The rows of `name`, newest first, until every wanted file is found: one version
            # may have several rows (one per project of a group, or per spelling of the name,
            # `My_Pkg` and `my-pkg`), any number of pages apart.
            asked = 0
            while page:
                if asked == MAX_PAGES:
                    raise _Unknown(_endless(scope.packages_path, MAX_PAGES), hold=None)
                asked += 1
                answer = await self._get(scope.packages_path, {**query, "page": page})
                needed = {v for key, v in wanted.items() if key not in learnt}
                packages = [
                    package
                    for row in _rows(answer)
                    if (package := _package(scope, name, row, needed)) is not None
                ]
                # Every version's files, even when one fails: what the others said is kept.
                outcomes = await asyncio.gather(
                    *(self._files(package) for package in packages), return_exceptions=True
                )
                for outcome in outcomes:
                    if isinstance(outcome, dict):
                        learnt.update(outcome)
                if problems := [o for o in outcomes if isinstance(o, BaseException)]:
                    raise problems[0]
                page = answer.next_page if not wanted.keys() <= learnt.keys() else None
        except _Unknown as e:
            if e.hold is not None:
                self._hold(scope, e.hold)
            self._report(e.message)
            return learnt
        if self.problem is not None:
            log.info("upload times: GitLab's Packages API answers again")
            self.problem = None
        return learnt

    async def _files(self, package: _Package) -> dict[FileKey, UploadTimeRow]:
        """Every file of one package version, with its size and upload time."""
        path = f"{package.project.packages_path}/{package.id}/package_files"
        first = await self._get(path, {"per_page": PER_PAGE, "page": "1"})
        answers = [first]
        if first.next_page and first.pages is not None and first.pages <= COUNTED_PAGES:
            # Counted: the other pages at once, within the concurrency bound.
            answers += await asyncio.gather(
                *(
                    self._get(path, {"per_page": PER_PAGE, "page": str(page)})
                    for page in range(2, first.pages + 1)
                )
            )
        # Uncounted, or a count that was wrong: GitLab's next-page links, one after another.
        while page := answers[-1].next_page:
            # Past GitLab's count a version of 10,000 files is no release: a list without end.
            if len(answers) >= COUNTED_PAGES:
                raise _Unknown(_endless(path, COUNTED_PAGES), hold=None)
            answers.append(await self._get(path, {"per_page": PER_PAGE, "page": page}))
        learnt: dict[FileKey, UploadTimeRow] = {}
        for answer in answers:
            for row in _rows(answer):
                parsed = _file_row(row)
                if parsed is not None:
                    learnt[(parsed.sha256, parsed.filename)] = parsed
        return learnt

    async def _get(self, path: str, query: dict[str, str]) -> ApiAnswer:
        async with self._slots:
            try:
                answer = await self.upstream.get_api(path, query, self.policy.rest_authorization)
            except Offline:
                raise _Unknown("upload times unknown: the proxy is offline", hold=None) from None
            except ProxyError as e:
                raise _Unknown(
                    f"upload times unknown for some pages: GitLab's Packages API failed "
                    f"({e.message})",
                    hold="retry",
                ) from None
        setting = self.policy.token_setting
        if answer.status in (401, 403):
            raise _Unknown(
                f"upload times unknown: GitLab refuses the Packages API for {setting} (HTTP "
                f"{answer.status}: {answer.message}; a deploy token cannot call the REST API); "
                f"{_TOKEN_ADVICE}",
                hold="recheck",
            )
        if answer.status == 404:
            # The REST API hides what a token may not read; other scopes may still answer.
            raise _Unknown(
                "upload times unknown for some pages: GitLab's Packages API answered 404 for "
                f"{setting} (it hides projects and groups a token cannot read); {_TOKEN_ADVICE}",
                hold="scope",
            )
        if answer.status != 200:
            raise _Unknown(
                f"upload times unknown for some pages: GitLab's Packages API answered "
                f"{answer.status} ({answer.message})",
                hold="retry",
            )
        return answer

    def _report(self, problem: str) -> None:
        """Say why once, in the log (no secret is in it) and in `problem` for /-/ready."""
        if problem != self.problem:
            log.warning("%s", problem)
        self.problem = problem


def _apply(
    files: list[Distribution], indices: list[int], known: dict[FileKey, UploadTimeRow]
) -> list[int]:
    """Fill the files at `indices` from `known`, in place; the indices still unknown."""
    missing = []
    for index in indices:
        dist = files[index]
        row = known.get((dist.sha256 or "", dist.filename))
        if row is None:
            missing.append(index)
            continue
        size = dist.size if dist.size is not None else row.size
        files[index] = dataclasses.replace(dist, size=size, upload_time=row.upload_time)
    return missing


def _package(
    scope: Scope, name: str, row: dict[str, object], versions: set[Version]
) -> _Package | None:
    """Where the files of a Packages API row are listed, if it is `name` at one of `versions`."""
    package_id = row.get("id")
    # package_name matches any name containing it: only this one counts.
    if (
        _version(row.get("version")) not in versions
        or normalize(str(row.get("name", ""))) != name
        or row.get("package_type", "pypi") != "pypi"
        or not isinstance(package_id, int)
    ):
        return None
    if scope.kind != "groups":
        return _Package(scope, package_id)
    # A group's rows name their project, where their files are listed.
    owner = row.get("project_id")
    return _Package(Scope("projects", str(owner)), package_id) if isinstance(owner, int) else None


def _endless(path: str, pages: int) -> str:
    return (
        f"upload times unknown for some pages: GitLab's Packages API listed more than "
        f"{pages} pages at {path}"
    )


def _search_term(name: str) -> str:
    """What to send as `package_name`: GitLab keeps names as uploaded (`Corp.Util`) and matches a
    substring, so the longest run of the normalized name without separators finds them all."""
    longest = max(name.split("-"), key=len)
    return longest if len(longest) >= _MIN_PARTIAL_MATCH else name


def _rows(answer: ApiAnswer) -> list[dict[str, object]]:
    try:
        data = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        raise _Unknown(
            "upload times unknown for some pages: GitLab's Packages API sent no JSON",
            hold="retry",
        ) from None
    if not isinstance(data, list):
        return []
    return [row for row in data if isinstance(row, dict)]


def _version(raw: object) -> Version | None:
    try:
        return Version(str(raw))
    except InvalidVersion:
        return None


def _file_row(row: dict[str, object]) -> UploadTimeRow | None:
    """One package file as GitLab lists it, or None when it lacks what the page needs."""
    sha256, filename, size = row.get("file_sha256"), row.get("file_name"), row.get("size")
    upload_time = pep700_time(row.get("created_at"))
    if (
        not isinstance(sha256, str)
        or not is_sha256(sha256)
        or not isinstance(filename, str)
        or not isinstance(size, int)
        or isinstance(size, bool)
        or size < 0
        or upload_time is None
    ):
        return None
    return UploadTimeRow(sha256, filename, size, upload_time)
