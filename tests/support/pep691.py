"""Assertions that a page is valid PEP 691/700 JSON, and what a file advertises as core metadata."""

from __future__ import annotations

import re
from typing import Any

from packaging.utils import canonicalize_name

from proxy.simple import version_of


def advertised(json_page: Any, html_page: bytes, filename: str) -> tuple[Any, str | None]:
    """(the JSON `core-metadata` value, the HTML `data-core-metadata` value) of a file."""
    entry = next(f for f in json_page["files"] if f["filename"] == filename)
    assert entry.get("core-metadata") == entry.get("dist-info-metadata")
    anchor = next(line for line in html_page.decode().splitlines() if f">{filename}<" in line)
    html_value = re.search(r'data-core-metadata="([^"]*)"', anchor)
    old_value = re.search(r'data-dist-info-metadata="([^"]*)"', anchor)
    assert (html_value and html_value[1]) == (old_value and old_value[1])
    return entry.get("core-metadata"), html_value[1] if html_value else None


# PEP 691 file keys; PEP 700 adds size and upload-time, PEP 714 renames dist-info-metadata.
FILE_KEYS = {"filename", "url", "hashes"}


OPTIONAL_FILE_KEYS = {
    "requires-python",
    "yanked",
    "core-metadata",
    "dist-info-metadata",
    "gpg-sig",
    "size",
    "upload-time",
}


HEX = re.compile(r"^[0-9a-f]+$")


# PEP 700: ISO 8601 in UTC with a Z, seconds and an optional fraction.
UPLOAD_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


def private_keys(entry: dict[str, Any]) -> set[str]:
    return {key for key in entry if key.startswith("_")}


def check_hashes(hashes: object) -> None:
    assert isinstance(hashes, dict)
    for algo, digest in hashes.items():
        assert isinstance(algo, str) and algo == algo.lower()
        assert isinstance(digest, str) and HEX.match(digest)


def check_api_version(meta: object) -> tuple[int, int]:
    assert isinstance(meta, dict) and set(meta) == {"api-version"}
    version = meta["api-version"]
    assert isinstance(version, str)
    match = re.fullmatch(r"(\d+)\.(\d+)", version)
    assert match is not None
    major, minor = int(match[1]), int(match[2])
    assert major == 1
    return major, minor


def check_project_page(page: Any) -> None:
    """Assert `page` is a PEP 691 project page, with PEP 700's rules from api-version 1.1."""
    assert isinstance(page, dict)
    assert {"meta", "name", "files"} <= set(page) <= {"meta", "name", "files", "versions"}
    _, minor = check_api_version(page["meta"])
    assert isinstance(page["name"], str) and page["name"] == canonicalize_name(page["name"])
    assert isinstance(page["files"], list)
    if minor >= 1:
        assert "versions" in page
    if "versions" in page:
        versions = page["versions"]
        assert isinstance(versions, list) and all(isinstance(v, str) for v in versions)
        assert len(set(versions)) == len(versions)
    for file in page["files"]:
        assert isinstance(file, dict)
        # PEP 691 leaves keys that start with "_" to each server.
        assert FILE_KEYS <= set(file) <= FILE_KEYS | OPTIONAL_FILE_KEYS | private_keys(file)
        assert isinstance(file["filename"], str) and "/" not in file["filename"]
        assert isinstance(file["url"], str)
        check_hashes(file["hashes"])
        if "requires-python" in file:
            assert isinstance(file["requires-python"], str)
        if "yanked" in file:
            # A string is a reason, and only a non-empty one means yanked.
            assert isinstance(file["yanked"], bool) or file["yanked"] != ""
        for key in ("core-metadata", "dist-info-metadata"):
            if not isinstance(file.get(key, False), bool):
                check_hashes(file[key])
        if "dist-info-metadata" in file:
            # PEP 714: a repository sending the old key sends the new one with the same value.
            assert file.get("core-metadata") == file["dist-info-metadata"]
        if minor >= 1:
            assert "size" in file
        if "size" in file:
            assert type(file["size"]) is int and file["size"] >= 0
        if "upload-time" in file:
            assert isinstance(file["upload-time"], str) and UPLOAD_TIME.match(file["upload-time"])
        if "versions" in page:
            assert str(version_of(file["filename"])) in page["versions"]


def check_index_page(page: Any) -> None:
    """Assert `page` is a PEP 691 index page."""
    assert isinstance(page, dict) and set(page) == {"meta", "projects"}
    check_api_version(page["meta"])
    assert isinstance(page["projects"], list)
    for project in page["projects"]:
        assert isinstance(project, dict) and set(project) == {"name"}
        assert isinstance(project["name"], str)
