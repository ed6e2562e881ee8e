"""PageKey: the one place a page's stored key is built and taken apart."""

from __future__ import annotations

import sqlite3

import pytest

from proxy.page_key import NAME_SQL, PageKey

KEYS = [
    PageKey("projects/1", "corp-util"),
    PageKey("projects/1"),
    PageKey("groups/corp%2Fteam", "corp-lib"),
    PageKey("groups/7@" + "f" * 32, "corp-lib"),
]


@pytest.mark.parametrize("key", KEYS)
def test_encode_decode_round_trip(key: PageKey) -> None:
    assert PageKey.decode(key.encode()) == key


def test_the_stored_form_is_unchanged() -> None:
    # The pages.key column of earlier releases: no schema change.
    assert PageKey("projects/1", "corp-util").encode() == "projects/1:corp-util"
    assert PageKey("projects/1").encode() == "projects/1:"
    assert PageKey.decode("projects/1:").is_index
    assert not PageKey.decode("projects/1:six").is_index


def test_every_stored_key_of_a_view_starts_with_its_prefix() -> None:
    prefix = PageKey.view_prefix("projects/1")
    assert PageKey("projects/1", "six").encode().startswith(prefix)
    assert PageKey("projects/1").encode().startswith(prefix)
    assert not PageKey("projects/11", "six").encode().startswith(prefix)


@pytest.mark.parametrize("key", KEYS)
def test_sql_reads_the_same_name_as_decode(key: PageKey) -> None:
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE pages (key TEXT)")
        db.execute("INSERT INTO pages VALUES (?)", (key.encode(),))
        ((name,),) = db.execute(f"SELECT {NAME_SQL} FROM pages")  # noqa: S608 - a constant
    assert name == key.name
