"""Parse upstream PEP 691/700 JSON pages into the model, and render the model as such JSON (the
stored form is codec.py's)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from urllib.parse import urldefrag, urljoin

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
    pep700_time,
)

Json = dict[str, object]
# A file from the public index, as a proxy of this project tells the one in front of it, so
# that one's policy (min_age, protected) sees it as public too. PEP 691 leaves keys starting
# with "_" to each server; a claim of "public" only ever subjects a file to more rules.
PUBLIC_KEY = "_public-index"
# What an upstream answers a PEP 691 JSON page with; `latest` is whatever it serves newest.
JSON_PAGE_TYPES = ("application/vnd.pypi.simple.v1+json", "application/vnd.pypi.simple.latest+json")
# From this many files (or names) on, JSON text is made by the encoder that shares the GIL.
SHARE_GIL_FROM = 500
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def render_project_json(project: Project, file_url: Callable[[Distribution], str]) -> bytes:
    """A PEP 691 project page, with the PEP 700 fields upstream gave us."""
    # PEP 700 makes `size` mandatory from 1.1 on, and a size is never guessed, so one file
    # without it keeps the whole page at 1.0 (`versions` is harmless extra there).
    all_sized = all(dist.size is not None for dist in project.files)
    page = {
        "meta": {"api-version": "1.1" if all_sized else "1.0"},
        "name": normalize(project.name),
        "files": [_file_json(dist, file_url(dist)) for dist in project.files],
        "versions": list(project.versions),
    }
    return _dumps(page, len(project.files))


def render_index_json(index: Index) -> bytes:
    """A PEP 691 index: names only, since clients build project URLs from the names."""
    page = {
        "meta": {"api-version": "1.0"},
        "projects": [{"name": name} for name in index.projects],
    }
    return _dumps(page, len(index.projects))


def dumps(data: object, entries: int, encoder: json.JSONEncoder | None = None) -> str:
    """JSON text of `data`, a page of `entries` files or names.

    A big one is written by the pure-Python encoder, in a thread: the C one holds the GIL
    throughout (0.3 s for 100,000 files), the Python one lets the event loop in every 5 ms.
    """
    encoder = encoder or json.JSONEncoder()
    if entries < SHARE_GIL_FROM:
        return encoder.encode(data)
    return "".join(encoder.iterencode(data))


def _dumps(page: Mapping[str, object], entries: int) -> bytes:
    return dumps(page, entries, _COMPACT).encode()


def _file_json(dist: Distribution, url: str) -> Json:
    entry: Json = {"filename": dist.filename, "url": url, "hashes": dict(dist.hashes)}
    if dist.requires_python is not None:
        entry["requires-python"] = dist.requires_python
    # PEP 691: a non-empty string is a yank reason; an empty one would read as "not yanked".
    entry["yanked"] = dist.yanked if dist.yanked != "" else True
    if dist.core_metadata is not False:
        metadata = _metadata_json(dist.core_metadata)
        # Both keys: PEP 714's for current clients, PEP 658's for older pip.
        entry["core-metadata"] = metadata
        entry["dist-info-metadata"] = metadata
    if dist.size is not None:
        entry["size"] = dist.size
    if dist.upload_time is not None:
        entry["upload-time"] = dist.upload_time
    if dist.public:
        entry[PUBLIC_KEY] = True
    return entry


def _metadata_json(value: bool | str) -> bool | dict[str, str]:
    if isinstance(value, str):
        algo, _, digest = value.partition("=")
        if is_hash(algo, digest):
            return {algo: digest}
    return True


def is_json_page(content_type: str) -> bool:
    """Whether an upstream's Content-Type says its page is PEP 691 JSON."""
    return content_type.partition(";")[0].strip().lower() in JSON_PAGE_TYPES


def parse_project_json(body: bytes, base_url: str, name_hint: str | None = None) -> Project:
    """The project a PEP 691 JSON page lists; `base_url` is where it was fetched from.

    The page is untrusted: it must be a version 1 page, or PageParseError says what it is not.
    A file entry the proxy could not serve safely (its filename, URL or a field malformed) is
    left out, as a bad anchor is on an HTML page; a hash of an unknown algorithm is dropped.
    """
    page = _page(body, "files")
    files_json = page["files"]
    if not isinstance(files_json, list):
        raise PageParseError("a JSON project page's files must be a list")
    files: dict[str, Distribution] = {}
    for entry in files_json:
        dist = _distribution(entry, base_url)
        if dist is not None:
            files.setdefault(dist.filename, dist)
    return Project(_project_name(page.get("name"), name_hint), tuple(files.values()))


