"""Parsing GitLab's and the public index's HTML pages, and rendering PEP 503 pages back."""

from __future__ import annotations

import contextlib
import random
import re
from pathlib import Path

import lxml.html
import pytest

from proxy.simple import Distribution, Index, PageParseError, Project
from proxy.simple_html import (
    parse_index_page,
    parse_project_page,
    render_index_html,
    render_project_html,
)

SAMPLES = Path(__file__).parents[1] / "samples"
GITLAB = "https://gitlab.example.com/api/v4"
PROJECT_PAGE_URL = f"{GITLAB}/projects/42/packages/pypi/simple/my-pkg"
SHA_A = "a" * 64
SHA_B = "b" * 64

# (sha256, filename, requires_python) of the files on the GitLab sample pages, in page order.
MY_PKG_FILES = [
    (
        "ff4c0e2a727f902fc5ea4d5b5475b9e58ef00d6a628c30f8bf1d33b909cd1f04",
        "my_pkg-1.0.0-py3-none-any.whl",
        ">=3.8",
    ),
    (
        "c0752a2c6ec1b4d76af02488301a82385e1d808b489c1f91ccb4203b413e00f1",
        "my_pkg-1.0.0.tar.gz",
        ">=3.8",
    ),
    (
        "c10961407011b4f4d54edc9fd6207f5bf03de713628ef0ddfd28a7483bae63eb",
        "my_pkg-1.1.0-py3-none-any.whl",
        ">=3.9,<4",
    ),
    (
        "e8817d186616a36fb471eeebc5ff6d0c16cfdb7da1c5bd228160615d0ef7fa45",
        "my_pkg-1.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        ">=3.9,<4",
    ),
    (
        "4a750a0b6cd7d3bea3a3c219ef455e1242d6d15e1c1cea35ad4d44c4ce213f2f",
        "my_pkg-2.0.0rc1.tar.gz",
        None,
    ),
]


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def my_pkg(files_root: str) -> Project:
    """The model of the GitLab sample package pages, files served under `files_root`."""
    files = tuple(
        Distribution(
            filename=filename,
            url=f"{files_root}/{sha}/{filename}",
            hashes={"sha256": sha},
            requires_python=requires,
        )
        for sha, filename, requires in MY_PKG_FILES
    )
    return Project("My.Pkg", files)


def upstream_url(dist: Distribution) -> str:
    return dist.url


def page(anchors: str, title: str = "Links for six") -> bytes:
    return (
        f"<!DOCTYPE html><html><head><title>{title}</title></head>"
        f"<body><h1>{title}</h1>{anchors}</body></html>"
    ).encode()


def only_file(body: bytes, base_url: str = "https://pypi.example/simple/six/") -> Distribution:
    (dist,) = parse_project_page(body, base_url).files
    return dist


# --- the sample pages ---


def test_project_page() -> None:
    project = parse_project_page(sample("gitlab-project-package-page.html"), PROJECT_PAGE_URL)
    assert project == my_pkg(f"{GITLAB}/projects/42/packages/pypi/files")
    assert project.versions == ("1.0.0", "1.1.0", "2.0.0rc1")


def test_group_page() -> None:
    project = parse_project_page(
        sample("gitlab-group-package-page.html"), f"{GITLAB}/groups/7/-/packages/pypi/simple/my-pkg"
    )
    assert project == my_pkg(f"{GITLAB}/groups/7/-/packages/pypi/files")


def test_legacy_page_with_br_reads_like_the_current_one() -> None:
    legacy = parse_project_page(sample("gitlab-legacy-package-page-with-br.html"), PROJECT_PAGE_URL)
    assert legacy == parse_project_page(
        sample("gitlab-project-package-page.html"), PROJECT_PAGE_URL
    )


def test_group_index_names_repeat_once_each() -> None:
    index = parse_index_page(sample("gitlab-group-index-page.html"))
    assert index == Index(("My.Pkg", "other_tool", "Zope.Interface"))


