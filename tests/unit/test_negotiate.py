"""Content negotiation: Accept with q-values as pip, uv and PEP 691 use it; gzip; If-None-Match."""

from __future__ import annotations

import pytest

from proxy.negotiate import (
    HTML_LEGACY,
    HTML_V1,
    JSON_V1,
    MediaRange,
    accepts_gzip,
    choose,
    none_match,
    parse_accept,
)
from tests.support.clients import PIP_ACCEPT, UV_ACCEPT


def test_parse_pip_header() -> None:
    assert parse_accept(PIP_ACCEPT) == [
        MediaRange("application", "vnd.pypi.simple.v1+json", 1.0),
        MediaRange("application", "vnd.pypi.simple.v1+html", 0.1),
        MediaRange("text", "html", 0.01),
    ]


@pytest.mark.parametrize(
    "header",
    [
        "text",  # no subtype
        "*/html",  # a wildcard type needs a wildcard subtype
        "text/html; q=2",
        "text/html; q=0.0001",
        "text/html; q=-1",
        "text/html; q=high",
        "text/html /x",
        "",
    ],
)
def test_malformed_ranges_are_skipped(header: str) -> None:
    assert parse_accept(header) == []
    assert parse_accept(f"{header}, application/vnd.pypi.simple.v1+json") == [
        MediaRange("application", "vnd.pypi.simple.v1+json", 1.0)
    ]


def test_parse_is_case_insensitive_and_ignores_other_parameters() -> None:
    assert parse_accept("Text/HTML; Charset=UTF-8; Q=0.5") == [MediaRange("text", "html", 0.5)]


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PIP_ACCEPT, JSON_V1),
        (UV_ACCEPT, JSON_V1),
        # pip before 22.2 and other old tools.
        ("text/html", HTML_LEGACY),
        (HTML_V1, HTML_V1),
        (JSON_V1, JSON_V1),
        # No preference expressed: the page every client can read, as PyPI does.
        (None, HTML_LEGACY),
        ("", HTML_LEGACY),
        ("*/*", HTML_LEGACY),
        ("garbage", HTML_LEGACY),
        ("application/*", HTML_V1),
        # Equal quality: the more specific range wins over the wildcard...
        ("*/*;q=0.8, application/vnd.pypi.simple.v1+json;q=0.8", JSON_V1),
        # ...and among equally specific ones, the server's order (PyPI's own test cases).
        (f"{HTML_LEGACY}, {HTML_V1}, {JSON_V1}", HTML_LEGACY),
        (f"{HTML_LEGACY};q=0.01, {HTML_V1};q=0.2, {JSON_V1}", JSON_V1),
        # A low quality on JSON is honoured, not matched by substring.
        (f"{JSON_V1};q=0.1, text/html", HTML_LEGACY),
        # q=0 means "not this", and the most specific range decides even against a wildcard.
        (f"*/*, {HTML_LEGACY};q=0", HTML_V1),
        (f"*/*, {HTML_LEGACY};q=0, application/*;q=0", None),
        (f"text/*;q=0.5, {HTML_LEGACY};q=0", None),
        ("application/json", None),
        (f"{JSON_V1};q=0", None),
        # PEP 691's `latest` aliases.
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
        ("application/vnd.pypi.simple.latest+html", HTML_V1),
        # Versions this server does not speak.
        ("application/vnd.pypi.simple.v2+json", None),
    ],
)
def test_choose(accept: str | None, expected: str | None) -> None:
    assert choose(accept) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("gzip", True),
        ("gzip, deflate", True),  # pip
        ("gzip, deflate, zstd", True),  # uv
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("gzip;q=0", False),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),
        ("br;q=1, gzip;q=bad", False),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ('"abc-j"', True),
        ('W/"abc-j"', True),
        ('"other", "abc-j"', True),
        ("*", True),
        ('"abc-jz"', False),
        ('"abc-h"', False),
        ("abc-j", False),
    ],
)
def test_none_match(header: str | None, expected: bool) -> None:
    assert none_match(header, '"abc-j"') is expected
