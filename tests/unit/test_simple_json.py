"""PEP 691/700 JSON rendering, checked against the specs, and the stored model's round trip."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.codec import index_from_dict, index_to_dict, project_from_dict, project_to_dict
from proxy.simple import Distribution, Index, PageParseError, Project
from proxy.simple_html import parse_index_page, parse_project_page
from proxy.simple_json import (
    is_json_page,
    parse_index_json,
    parse_project_json,
    render_index_json,
    render_project_json,
)
from tests.support.pep691 import check_index_page, check_project_page

SAMPLES = Path(__file__).parents[1] / "samples"
SHA_A = "a" * 64
SHA_B = "b" * 64
UPLOADED = "2024-05-01T12:30:00.123456Z"


def upstream_url(dist: Distribution) -> str:
    return dist.url


def rendered(project: Project) -> Any:
    body = render_project_json(project, lambda dist: f"../../files/{dist.filename}")
    page = json.loads(body)
    check_project_page(page)
    return page


def dist(filename: str, **fields: Any) -> Distribution:
    return Distribution(filename, f"https://h.example/f/{filename}", **fields)


RICH = Project(
    "Zope.Interface",
    (
        dist("zope_interface-5.0.tar.gz", hashes={"sha256": SHA_A}),
        dist(
            "zope_interface-6.0-py3-none-any.whl",
            hashes={"sha256": SHA_B, "md5": "0" * 32},
            requires_python=">=3.8",
            yanked="café & broken",
            core_metadata=f"sha256={SHA_A}",
            size=1234,
            upload_time=UPLOADED,
        ),
        dist("zope_interface-6.1.zip", yanked=True, core_metadata=True, size=0, public=True),
    ),
)


def sample_projects() -> list[Project]:
    return [
        parse_project_page(path.read_bytes(), "https://gitlab.example.com/x/simple/p/")
        for path in sorted(SAMPLES.glob("*package-page.html"))
    ]


# --- rendering ---


def test_gitlab_pages_render_as_1_0() -> None:
    for project in sample_projects():
        page = rendered(project)
        assert page["meta"] == {"api-version": "1.0"}
        assert page["versions"] == list(project.versions)
        assert len(page["files"]) == len(project.files)


def test_project_page_fields() -> None:
    page = rendered(RICH)
    assert page["name"] == "zope-interface"
    assert page["versions"] == ["5.0", "6.0", "6.1"]
    plain, full, bare = page["files"]
    assert plain == {
        "filename": "zope_interface-5.0.tar.gz",
        "url": "../../files/zope_interface-5.0.tar.gz",
        "hashes": {"sha256": SHA_A},
        "yanked": False,
    }
    assert full == {
        "filename": "zope_interface-6.0-py3-none-any.whl",
        "url": "../../files/zope_interface-6.0-py3-none-any.whl",
        "hashes": {"sha256": SHA_B, "md5": "0" * 32},
        "requires-python": ">=3.8",
        "yanked": "café & broken",
        "core-metadata": {"sha256": SHA_A},
        "dist-info-metadata": {"sha256": SHA_A},
        "size": 1234,
        "upload-time": UPLOADED,
    }
    assert bare["hashes"] == {}
    assert bare["yanked"] is True
    assert bare["core-metadata"] is True
    assert bare["dist-info-metadata"] is True
    # A private key (PEP 691), for a proxy of this project in front of this one.
    assert bare["_public-index"] is True


def test_api_version_1_1_only_when_every_size_is_known() -> None:
    assert rendered(RICH)["meta"]["api-version"] == "1.0"
    sized = Project(RICH.name, tuple(d for d in RICH.files if d.size is not None))
    page = rendered(sized)
    assert page["meta"]["api-version"] == "1.1"
    assert [f["size"] for f in page["files"]] == [1234, 0]
    assert rendered(Project("empty", ()))["versions"] == []


def test_an_empty_yank_reason_still_means_yanked() -> None:
    page = rendered(Project("six", (dist("six-1.0.tar.gz", yanked=""),)))
    assert page["files"][0]["yanked"] is True


def test_upstream_html_to_json_keeps_yanks_and_requires_python_and_normalizes_the_name() -> None:
    anchors = (
        f'<a href="/f/zope_interface-5.0.tar.gz#sha256={SHA_A}"'
        ' data-requires-python="&gt;=3.8,&lt;4,!=3.9.*">x</a>'
        f'<a href="/f/zope_interface-6.0-py3-none-any.whl#sha256={SHA_B}"'
        ' data-requires-python="" data-yanked="broken &amp; &quot;bad&quot;">x</a>'
        f'<a href="/f/zope_interface-6.1-py3-none-any.whl#sha256={SHA_B}" data-yanked>x</a>'
    )
    body = f"<title>Links for Zope.Interface</title>{anchors}".encode()
    project = parse_project_page(body, "https://pypi.example/simple/zope-interface/")
    assert project.name == "Zope.Interface"
    page = rendered(project)
    assert page["name"] == "zope-interface"
    first, second, third = page["files"]
    assert first["requires-python"] == ">=3.8,<4,!=3.9.*"
    assert first["yanked"] is False
    assert "requires-python" not in second
    assert second["yanked"] == 'broken & "bad"'
    assert third["yanked"] is True
    assert page["versions"] == ["5.0", "6.0", "6.1"]


def test_versions_are_parsed_once_and_kept_by_with_files() -> None:
    project = Project(RICH.name, RICH.files)
    assert project.versions is project.versions
    sized = project.with_files(tuple(replace(d, size=1) for d in project.files))
    assert sized.versions is project.versions
    assert sized == Project(RICH.name, sized.files)
    with pytest.raises(ValueError, match="never which files"):
        project.with_files(project.files[:1])


def test_json_is_compact_utf8() -> None:
    body = render_project_json(RICH, upstream_url)
    assert "café".encode() in body
    assert body == json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()


def test_index_page() -> None:
    index = parse_index_page((SAMPLES / "gitlab-group-index-page.html").read_bytes())
    page = json.loads(render_index_json(index))
    check_index_page(page)
    assert page == {
        "meta": {"api-version": "1.0"},
        "projects": [{"name": "My.Pkg"}, {"name": "other_tool"}, {"name": "Zope.Interface"}],
    }


# --- the stored model ---


@pytest.mark.parametrize("project", [RICH, Project("empty", ()), *sample_projects()])
def test_project_round_trip(project: Project) -> None:
    stored = json.dumps(project_to_dict(project))
    assert project_from_dict(json.loads(stored)) == project


def test_whatever_the_parser_accepts_can_be_stored() -> None:
    anchors = (
        f'<a href="../../f/six-1.0%2Bcpu.tar.gz#SHA256={SHA_A.upper()}" data-yanked>x</a>'
        '<a href="/f/six-1.1-py3-none-any.whl#md5=0123456789ABCDEF0123456789ABCDEF"'
        ' data-requires-python="&gt;=3.9" data-yanked=" why " data-core-metadata="true">x</a>'
        f'<a href="https://other.example/six-1.2.zip#sha256=short"'
        f' data-dist-info-metadata="sha256={SHA_B}">x</a>'
    )
    body = f"<title>Links for Six</title>{anchors}".encode()
    project = parse_project_page(body, "https://h.example/simple/six/")
    assert len(project.files) == 3
    assert project_from_dict(json.loads(json.dumps(project_to_dict(project)))) == project


def test_index_round_trip() -> None:
    index = Index(("My.Pkg", "other_tool", "Zope.Interface"))
    assert index_from_dict(json.loads(json.dumps(index_to_dict(index)))) == index
    assert index_from_dict(index_to_dict(Index(()))) == Index(())


DELETE = object()


def good_project() -> dict[str, Any]:
    return json.loads(json.dumps(project_to_dict(RICH)))  # type: ignore[no-any-return]


def with_change(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """`good_project()` with the item at `path` set to `value` (or removed, for DELETE)."""
    data = good_project()
    target: Any = data
    for step in path[:-1]:
        target = target[step]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


FILE = ("files", 1)


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "project",
        with_change(("v",), 2),
        with_change(("v",), "1"),
        with_change(("v",), True),
        with_change(("v",), DELETE),
        with_change(("name",), "not a name"),
        with_change(("name",), 5),
        with_change(("files",), {}),
        with_change(("files", 0), "six-1.0.tar.gz"),
        with_change((*FILE, "filename"), "../six-1.0.tar.gz"),
        with_change((*FILE, "filename"), "six-1.0.tar.gz/x"),
        with_change((*FILE, "filename"), "README.txt"),
        with_change((*FILE, "filename"), None),
        with_change((*FILE, "url"), "/relative/six-1.0.tar.gz"),
        with_change((*FILE, "url"), "javascript:alert(1)"),
        with_change((*FILE, "url"), "file:///etc/passwd"),
        with_change((*FILE, "url"), "https://h.example/six-1.0.tar.gz#sha256=00"),
        with_change((*FILE, "url"), "http://[::1/x"),
        with_change((*FILE, "url"), 7),
        with_change((*FILE, "hashes"), []),
        with_change((*FILE, "hashes"), {"sha256": "ab"}),
        with_change((*FILE, "hashes"), {"sha256": SHA_A.upper()}),
        with_change((*FILE, "hashes"), {"whirlpool": SHA_A}),
        with_change((*FILE, "hashes"), {"sha256": 1}),
        with_change((*FILE, "requires_python"), 3),
        with_change((*FILE, "yanked"), None),
        with_change((*FILE, "yanked"), 1),
        with_change((*FILE, "core_metadata"), "true"),
        with_change((*FILE, "core_metadata"), "sha256=00"),
        with_change((*FILE, "core_metadata"), f"md5={'0' * 32}"),
        with_change((*FILE, "core_metadata"), None),
        with_change((*FILE, "size"), -1),
        with_change((*FILE, "size"), True),
        with_change((*FILE, "size"), 1.5),
        with_change((*FILE, "size"), "10"),
        with_change((*FILE, "upload_time"), 1714566600),
    ],
)
def test_malformed_project_is_rejected(data: Any) -> None:
    with pytest.raises(ValueError):
        project_from_dict(data)


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"v": 1},
        {"v": 2, "projects": []},
        {"v": 1, "projects": {}},
        {"v": 1, "projects": ["six", 5]},
        {"v": 1, "projects": ["six", "not a name"]},
        {"v": 1, "projects": ["My.Pkg", "my-pkg"]},
    ],
)
def test_malformed_index_is_rejected(data: Any) -> None:
    with pytest.raises(ValueError):
        index_from_dict(data)


# Upstream JSON pages (PEP 691/700) read into the model.

PAGE_URL = "https://pypi.example/simple/zope-interface/"


def json_page(files: list[Any], **page: Any) -> bytes:
    return json.dumps(
        {"meta": {"api-version": "1.1"}, "name": "zope-interface", "files": files, **page}
    ).encode()


def test_upstream_json_fields_reach_the_model() -> None:
    body = json_page(
        [
            {
                "filename": "zope_interface-6.0-py3-none-any.whl",
                "url": "https://files.example/z/zope_interface-6.0-py3-none-any.whl#frag",
                "hashes": {"SHA256": SHA_B.upper(), "md5": "0" * 32, "blake3": "f" * 64},
                "requires-python": " >=3.8 ",
                "yanked": "broken",
                "core-metadata": {"sha256": SHA_A},
                "size": 1234,
                "upload-time": "2024-05-01T12:30:00.123456Z",
                "gpg-sig": False,
            },
            {
                # Relative to the page, an older index's metadata key, no time fraction.
                "filename": "zope_interface-5.0.tar.gz",
                "url": "../../files/zope_interface-5.0.tar.gz",
                "hashes": {"sha256": SHA_A},
                "yanked": "",
                "dist-info-metadata": True,
                "upload-time": "2020-01-02T03:04:05Z",
            },
            {
                "filename": "zope_interface-5.1.tar.gz",
                "url": "https://files.example/zope_interface-5.1.tar.gz",
                "hashes": {},
                "requires-python": None,
                # Another zone: the same instant in UTC.
                "upload-time": "2021-06-01T02:00:00+02:00",
                "core-metadata": {"sha512": "e" * 128},
            },
        ]
    )
    project = parse_project_json(body, PAGE_URL, "Zope.Interface")
    assert project.name == "zope-interface"
    assert project.files == (
        Distribution(
            "zope_interface-6.0-py3-none-any.whl",
            "https://files.example/z/zope_interface-6.0-py3-none-any.whl",
            hashes={"sha256": SHA_B, "md5": "0" * 32},
            requires_python=">=3.8",
            yanked="broken",
            core_metadata=f"sha256={SHA_A}",
            size=1234,
            upload_time="2024-05-01T12:30:00.123456Z",
        ),
        Distribution(
            "zope_interface-5.0.tar.gz",
            "https://pypi.example/files/zope_interface-5.0.tar.gz",
            hashes={"sha256": SHA_A},
            yanked=True,
            core_metadata=True,
            upload_time="2020-01-02T03:04:05.000000Z",
        ),
        Distribution(
            "zope_interface-5.1.tar.gz",
            "https://files.example/zope_interface-5.1.tar.gz",
            upload_time="2021-06-01T00:00:00.000000Z",
            core_metadata=True,
        ),
    )


def test_rendered_json_reads_back_as_the_same_model() -> None:
    body = render_project_json(RICH, upstream_url)
    assert parse_project_json(body, PAGE_URL, RICH.name).files == RICH.files
    # Sizes and times survive a second hop, as an office proxy reads a regional one's page.
    again = render_project_json(parse_project_json(body, PAGE_URL, RICH.name), upstream_url)
    assert json.loads(again) == json.loads(body)


GOOD = {
    "filename": "zope_interface-6.0-py3-none-any.whl",
    "url": "https://files.example/zope_interface-6.0-py3-none-any.whl",
    "hashes": {"sha256": SHA_B},
}


@pytest.mark.parametrize(
    "bad",
    [
        {"filename": "../zope_interface-6.0-py3-none-any.whl"},
        {"filename": "zope interface-6.0.tar.gz"},
        {"filename": "README.txt"},
        {"filename": 5},
        {"url": "javascript:alert(1)"},
        {"url": "ftp://files.example/zope_interface-6.0-py3-none-any.whl"},
        {"url": "https://[::1/broken"},
        {"url": None},
        {"hashes": ["sha256", SHA_B]},
        {"hashes": {"sha256": 5}},
        {"size": -1},
        {"size": True},
        {"size": "12"},
        {"size": 1.5},
        {"upload-time": "yesterday"},
        {"upload-time": "2024-05-01T12:30:00"},
        {"upload-time": 1714566600},
        {"upload-time": "0001-01-01T00:00:00+01:00"},
        {"yanked": 1},
        {"requires-python": [">=3"]},
        {"core-metadata": "yes"},
        {"_public-index": "yes"},
    ],
)
def test_a_malformed_file_entry_is_left_out_not_the_page(bad: dict[str, Any]) -> None:
    entry = {**GOOD, **bad}
    other = {**GOOD, "filename": "zope_interface-7.0-py3-none-any.whl"}
    project = parse_project_json(json_page([entry, "not an object", other]), PAGE_URL)
    assert [f.filename for f in project.files] == [other["filename"]]


def test_a_filename_listed_twice_is_kept_once_the_first() -> None:
    second = {**GOOD, "size": 7}
    project = parse_project_json(json_page([GOOD, second]), PAGE_URL)
    assert [(f.filename, f.size) for f in project.files] == [(GOOD["filename"], None)]


def test_a_page_naming_another_project_keeps_the_name_asked_for() -> None:
    body = json_page([], name="other-thing")
    assert parse_project_json(body, PAGE_URL, "zope.interface").name == "zope.interface"
    with pytest.raises(PageParseError, match="does not name"):
        parse_project_json(json_page([], name=5), PAGE_URL)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<!DOCTYPE html><html></html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "without 'files'"),
        (b'{"message": "404 Not Found"}', "without 'files'"),
        (b'{"meta": {"api-version": "1.0"}, "files": {}}', "must be a list"),
        (b'{"meta": {"api-version": "2.0"}, "files": []}', "api-version '2.0'"),
        (b'{"meta": {"api-version": 1}, "files": []}', "api-version 1"),
        (b'{"files": []}', "api-version None"),
    ],
)
def test_a_page_that_is_not_a_version_1_json_page_is_a_clear_error(body: bytes, why: str) -> None:
    with pytest.raises(PageParseError, match=re.escape(why)):
        parse_project_json(body, PAGE_URL, "zope-interface")


def test_json_index_lists_valid_names_once() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.0"},
            "projects": [
                {"name": "Zope.Interface"},
                {"name": "zope-interface"},
                {"name": "../etc"},
                {"name": 5},
                "six",
                {"name": "six"},
            ],
        }
    ).encode()
    assert parse_index_json(body) == Index(("Zope.Interface", "six"))
    with pytest.raises(PageParseError):
        parse_index_json(b'{"meta": {"api-version": "1.0"}, "projects": "six"}')


def test_untrusted_json_is_read_or_refused_never_a_crash() -> None:
    rng = random.Random(691)
    values: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", [], {}, SHA_A, "1.1", "2.0"]
    keys = [*GOOD, "size", "upload-time", "yanked", "core-metadata", "requires-python"]
    for _ in range(2000):
        entry: dict[str, Any] = dict(GOOD)
        for key in rng.sample(keys, rng.randint(1, 4)):
            entry[key] = rng.choice(values)
        page: Any = {"meta": {"api-version": rng.choice(["1.0", "1.1", 1, None])}, "files": [entry]}
        if rng.random() < 0.1:
            page = rng.choice(values)
        try:
            project = parse_project_json(json.dumps(page).encode(), PAGE_URL, "zope-interface")
        except PageParseError:
            continue
        # Whatever is read can be stored and rendered.
        assert project_from_dict(json.loads(json.dumps(project_to_dict(project)))) == project
        render_project_json(project, upstream_url)


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/vnd.pypi.simple.v1+json", True),
        ("Application/Vnd.Pypi.Simple.V1+JSON; charset=utf-8", True),
        ("application/vnd.pypi.simple.latest+json", True),
        ("application/json", False),
        ("text/html; charset=utf-8", False),
        ("", False),
    ],
)
def test_json_pages_are_told_by_content_type(content_type: str, is_json: bool) -> None:
    assert is_json_page(content_type) is is_json