def test_public_index_page() -> None:
    project = parse_project_page(
        sample("public-index-package-page.html"), "https://public-index.example/simple/six/", "six"
    )
    assert project.name == "six"
    assert [f.filename for f in project.files] == [
        "six-1.16.0-py2.py3-none-any.whl",
        "six-1.16.0.tar.gz",
        "six-1.17.0-py2.py3-none-any.whl",
        "six-1.17.0.tar.gz",
    ]
    wheel, sdist, _, yanked = project.files
    assert wheel.url == (
        "https://files.public-index.example/packages/cf/eb/"
        "0022683830dc7506d502d9ee66f32c27b3817d24ea9ca0662377102577ef/"
        "six-1.16.0-py2.py3-none-any.whl"
    )
    assert wheel.sha256 == "cfeb0022683830dc7506d502d9ee66f32c27b3817d24ea9ca0662377102577ef"
    assert wheel.core_metadata == (
        "sha256=dfa9bda3f5c403add708446d0d1a29abb87adb3f5e34d344437d006cc39de640"
    )
    assert wheel.requires_python == ">=2.7, !=3.0.*, !=3.1.*, !=3.2.*"
    assert wheel.yanked is False
    assert sdist.core_metadata is False
    assert yanked.yanked == "broken sdist"
    assert project.versions == ("1.16.0", "1.17.0")


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*package-page.html")), ids=lambda p: p.name)
def test_samples_survive_render_and_parse(path: Path) -> None:
    project = parse_project_page(path.read_bytes(), PROJECT_PAGE_URL)
    html = render_project_html(project, upstream_url)
    assert parse_project_page(html.encode(), "https://elsewhere.example/") == project


# --- attributes ---


def test_requires_python_is_unescaped() -> None:
    anchors = (
        f'<a href="six-1.0.tar.gz#sha256={SHA_A}" data-requires-python="&gt;=3.9,&lt;4">x</a>'
        f'<a href="six-1.1.tar.gz#sha256={SHA_A}" data-requires-python="">x</a>'
        f'<a href="six-1.2.tar.gz#sha256={SHA_A}">x</a>'
    )
    project = parse_project_page(page(anchors), "https://pypi.example/simple/six/")
    assert [f.requires_python for f in project.files] == [">=3.9,<4", None, None]


@pytest.mark.parametrize("requires", [">=3.9,<4", 'weird "quoted" & <odd>'])
def test_requires_python_round_trip(requires: str) -> None:
    dist = Distribution("six-1.0.tar.gz", "https://h.example/six-1.0.tar.gz", {}, requires)
    html = render_project_html(Project("six", (dist,)), upstream_url)
    escaped = requires.replace("&", "&amp;").replace('"', "&quot;")
    escaped = escaped.replace("<", "&lt;").replace(">", "&gt;")
    assert f'data-requires-python="{escaped}"' in html
    assert only_file(html.encode()).requires_python == requires


def test_yanked_with_and_without_reason() -> None:
    anchors = (
        f'<a href="six-1.0.tar.gz#sha256={SHA_A}">x</a>'
        f'<a href="six-1.1.tar.gz#sha256={SHA_A}" data-yanked>x</a>'
        f'<a href="six-1.2.tar.gz#sha256={SHA_A}" data-yanked="">x</a>'
        f'<a href="six-1.3.tar.gz#sha256={SHA_A}" data-yanked="broken &amp; bad">x</a>'
    )
    project = parse_project_page(page(anchors), "https://pypi.example/simple/six/")
    assert [f.yanked for f in project.files] == [False, True, True, "broken & bad"]
    html = render_project_html(project, upstream_url)
    assert 'data-yanked=""' in html
    assert 'data-yanked="broken &amp; bad"' in html
    assert parse_project_page(html.encode(), "https://x.example/") == project


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ("", False),
        ('data-core-metadata="true"', True),
        ('data-dist-info-metadata="true"', True),
        (f'data-dist-info-metadata="sha256={SHA_A.upper()}"', f"sha256={SHA_A}"),
        (f'data-core-metadata="sha256={SHA_A}" data-dist-info-metadata="true"', f"sha256={SHA_A}"),
        (f'data-core-metadata="true" data-dist-info-metadata="sha256={SHA_A}"', True),
        ('data-core-metadata="md5=0123456789abcdef0123456789abcdef"', True),
        ('data-core-metadata=""', True),
        ('data-core-metadata="sha256=nothex"', True),
    ],
)
def test_core_metadata(attributes: str, expected: bool | str) -> None:
    html = page(f'<a href="six-1.0.tar.gz#sha256={SHA_A}" {attributes}>six-1.0.tar.gz</a>')
    assert only_file(html).core_metadata == expected