def parse_index_json(body: bytes) -> Index:
    """The projects a PEP 691 JSON index lists, each once under its first-seen name."""
    projects = _page(body, "projects")["projects"]
    if not isinstance(projects, list):
        raise PageParseError("a JSON index page's projects must be a list")
    seen: dict[str, str] = {}
    for entry in projects:
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and is_valid_name(name):
            seen.setdefault(normalize(name), name)
    return Index(tuple(seen.values()))


def _page(body: bytes, key: str) -> Mapping[str, object]:
    try:
        page = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise PageParseError(f"not JSON: {e}") from e
    if not isinstance(page, dict) or key not in page:
        raise PageParseError(f"a JSON page without {key!r}")
    meta = page.get("meta")
    version = meta.get("api-version") if isinstance(meta, dict) else None
    # PEP 691: a client must not read a major version it does not know.
    if not isinstance(version, str) or version.partition(".")[0] != "1":
        raise PageParseError(f"not a version 1 JSON page (api-version {version!r})")
    return page


def _project_name(name: object, name_hint: str | None) -> str:
    # As on HTML pages: the page's name only for the project asked for.
    if (
        isinstance(name, str)
        and is_valid_name(name)
        and (name_hint is None or normalize(name) == normalize(name_hint))
    ):
        return name
    if name_hint is not None and is_valid_name(name_hint):
        return name_hint
    raise PageParseError("the page does not name its project")


class _BadEntry(ValueError):
    """One file entry the proxy leaves out."""


def _distribution(entry: object, base_url: str) -> Distribution | None:
    if not isinstance(entry, dict):
        return None
    filename, href = entry.get("filename"), entry.get("url")
    if not isinstance(filename, str) or not is_distribution_filename(filename):
        return None
    if not isinstance(href, str):
        return None
    try:
        # PEP 691 URLs may be relative to the page; hashes are in `hashes`, not the fragment.
        url = urldefrag(urljoin(base_url, href.strip()))[0]
        if not is_file_url(url):
            return None
        return Distribution(
            filename=filename,
            url=url,
            hashes=_hashes(entry.get("hashes", {})),
            requires_python=_requires_python(entry.get("requires-python")),
            yanked=_yanked(entry.get("yanked", False)),
            core_metadata=_core_metadata(entry),
            size=_size(entry.get("size")),
            upload_time=_upload_time(entry.get("upload-time")),
            public=_public(entry.get(PUBLIC_KEY, False)),
        )
    except ValueError:
        # A malformed URL or field: one bad entry, not a bad page.
        return None


def _hashes(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _BadEntry("hashes must be an object")
    hashes = {}
    for algo, digest in value.items():
        if not isinstance(digest, str):
            raise _BadEntry("a hash must be a string")
        algo, digest = algo.lower(), digest.lower()
        if is_hash(algo, digest):
            hashes[algo] = digest
    return hashes


def _requires_python(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _BadEntry("requires-python must be a string")
    return (value or "").strip() or None


def _yanked(value: object) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        # A reason; an empty one still means yanked, as data-yanked="" does in HTML.
        return value.strip() or True
    raise _BadEntry("yanked must be a boolean or a string")


def _core_metadata(entry: Mapping[str, object]) -> bool | str:
    # PEP 714's key, else PEP 658's, which older indexes send alone.
    value = entry.get("core-metadata", entry.get("dist-info-metadata", False))
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise _BadEntry("core-metadata must be a boolean or an object of hashes")
    digest = value.get("sha256")
    if isinstance(digest, str) and is_hash("sha256", digest.lower()):
        return f"sha256={digest.lower()}"
    # Available, with no hash the proxy keeps: as pip reads it.
    return True


def _size(value: object) -> int | None:
    # bool is an int to Python, but not a size.
    if value is not None and (type(value) is not int or value < 0):
        raise _BadEntry("size must be a non-negative integer")
    return value


def _public(value: object) -> bool:
    if not isinstance(value, bool):
        raise _BadEntry(f"{PUBLIC_KEY} must be a boolean")
    return value


def _upload_time(value: object) -> str | None:
    """PEP 700's upload time, in UTC, in the one form the proxy stores and renders."""
    if value is None:
        return None
    upload_time = pep700_time(value)
    if upload_time is None:
        raise _BadEntry(f"upload-time is not an ISO 8601 time with a zone: {value!r}")
    return upload_time
