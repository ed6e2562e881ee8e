"""The model's name rules: which project a filename belongs to, whatever archive it is."""

from __future__ import annotations

import pytest

from proxy.simple import project_of


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