def test_core_metadata_is_rendered_under_both_names() -> None:
    dist = Distribution("six-1.0.tar.gz", "https://h.example/six-1.0.tar.gz", core_metadata=True)
    html = render_project_html(Project("six", (dist,)), upstream_url)
    assert 'data-core-metadata="true" data-dist-info-metadata="true"' in html
    hashed = Distribution(dist.filename, dist.url, core_metadata=f"sha256={SHA_B}")
    html = render_project_html(Project("six", (hashed,)), upstream_url)
    assert f'data-core-metadata="sha256={SHA_B}" data-dist-info-metadata="sha256={SHA_B}"' in html


@pytest.mark.parametrize(
    ("fragment", "hashes"),
    [
        (f"sha256={SHA_A}", {"sha256": SHA_A}),
        (f"SHA256={SHA_A.upper()}", {"sha256": SHA_A}),
        ("md5=0123456789abcdef0123456789abcdef", {"md5": "0123456789abcdef0123456789abcdef"}),
        ("sha256=abc", {}),
        (f"sha256={'g' * 64}", {}),
        (f"whirlpool={SHA_A}", {}),
        ("", {}),
    ],
)
def test_hash_fragment(fragment: str, hashes: dict[str, str]) -> None:
    dist = only_file(page(f'<a href="/f/six-1.0.tar.gz#{fragment}">six-1.0.tar.gz</a>'))
    assert dist.hashes == hashes
    assert dist.url == "https://pypi.example/f/six-1.0.tar.gz"


# --- links and filenames ---


def test_relative_links_resolve_against_the_page() -> None:
    html = page(f'<a href="../../packages/six-1.0.tar.gz#sha256={SHA_A}">six-1.0.tar.gz</a>')
    assert only_file(html).url == "https://pypi.example/packages/six-1.0.tar.gz"


def test_relative_links_honour_base_href() -> None:
    html = page(
        f'<base href="https://mirror.example/root/"><a href="six-1.0.tar.gz#sha256={SHA_A}">x</a>'
    )
    assert only_file(html).url == "https://mirror.example/root/six-1.0.tar.gz"


def test_filename_comes_from_the_url_not_the_text() -> None:
    html = page(f'<a href="/f/six-1.0%2Bcpu.tar.gz#sha256={SHA_A}">  six-2.0.tar.gz  </a>')
    dist = only_file(html)
    assert dist.filename == "six-1.0+cpu.tar.gz"
    assert dist.url == "https://pypi.example/f/six-1.0%2Bcpu.tar.gz"


