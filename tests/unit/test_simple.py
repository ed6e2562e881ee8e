"""The model's name rules: which project a filename belongs to, whatever archive it is."""

from __future__ import annotations

import pytest

from proxy.simple import Distribution, Project, project_of


@pytest.mark.parametrize(
    ("filename", "project"),
    [
        ("Corp_Util-1.0-py3-none-any.whl", "corp-util"),
        ("corp_util-1.0.tar.gz", "corp-util"),
        ("corp.util-1.0.zip", "corp-util"),
        ("corp-util-1.0.tar.bz2", "corp-util"),
        ("corp_util-1.0.tar.zst", "corp-util"),
        ("corp_util-1.0.rpm", None),
        ("nonsense.whl", None),
    ],
)
def test_the_project_of_a_filename(filename: str, project: str | None) -> None:
    assert project_of(filename) == project


def test_a_project_finds_a_file_by_sha256_and_filename_first_listing_first() -> None:
    first = Distribution("a-1.0.tar.gz", "https://h/1", hashes={"sha256": "1" * 64})
    again = Distribution("a-1.0.tar.gz", "https://h/2", hashes={"sha256": "1" * 64})
    other = Distribution("a-2.0.tar.gz", "https://h/3", hashes={"sha256": "2" * 64})
    project = Project("a", (first, again, other))
    assert project.find("1" * 64, "a-1.0.tar.gz") is first
    assert project.find("2" * 64, "a-2.0.tar.gz") is other
    assert project.find("2" * 64, "a-1.0.tar.gz") is None
