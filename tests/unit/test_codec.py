"""The stored page form: every version ever written decodes, and pages from later releases too."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import pytest

from proxy.codec import PAGE_VERSION, decode_page, encode_page
from proxy.simple import Distribution, Index, Project

SHA = "a" * 64
URL = "https://gitlab.example/api/v4/projects/1/packages/pypi/files/" + SHA
WHEEL = "corp_util-1.0-py3-none-any.whl"

# Version 1, byte for byte as releases 651ef3e to a40a93d wrote it into SQLite and bundles.
V1_PROJECT = (
    '{"kind": "project", "model": {"v": 1, "name": "corp-util", "files": [{"filename": '
    f'"{WHEEL}", "url": "{URL}/{WHEEL}", "hashes": {{"sha256": "{SHA}"}}, "requires_python": '
    '">=3.8", "yanked": false, "core_metadata": "sha256=' + "b" * 64 + '", "size": 1234, '
    '"upload_time": "2024-05-01T12:30:00Z"}]}}'
)
V1_INDEX = '{"kind": "index", "model": {"v": 1, "projects": ["corp-util", "Corp.Lib"]}}'

PROJECT = Project(
    "corp-util",
    (
        Distribution(
            filename=WHEEL,
            url=f"{URL}/{WHEEL}",
            hashes={"sha256": SHA},
            requires_python=">=3.8",
            yanked=False,
            core_metadata="sha256=" + "b" * 64,
            size=1234,
            upload_time="2024-05-01T12:30:00Z",
        ),
    ),
)


def test_version_1_pages_decode() -> None:
    assert decode_page(json.loads(V1_PROJECT)) == PROJECT
    assert decode_page(json.loads(V1_INDEX)) == Index(("corp-util", "Corp.Lib"))


def test_every_page_the_release_a40a93d_stored_decodes(tmp_path: Path) -> None:
    data = Path(__file__).parent.parent / "data" / "a40a93d"
    with tarfile.open(data / "cache.tar.gz") as tar:
        tar.extract("cache/index.sqlite3", tmp_path, filter="data")
    with sqlite3.connect(tmp_path / "cache" / "index.sqlite3") as db:
        rows = list(db.execute("SELECT key, model FROM pages"))
    assert len(rows) == 8
    for key, model in rows:
        page = decode_page(json.loads(model))
        assert isinstance(page, Index) == key.endswith(":")
        # Written back as it was: a release that old reads what today's writes.
        assert encode_page(page) == json.loads(model)


def test_todays_pages_are_written_as_version_1_readers_read_them() -> None:
    assert PAGE_VERSION == 1
    assert encode_page(PROJECT) == json.loads(V1_PROJECT)
    assert encode_page(Index(("corp-util", "Corp.Lib"))) == json.loads(V1_INDEX)


def test_a_page_with_future_keys_decodes() -> None:
    data: Any = json.loads(V1_PROJECT)
    data["written_by"] = "a later release"
    data["model"]["etag"] = "W/1"
    data["model"]["files"][0]["provenance"] = {"url": "https://example.com/p"}
    assert decode_page(data) == PROJECT
    index: Any = json.loads(V1_INDEX)
    index["model"]["tracks"] = []
    assert decode_page(index) == Index(("corp-util", "Corp.Lib"))


@pytest.mark.parametrize(
    "missing", ["hashes", "requires_python", "yanked", "core_metadata", "size", "upload_time"]
)
def test_a_file_entry_without_a_later_field_gets_its_default(missing: str) -> None:
    data: Any = json.loads(V1_PROJECT)
    del data["model"]["files"][0][missing]
    (dist,) = decode_page(data).files  # type: ignore[union-attr]
    assert getattr(dist, missing) == getattr(Distribution(WHEEL, URL), missing)
    assert dist.filename == WHEEL


@pytest.mark.parametrize("missing", ["filename", "url"])
def test_a_file_entry_without_its_filename_or_url_is_refused(missing: str) -> None:
    data: Any = json.loads(V1_PROJECT)
    del data["model"]["files"][0][missing]
    with pytest.raises(ValueError):
        decode_page(data)


@pytest.mark.parametrize("version", [0, 2, "1", True, None])
def test_an_unknown_version_is_refused(version: object) -> None:
    data: Any = json.loads(V1_PROJECT)
    data["model"]["v"] = version
    with pytest.raises(ValueError, match="version"):
        decode_page(data)


def test_a_public_file_keeps_its_origin_and_older_pages_read_as_gitlab_hosted() -> None:
    public = PROJECT.with_files(tuple(dataclasses.replace(f, public=True) for f in PROJECT.files))
    assert decode_page(json.loads(json.dumps(encode_page(public)))) == public
    assert "public" not in json.dumps(encode_page(PROJECT))
    older = decode_page(json.loads(V1_PROJECT))
    assert isinstance(older, Project) and not older.files[0].public
