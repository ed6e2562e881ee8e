"""UploadTimes against the fake GitLab on 127.0.0.1: matching, pagination, name filter, holds."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import pytest

from proxy.config import UpstreamSettings
from proxy.credentials import CredentialPolicy
from proxy.gitlab import GitLab
from proxy.metrics import Metrics
from proxy.scope import Scope
from proxy.simple import Distribution, Project, pep700_time
from proxy.store import SCHEMA_VERSION, Store, UploadTimeRow
from proxy.upload_times import CONCURRENCY, UploadTimes
from tests.support.fake_gitlab import FakeFile, FakeGitLab
from tests.support.memory_upstream import FakeClock

TOKEN = "glpat-unit-token"
PROJECT = Scope("projects", "42")
RECHECK = 300.0
RETRY = 10.0
JAN = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass
class Rig:
    gitlab: FakeGitLab
    times: UploadTimes
    store: Store
    clock: FakeClock

    async def fill(self, files: list[FakeFile], scope: Scope = PROJECT) -> Project:
        return await self.times.fill(scope, "corp-util", listed(files))

    @property
    def calls(self) -> int:
        return self.gitlab.counts["api"]


def listed(files: list[FakeFile]) -> Project:
    """The page GitLab would list these files on (the links' host does not matter)."""
    return Project(
        "corp-util",
        tuple(
            Distribution(f.filename, f"https://gitlab.example/{f.filename}", {"sha256": f.sha256})
            for f in files
        ),
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with FakeGitLab(token=TOKEN) as gitlab, aiohttp.ClientSession() as session:
        gitlab.add_group(7, "platform")
        gitlab.add_project(42, "platform/tools", group_id=7)
        gitlab.add_project(44, "platform/lib", group_id=7)
        settings = UpstreamSettings(url=gitlab.url, username="proxy", token=TOKEN, timeout=5)
        upstream = GitLab(settings, session, Metrics(None))
        store = await Store.open(tmp_path / "index.sqlite3")
        clock = FakeClock()
        times = UploadTimes(
            CredentialPolicy(settings), upstream, store, recheck=RECHECK, retry=RETRY, clock=clock
        )
        try:
            yield Rig(gitlab, times, store, clock)
        finally:
            await store.close()


def test_gitlab_times_become_pep_700_text() -> None:
    assert pep700_time("2026-11-30T10:00:00.000Z") == "2026-11-30T10:00:00.000000Z"
    assert pep700_time("2026-11-30T10:00:00.123Z") == "2026-11-30T10:00:00.123000Z"
    assert pep700_time("2026-11-30T12:00:00.5+02:00") == "2026-11-30T10:00:00.500000Z"
    # No zone is no time: a guess would be wrong by hours.
    for raw in ["2026-11-30T10:00:00", "yesterday", "", None, 1764496800]:
        assert pep700_time(raw) is None


async def test_files_are_matched_by_sha256_and_filename(rig: Rig) -> None:
    wheel = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    sdist = rig.gitlab.add_sdist(42, "corp-util", "1.0")
    wheel.uploaded_at, sdist.uploaded_at = JAN, JAN + 0.25
    # The page's digest differs from GitLab's row: not this file, whatever its name.
    stranger = replace(rig.gitlab.add_wheel(42, "corp-util", "1.1"), sha256="b" * 64)
    project = await rig.fill([wheel, sdist, stranger])
    got = [(f.filename, f.upload_time, f.size) for f in project.files]
    assert got == [
        (wheel.filename, "2026-01-01T00:00:00.000000Z", len(wheel.content)),
        (sdist.filename, "2026-01-01T00:00:00.250000Z", len(sdist.content)),
        (stranger.filename, None, None),
    ]
    assert project.versions == ("1.0", "1.1")
    assert rig.times.problem is None


async def test_only_the_exact_name_is_asked_about(rig: Rig) -> None:
    """`package_name` matches substrings, in any case: rows of other names are dropped."""
    wheel = rig.gitlab.add_wheel(42, "Corp.Util", "1.0")
    rig.gitlab.add_wheel(42, "corp-util-extra", "1.0")
    rig.gitlab.add_wheel(42, "acorp-utility", "1.0")
    project = await rig.fill([wheel])
    assert project.files[0].upload_time is not None
    asked = [r.path for r in rig.gitlab.api_requests]
    assert len(asked) == 2
    assert "package_name=corp&" in asked[0]
    assert asked[1].startswith("/api/v4/projects/42/packages/") and "package_files" in asked[1]


async def test_lists_are_read_to_their_last_page(rig: Rig) -> None:
    older = rig.gitlab.add_file(42, "corp-util", "0.9", "corp_util-0.9.zip", b"older")
    # 250 files of one version: three pages of package files.
    many = rig.gitlab.add_many_files(42, "corp-util", "1.0", 250)
    project = await rig.fill([older, *many])
    assert all(f.upload_time is not None for f in project.files)
    # One page of versions, one of 0.9's files, three of 1.0's.
    assert rig.calls == 1 + 1 + 3


async def test_versions_are_listed_until_each_asked_one_is_found(rig: Rig) -> None:
    oldest = rig.gitlab.add_file(42, "corp-util", "0.0", "corp_util-0.0.zip", b"first")
    oldest.uploaded_at = JAN
    for n in range(1, 150):
        rig.gitlab.add_file(42, "corp-util", f"0.{n}", f"corp_util-0.{n}.zip", b"%d" % n)
    project = await rig.fill([oldest])
    assert project.files[0].upload_time == "2026-01-01T00:00:00.000000Z"
    # Newest first, 100 a page: the oldest is on the second page, then its one list of files.
    assert rig.calls == 2 + 1


async def test_group_rows_lead_to_their_projects_files(rig: Rig) -> None:
    one = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    two = rig.gitlab.add_wheel(44, "corp-util", "2.0")
    project = await rig.fill([one, two], Scope("groups", "7"))
    assert all(f.upload_time is not None for f in project.files)
    paths = sorted(r.path.partition("?")[0] for r in rig.gitlab.api_requests[1:])
    assert [p.split("/")[4] for p in paths] == ["42", "44"]


async def test_known_and_given_times_cost_no_call(rig: Rig) -> None:
    wheel = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    await rig.store.put_upload_times(
        [UploadTimeRow(wheel.sha256, wheel.filename, 7, "2025-05-05T05:05:05.000000Z")]
    )
    project = await rig.fill([wheel])
    assert (project.files[0].upload_time, project.files[0].size) == (
        "2025-05-05T05:05:05.000000Z",
        7,
    )
    # A file that came with an upload time (a JSON upstream) keeps it, and its size.
    given = replace(listed([wheel]).files[0], filename="other.whl", upload_time="2020-01-01T00Z")
    page = Project("corp-util", (given,))
    assert await rig.times.fill(PROJECT, "corp-util", page) is page
    assert rig.calls == 0


async def test_what_is_learnt_is_kept_and_never_asked_again(rig: Rig) -> None:
    wheel = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    await rig.fill([wheel])
    calls = rig.calls
    again = await rig.fill([wheel])
    assert again.files[0].upload_time is not None
    assert rig.calls == calls
    rows = await rig.store.upload_times([wheel.sha256])
    assert [(r.filename, r.size) for r in rows] == [(wheel.filename, len(wheel.content))]


async def test_a_refused_token_is_asked_again_only_after_recheck(rig: Rig) -> None:
    wheel = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    rig.gitlab.deploy_tokens.add(TOKEN)
    assert (await rig.fill([wheel])).files[0].upload_time is None
    assert rig.calls == 1
    assert rig.times.problem is not None
    assert "refuses the Packages API for upstream.token (HTTP 401" in rig.times.problem
    assert TOKEN not in rig.times.problem
    rig.clock.advance(RECHECK - 1)
    await rig.fill([wheel])
    assert rig.calls == 1
    rig.gitlab.deploy_tokens.discard(TOKEN)
    rig.clock.advance(2)
    assert (await rig.fill([wheel])).files[0].upload_time is not None
    assert rig.times.problem is None


async def test_a_failure_is_retried_sooner_and_a_hidden_scope_holds_only_itself(
    rig: Rig,
) -> None:
    wheel = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    rig.gitlab.api_fail_status = 503
    await rig.fill([wheel])
    assert rig.times.problem is not None and "answered 503" in rig.times.problem
    rig.gitlab.api_fail_status = None
    rig.clock.advance(RETRY + 1)
    assert (await rig.fill([wheel])).files[0].upload_time is not None
    # A scope the token cannot see through the REST API: unknown there, no hold elsewhere.
    hidden = await rig.times.fill(Scope("projects", "999"), "corp-util", listed([wheel]))
    assert hidden.files[0].upload_time is not None  # known already, from project 42
    other = rig.gitlab.add_wheel(42, "corp-util", "1.1")
    assert (await rig.times.fill(Scope("projects", "999"), "corp-util", listed([other]))).files[
        0
    ].upload_time is None
    assert rig.times.problem is not None and "404" in rig.times.problem
    calls = rig.calls
    await rig.times.fill(Scope("projects", "999"), "corp-util", listed([other]))
    assert rig.calls == calls  # that scope is asked again only after recheck
    assert (await rig.fill([other])).files[0].upload_time is not None
    assert rig.calls == calls + 2


async def test_at_most_concurrency_calls_are_in_flight(rig: Rig) -> None:
    files = [rig.gitlab.add_wheel(42, "corp-util", f"1.{n}") for n in range(4 * CONCURRENCY)]
    rig.gitlab.delay = 0.05
    started = time.monotonic()
    project = await rig.fill(files)
    assert all(f.upload_time is not None for f in project.files)
    # One list, then 32 lists of files in rounds of CONCURRENCY: at least 1 + 4 delays.
    assert time.monotonic() - started >= 5 * 0.05


async def test_a_schema_2_index_gains_the_table_in_place_or_reads_it_empty(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.sqlite3"
    store = await Store.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        # As release schema 2 left it: no upload_times table.
        db.executescript("DROP TABLE upload_times; PRAGMA user_version=2;")
    read_only = await Store.open_read_only(path)
    try:
        assert await read_only.upload_times(["a" * 64]) == []
    finally:
        await read_only.close()
    store = await Store.open(path)
    try:
        row = UploadTimeRow("a" * 64, "a-1.0.tar.gz", 3, "2026-01-01T00:00:00.000000Z")
        await store.put_upload_times([row])
        # Known values never change: a second answer does not overwrite the first.
        await store.put_upload_times([replace(row, size=4)])
        assert await store.upload_times(["a" * 64]) == [row]
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_an_index_that_fails_costs_neither_the_page_nor_the_times(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    wheel = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    # Every read and write of the table now fails, as on a damaged index.
    await rig.store.db.execute("DROP TABLE upload_times")
    project = await rig.fill([wheel])
    assert project.files[0].upload_time is not None
    # Read and write both failed; said once (at most once a minute).
    warnings = [r.getMessage() for r in caplog.records if r.name == "proxy.upload_times"]
    assert len(warnings) == 1 and warnings[0].startswith("could not read upload times")


async def test_a_scope_named_by_its_encoded_path_is_asked_as_named(rig: Rig) -> None:
    wheel = rig.gitlab.add_wheel(42, "corp-util", "1.0")
    project = await rig.fill([wheel], Scope("projects", "platform%2Ftools"))
    assert project.files[0].upload_time is not None
    assert rig.gitlab.api_requests[0].path.startswith("/api/v4/projects/platform%2Ftools/packages?")
