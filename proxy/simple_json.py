"""Render the model as PEP 691/700 JSON (the stored form is codec.py's)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from .simple import (
    Distribution,
    Index,
    Project,
    is_hash,
    normalize,
)

Json = dict[str, object]
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
    return entry


def _metadata_json(value: bool | str) -> bool | dict[str, str]:
    if isinstance(value, str):
        algo, _, digest = value.partition("=")
        if is_hash(algo, digest):
            return {algo: digest}
    return True
