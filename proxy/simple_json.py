"""Render the model as PEP 691/700 JSON, and (de)serialize it losslessly for storage and bundles."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from .simple import (
    Distribution,
    Index,
    Project,
    is_distribution_filename,
    is_file_url,
    is_hash,
    is_sha256,
    is_valid_name,
    normalize,
)

# Version of the stored model below; bump it when the shape changes.
MODEL_VERSION = 1
_DIST_KEYS = frozenset(
    {
        "filename",
        "url",
        "hashes",
        "requires_python",
        "yanked",
        "core_metadata",
        "size",
        "upload_time",
    }
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


def project_to_dict(project: Project) -> Json:
    """The project model, upstream URLs included, as JSON-ready data."""
    return {
        "v": MODEL_VERSION,
        "name": project.name,
        "files": [_dist_to_dict(dist) for dist in project.files],
    }


def project_from_dict(data: object) -> Project:
    """The project `project_to_dict` made; ValueError on anything else, as bundles are untrusted."""
    fields = _model_fields(data, {"v", "name", "files"})
    files = fields["files"]
    if not isinstance(files, list):
        raise ValueError("files must be a list")
    return Project(_name(fields["name"]), tuple(_dist_from_dict(item) for item in files))


def index_to_dict(index: Index) -> Json:
    """The index model as JSON-ready data."""
    return {"v": MODEL_VERSION, "projects": list(index.projects)}


def index_from_dict(data: object) -> Index:
    """The index `index_to_dict` made; ValueError on anything else."""
    projects = _model_fields(data, {"v", "projects"})["projects"]
    if not isinstance(projects, list):
        raise ValueError("projects must be a list")
    names = tuple(_name(name) for name in projects)
    if len({normalize(name) for name in names}) != len(names):
        raise ValueError("a project is listed twice")
    return Index(names)


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


def _dist_to_dict(dist: Distribution) -> Json:
    return {
        "filename": dist.filename,
        "url": dist.url,
        "hashes": dict(dist.hashes),
        "requires_python": dist.requires_python,
        "yanked": dist.yanked,
        "core_metadata": dist.core_metadata,
        "size": dist.size,
        "upload_time": dist.upload_time,
    }


def _dist_from_dict(data: object) -> Distribution:
    if not isinstance(data, dict) or set(data) != _DIST_KEYS:
        raise ValueError("a file entry must have exactly the keys " + ", ".join(sorted(_DIST_KEYS)))
    return Distribution(
        filename=_filename(data["filename"]),
        url=_url(data["url"]),
        hashes=_hashes(data["hashes"]),
        requires_python=_optional_str(data["requires_python"], "requires_python"),
        yanked=_flag_or_str(data["yanked"], "yanked"),
        core_metadata=_core_metadata(data["core_metadata"]),
        size=_size(data["size"]),
        upload_time=_optional_str(data["upload_time"], "upload_time"),
    )


def _model_fields(data: object, keys: set[str]) -> Mapping[str, object]:
    if not isinstance(data, dict) or set(data) != keys:
        raise ValueError("a stored model must have exactly the keys " + ", ".join(sorted(keys)))
    version = data["v"]
    if type(version) is not int or version != MODEL_VERSION:
        raise ValueError(f"unsupported model version {version!r}")
    return data


def _name(value: object) -> str:
    if not isinstance(value, str) or not is_valid_name(value):
        raise ValueError(f"invalid project name {value!r}")
    return value


def _filename(value: object) -> str:
    # The same rule the HTML parser applies, so a bundle cannot smuggle in a path.
    if not isinstance(value, str) or not is_distribution_filename(value):
        raise ValueError(f"invalid distribution filename {value!r}")
    return value


def _url(value: object) -> str:
    if not isinstance(value, str) or not is_file_url(value):
        raise ValueError(f"url must be absolute http(s) without a fragment: {value!r}")
    return value


def _hashes(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("hashes must be an object")
    for algo, digest in value.items():
        if not isinstance(algo, str) or not isinstance(digest, str) or not is_hash(algo, digest):
            raise ValueError(f"invalid hash {algo!r}")
    return dict(value)


def _optional_str(value: object, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string or null")
    return value


def _flag_or_str(value: object, key: str) -> bool | str:
    if not isinstance(value, bool | str):
        raise ValueError(f"{key} must be a boolean or a string")
    return value


def _core_metadata(value: object) -> bool | str:
    value = _flag_or_str(value, "core_metadata")
    if isinstance(value, str) and not (
        value.startswith("sha256=") and is_sha256(value.removeprefix("sha256="))
    ):
        raise ValueError(f"core_metadata must be a boolean or 'sha256=<hex>': {value!r}")
    return value


def _size(value: object) -> int | None:
    # bool is an int to Python, but not a size.
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError("size must be a non-negative integer or null")
    return value
