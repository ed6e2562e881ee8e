"""Parse upstream PEP 503 HTML pages into the model, and render the model as PEP 503 HTML."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import lxml.html
from lxml import etree

from .simple import (
    Distribution,
    Index,
    PageParseError,
    Project,
    is_distribution_filename,
    is_file_url,
    is_hash,
    is_valid_name,
    normalize,
)

_TITLE_PREFIX = "links for "


def parse_project_page(body: bytes, base_url: str, name_hint: str | None = None) -> Project:
    """The project a package page lists; `base_url` is where it was fetched from.

    `name_hint` (the name asked for) names the project when the page does not, or names another.
    """
    doc = _document(body)
    base = _base_url(doc, base_url)
    # GitLab keeps `My_Pkg` and `my-pkg` as two records, so one page can list a filename
    # twice; a client must see it once (the first, as pip would pick it).
    files: dict[str, Distribution] = {}
    for a in doc.iter("a"):
        dist = _distribution(a, base)
        if dist is not None:
            files.setdefault(dist.filename, dist)
    return Project(_project_name(doc, name_hint), tuple(files.values()))


def parse_index_page(body: bytes) -> Index:
    """The projects an index page lists, each once under its first-seen name, in page order."""
    doc = _document(body)
    seen: dict[str, str] = {}
    for a in doc.iter("a"):
        name = _index_name(a)
        if name is not None:
            seen.setdefault(normalize(name), name)
    return Index(tuple(seen.values()))


def render_project_html(project: Project, file_url: Callable[[Distribution], str]) -> str:
    """A PEP 503 package page whose links are `file_url(dist)` plus the sha256 fragment."""
    lines = [_anchor(dist, file_url(dist)) for dist in project.files]
    return _page(f"Links for {project.name}", lines)


def render_index_html(index: Index, project_url: Callable[[str], str]) -> str:
    """A PEP 503 index page linking `project_url(normalized name)` for each project."""
    lines = [
        f'<a href="{escape(project_url(normalize(name)))}">{escape(name)}</a><br>'
        for name in index.projects
    ]
    return _page("Simple index", lines)


def _document(body: bytes) -> etree._Element:
    # lxml recovers almost anything into a document, so an error body (JSON, plain text) would
    # look like an empty page; markup must at least begin like markup.
    if not body.lstrip(b"\xef\xbb\xbf \t\r\n\f").startswith(b"<"):
        raise PageParseError("not an HTML page")
    # Simple pages are UTF-8 (PEP 503 pages from GitLab and the public index say so in the
    # header, which the parser never sees); guessing from the bytes would mangle names.
    parser = lxml.html.HTMLParser(encoding="utf-8")
    try:
        return lxml.html.document_fromstring(body, parser=parser)
    except (etree.LxmlError, ValueError) as e:
        raise PageParseError(f"unparsable HTML: {e}") from e


def _text(element: etree._Element) -> str:
    # The HTML parser yields str only; the stubs also allow bytes, for XML parsed as bytes.
    return "".join(part for part in element.itertext() if isinstance(part, str))


def _base_url(doc: etree._Element, page_url: str) -> str:
    # pip honours <base href>, so links relative to it must resolve the same way here.
    for base in doc.iter("base"):
        href = base.get("href")
        if href:
            try:
                return urljoin(page_url, href.strip())
            except ValueError:
                break
    return page_url


def _project_name(doc: etree._Element, name_hint: str | None) -> str:
    for tag in ("title", "h1"):
        for element in doc.iter(tag):
            name = _titled_name(_text(element))
            # The page's own spelling is the display name, but only for the project asked for:
            # a forwarded or odd page must not rename it.
            if name is not None and (name_hint is None or normalize(name) == normalize(name_hint)):
                return name
    if name_hint is not None and is_valid_name(name_hint):
        return name_hint
    raise PageParseError("the page does not name its project")


def _titled_name(text: str) -> str | None:
    text = " ".join(text.split())
    if not text.lower().startswith(_TITLE_PREFIX):
        return None
    name = text[len(_TITLE_PREFIX) :]
    return name if is_valid_name(name) else None


def _distribution(a: etree._Element, base_url: str) -> Distribution | None:
    href = a.get("href")
    if not href:
        return None
    try:
        url, fragment = urldefrag(urljoin(base_url, href.strip()))
    except ValueError:
        # A malformed link (e.g. a broken IPv6 host) is one bad anchor, not a bad page.
        return None
    if not is_file_url(url):
        return None
    # The URL is what gets downloaded, so its last segment is what the file is (pip agrees).
    filename = unquote(urlsplit(url).path.rpartition("/")[2])
    if not is_distribution_filename(filename):
        return None
    return Distribution(
        filename=filename,
        url=url,
        hashes=_hashes(fragment),
        requires_python=(a.get("data-requires-python") or "").strip() or None,
        yanked=_yanked(a.get("data-yanked")),
        core_metadata=_core_metadata(a),
    )


def _hashes(fragment: str) -> dict[str, str]:
    algo, _, value = fragment.partition("=")
    algo, value = algo.lower(), value.lower()
    return {algo: value} if is_hash(algo, value) else {}


def _yanked(value: str | None) -> bool | str:
    if value is None:
        return False
    return value.strip() or True


def _core_metadata(a: etree._Element) -> bool | str:
    value = a.get("data-core-metadata")
    if value is None:
        # PEP 714 renamed the attribute; older indexes only send the PEP 658 one.
        value = a.get("data-dist-info-metadata")
    if value is None:
        return False
    hashes = _hashes(value.strip())
    if "sha256" in hashes:
        return f"sha256={hashes['sha256']}"
    # "true", or a hash we do not keep: the metadata file exists either way (as pip reads it).
    return True


def _index_name(a: etree._Element) -> str | None:
    name = _text(a).strip()
    href = a.get("href")
    if not name and href:
        try:
            name = unquote(urlsplit(href.strip()).path.rstrip("/").rpartition("/")[2])
        except ValueError:
            return None
    return name if is_valid_name(name) else None


def _anchor(dist: Distribution, url: str) -> str:
    href = url if dist.sha256 is None else f"{url}#sha256={dist.sha256}"
    attributes = [("href", href)]
    if dist.requires_python is not None:
        attributes.append(("data-requires-python", dist.requires_python))
    if dist.yanked is not False:
        attributes.append(("data-yanked", "" if dist.yanked is True else dist.yanked))
    if dist.core_metadata is not False:
        value = "true" if dist.core_metadata is True else dist.core_metadata
        # Both names: PEP 714's for current clients, PEP 658's for pip before 23.3.
        attributes.append(("data-core-metadata", value))
        attributes.append(("data-dist-info-metadata", value))
    rendered = " ".join(f'{key}="{escape(value)}"' for key, value in attributes)
    return f"<a {rendered}>{escape(dist.filename)}</a><br>"


def _page(title: str, lines: list[str]) -> str:
    body = "\n".join(f"    {line}" for line in lines)
    return (
        "<!DOCTYPE html>\n"
        "<html>\n"
        "  <head>\n"
        '    <meta name="pypi:repository-version" content="1.0">\n'
        f"    <title>{escape(title)}</title>\n"
        "  </head>\n"
        "  <body>\n"
        f"    <h1>{escape(title)}</h1>\n"
        f"{body}\n"
        "  </body>\n"
        "</html>\n"
    )
