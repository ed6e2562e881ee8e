"""PageRenderer under the [policy] rules: hidden files, local yanks, pages that change with time."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.blobs import LocalBlobStore
from proxy.config import CacheSettings, PolicySettings
from proxy.files import FileCache
from proxy.metadata import CoreMetadata
from proxy.metrics import Metrics
from proxy.policy import Policy, iso
from proxy.rendering import PageRenderer
from proxy.simple import Distribution, Project
from proxy.store import Store
from tests.support.memory_upstream import FakeClock, MemoryUpstream

HOUR = 3600.0
FETCHED_AT = 1.0


def wheel(version: str, uploaded: float, *, public: bool = False) -> Distribution:
    filename = f"demo-{version}-py3-none-any.whl"
    return Distribution(
        filename,
        f"http://gitlab.test/files/{filename}",
        hashes={"sha256": version[0] * 64},
        upload_time=iso(uploaded),
        size=10,
        public=public,
    )


@dataclass
class Rig:
    files: FileCache
    metadata: CoreMetadata
    clock: FakeClock

    def renderer(self, policy: PolicySettings | None = None) -> PageRenderer:
        rules = Policy(policy or PolicySettings())
        return PageRenderer(self.files, self.metadata, rules, clock=self.clock)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    blobs = LocalBlobStore(tmp_path)
    blobs.ensure_dirs()
    store = await Store.open(tmp_path / "index.sqlite3")
    files = FileCache(CacheSettings(dir=tmp_path), blobs, store, MemoryUpstream(), Metrics())
    await files.load()
    metadata = CoreMetadata(files, store, files.events)
    await metadata.load()
    try:
        yield Rig(files, metadata, FakeClock(1_000_000.0))
    finally:
        await files.close(0)
        await metadata.close()
        await store.close()


def filenames(body: bytes) -> list[str]:
    return [f["filename"] for f in json.loads(body)["files"]]


async def test_a_young_file_appears_once_old_enough_without_a_refetch(rig: Rig) -> None:
    now = rig.clock.now
    page = Project("demo", (wheel("1.0", now - 5 * HOUR), wheel("2.0", now - HOUR)))
    renderer = rig.renderer(PolicySettings(min_age_internal=2 * HOUR))
    first = await renderer.project("k", page, FETCHED_AT, "json", "")
    assert filenames(first.body) == ["demo-1.0-py3-none-any.whl"]
    assert json.loads(first.body)["versions"] == ["1.0"]
    assert first.until == now + HOUR
    # Rendered once, then reused while nothing can change.
    rig.clock.advance(HOUR - 1)
    assert await renderer.project("k", page, FETCHED_AT, "json", "") is first
    assert renderer.renders == 1
    rig.clock.advance(1)
    later = await renderer.project("k", page, FETCHED_AT, "json", "")
    assert filenames(later.body) == ["demo-1.0-py3-none-any.whl", "demo-2.0-py3-none-any.whl"]
    assert later.digest != first.digest
    assert later.until == math.inf
    assert renderer.renders == 2


async def test_public_files_follow_min_age_and_gitlab_ones_min_age_internal(rig: Rig) -> None:
    now = rig.clock.now
    page = Project("demo", (wheel("1.0", now - HOUR, public=True), wheel("2.0", now - HOUR)))
    renderer = rig.renderer(PolicySettings(min_age=2 * HOUR))
    rendered = await renderer.project("k", page, FETCHED_AT, "html", "")
    assert b"demo-1.0" not in rendered.body
    assert b"demo-2.0" in rendered.body


async def test_local_yanks_show_in_html_and_json_with_their_reason(rig: Rig) -> None:
    now = rig.clock.now
    page = Project("demo", (wheel("1.0", now), wheel("2.0", now)))
    renderer = rig.renderer(PolicySettings(yanked=("demo==2.0: broken build",)))
    html = (await renderer.project("k", page, FETCHED_AT, "html", "")).body.decode()
    assert 'data-yanked="broken build"' in html
    assert html.count("data-yanked") == 1
    files = json.loads((await renderer.project("k", page, FETCHED_AT, "json", "")).body)["files"]
    assert [f["yanked"] for f in files] == [False, "broken build"]


async def test_without_rules_the_fetched_page_is_shown_as_it_is(rig: Rig) -> None:
    now = rig.clock.now
    page = Project("demo", (wheel("1.0", now), wheel("2.0", now)))
    rendered = await rig.renderer().project("k", page, FETCHED_AT, "json", "")
    assert filenames(rendered.body) == [f.filename for f in page.files]
