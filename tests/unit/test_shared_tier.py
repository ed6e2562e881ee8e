"""The shared tier's stored forms: S3's checksum of our digest, and page copies read back."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from proxy.shared_tier import PAGE_VERSION, checksum_of, parse_page


def test_the_checksum_s3_checks_is_our_own_sha256() -> None:
    digest = hashlib.sha256(b"wheel bytes").digest()
    assert base64.b64decode(checksum_of(digest.hex())) == digest


def test_a_page_copy_reads_back_as_it_was_put() -> None:
    body = json.dumps(
        {"v": PAGE_VERSION, "key": "projects/42|corp-lib", "fetched_at": 12.5, "model": "{}"}
    ).encode()
    assert parse_page(body, "projects/42|corp-lib") == ("{}", 12.5)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"v": PAGE_VERSION, "key": "projects/7|corp-lib", "fetched_at": 1, "model": ""}),
        json.dumps({"v": PAGE_VERSION + 1, "key": "projects/42|corp-lib", "fetched_at": 1}),
        json.dumps({"v": PAGE_VERSION, "key": "projects/42|corp-lib", "model": "{}"}),
    ],
)
def test_a_page_copy_of_another_key_version_or_shape_is_not_read(body: bytes | str) -> None:
    raw = body.encode() if isinstance(body, str) else body
    assert parse_page(raw, "projects/42|corp-lib") is None