def test_anchors_that_are_not_distribution_files_are_skipped() -> None:
    anchors = "".join(
        [
            f'<a href="/f/six-1.0.tar.gz#sha256={SHA_A}">six-1.0.tar.gz</a>',
            "<a>no href</a>",
            '<a href="">empty href</a>',
            '<a href="#top">top</a>',
            '<a href="mailto:someone@example.com">mail</a>',
            '<a href="ftp://files.example/six-1.0.tar.gz">ftp</a>',
            '<a href="file:///srv/six-1.0.tar.gz">local file</a>',
            '<a href="javascript:x/six-1.0.tar.gz">script</a>',
            '<a href="/f/six-1.0.tar.gz.asc">signature</a>',
            '<a href="/f/six-1.0.exe">installer</a>',
            # An archive no installer unpacks, named like an sdist.
            '<a href="/f/six-1.0.tar.7z">7z archive</a>',
            '<a href="/f/six-notaversion.tar.gz">no version</a>',
            '<a href="/f/six-1.0-py3-none-any.whl.metadata">metadata</a>',
            '<a href="/f/..%2Fsix-1.0.tar.gz">encoded slash</a>',
            '<a href="/f/six%201-1.0.tar.gz">space</a>',
            '<a href="http://[::1/six-1.0.tar.gz">broken host</a>',
            "<a href='/f/'>directory</a>",
        ]
    )
    project = parse_project_page(page(anchors), "https://pypi.example/simple/six/")
    assert [f.filename for f in project.files] == ["six-1.0.tar.gz"]


def test_every_sdist_archive_an_installer_unpacks_is_kept() -> None:
    names = ["six-1.0.tar.bz2", "six-1.0.tar.xz", "six-1.0.tgz", "six-1.0.tar", "six-1.0.tar.zst"]
    anchors = "".join(f'<a href="/f/{n}#sha256={SHA_A}">{n}</a>' for n in names)
    project = parse_project_page(page(anchors), "https://pypi.example/simple/six/")
    assert [f.filename for f in project.files] == names


# --- names ---


def test_index_deduplicates_by_normalized_name() -> None:
    anchors = "".join(
        f'<a href="/simple/{href}/">{text}</a>'
        for href, text in [
            ("my-pkg", "My.Pkg"),
            ("my-pkg", "my-pkg"),
            ("zope-interface", "Zope.Interface"),
            ("my-pkg", "MY_PKG"),
            ("zope-interface", "zope_interface"),
        ]
    )
    assert parse_index_page(page(anchors)) == Index(("My.Pkg", "Zope.Interface"))


def test_index_names_fall_back_to_the_link_and_skip_invalid_ones() -> None:
    anchors = (
        '<a href="/simple/from-link/"> </a>'
        '<a href="/simple/also-link"></a>'
        '<a href="/simple/not-taken/">not a name</a>'
        '<a href="/simple/Not%20Valid/"></a>'
        '<a href="http://[::1/simple/broken"></a>'
        "<a></a>"
    )
    assert parse_index_page(page(anchors)) == Index(("from-link", "also-link"))


def test_project_name_from_title_h1_or_hint() -> None:
    body = page("", title="Links for Zope.Interface")
    assert parse_project_page(body, PROJECT_PAGE_URL, "zope-interface").name == "Zope.Interface"
    assert parse_project_page(body, PROJECT_PAGE_URL).name == "Zope.Interface"
    h1_only = b"<html><body><h1>Links for My.Pkg</h1></body></html>"
    assert parse_project_page(h1_only, PROJECT_PAGE_URL).name == "My.Pkg"
    # A page titled for another project does not rename the one asked for.
    assert parse_project_page(body, PROJECT_PAGE_URL, "six").name == "six"
    untitled = b"<html><body></body></html>"
    assert parse_project_page(untitled, PROJECT_PAGE_URL, "my-pkg").name == "my-pkg"
    with pytest.raises(PageParseError):
        parse_project_page(untitled, PROJECT_PAGE_URL)


# --- garbage ---

GARBAGE = [
    b"",
    b"   \n",
    b'{"message":"404 Not Found"}',
    b"Internal Server Error",
    b"\x00\xff\xfe\x80garbage",
    b"\x1f\x8b\x08\x00gzip",
]


@pytest.mark.parametrize("body", GARBAGE)
def test_garbage_is_a_page_parse_error(body: bytes) -> None:
    with pytest.raises(PageParseError):
        parse_project_page(body, PROJECT_PAGE_URL, "my-pkg")
    with pytest.raises(PageParseError):
        parse_index_page(body)


def test_random_markup_parses_or_raises_page_parse_error() -> None:
    rng = random.Random(503)
    pieces = [b"<a href=", b'"', b"#sha256=", b"six-1.0.tar.gz", b"</a>", b"<", b">", b"&", b"\xff"]
    for _ in range(300):
        body = b"<" + b"".join(rng.choice(pieces) for _ in range(rng.randrange(40)))
        body += rng.randbytes(rng.randrange(20))
        # Each parser either gives a model or says the page is not one; nothing else escapes.
        with contextlib.suppress(PageParseError):
            parse_project_page(body, PROJECT_PAGE_URL)
        with contextlib.suppress(PageParseError):
            parse_project_page(body, PROJECT_PAGE_URL, "six")
        with contextlib.suppress(PageParseError):
            parse_index_page(body)


# --- rendering ---


def test_rendered_project_page_shape() -> None:
    project = my_pkg(f"{GITLAB}/projects/42/packages/pypi/files")
    html = render_project_html(project, lambda dist: f"../../files/{dist.filename}")
    assert html.startswith("<!DOCTYPE html>\n")
    assert '<meta name="pypi:repository-version" content="1.0">' in html
    assert "<title>Links for My.Pkg</title>" in html
    assert "<h1>Links for My.Pkg</h1>" in html
    anchors = [line.strip() for line in html.splitlines() if "<a " in line]
    assert len(anchors) == len(project.files)
    assert all(re.fullmatch(r"<a [^<>]*>[^<>]*</a><br>", anchor) for anchor in anchors)
    sha, filename, _ = MY_PKG_FILES[0]
    assert f'href="../../files/{filename}#sha256={sha}"' in anchors[0]


def test_rendering_escapes_everything_upstream_sent() -> None:
    hostile = '"><script>alert(1)</script>'
    dist = Distribution(
        filename=f"six-1.0.tar.gz{hostile}",
        url=f"https://h.example/{hostile}",
        hashes={"sha256": SHA_A},
        requires_python=hostile,
        yanked=hostile,
        core_metadata=hostile,
    )
    html = render_project_html(Project(f"six{hostile}", (dist,)), upstream_url)
    assert "<script>" not in html
    doc = lxml.html.document_fromstring(html)
    (anchor,) = doc.iter("a")
    assert anchor.get("href") == f"https://h.example/{hostile}#sha256={SHA_A}"
    assert anchor.get("data-requires-python") == hostile
    assert anchor.get("data-yanked") == hostile
    assert anchor.get("data-core-metadata") == hostile
    assert anchor.text == dist.filename
    assert doc.findtext(".//title") == f"Links for six{hostile}"


def test_render_parse_round_trip() -> None:
    files = (
        Distribution("six-1.0.tar.gz", "https://h.example/f/six-1.0.tar.gz", {"sha256": SHA_A}),
        Distribution(
            "six-2.0-py3-none-any.whl",
            "https://h.example/f/six-2.0-py3-none-any.whl",
            {"sha256": SHA_B},
            requires_python='>=3.9,<4,!="3.10"&',
            yanked="use 2.1 & later",
            core_metadata=f"sha256={SHA_A}",
        ),
        Distribution(
            "six-2.1.zip", "https://h.example/f/six-2.1.zip", yanked=True, core_metadata=True
        ),
    )
    project = Project("Six", files)
    html = render_project_html(project, upstream_url)
    assert parse_project_page(html.encode(), "https://other.example/simple/six/") == project


def test_render_index() -> None:
    index = Index(("My.Pkg", "other_tool", "Zope.Interface"))
    html = render_index_html(index, lambda name: f"{name}/")
    assert '<a href="my-pkg/">My.Pkg</a><br>' in html
    assert '<a href="zope-interface/">Zope.Interface</a><br>' in html
    assert html.count("<a ") == 3
    assert parse_index_page(html.encode()) == index
