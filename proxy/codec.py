"""The stored form of page models (SQLite and bundles): written at one version, read at every one.

Version 1 is the only version ever written (from the first release, 651ef3e, through a40a93d
to today): `{"kind": "project"|"index", "model": {"v": 1, ...}}`. Adding a field needs no new
version: readers ignore keys they do not know and give a missing key its model default, so an
older page reads in a newer release and a newer page in an older one. Only a change an older
reader would misread (a key renamed, a meaning changed) bumps PAGE_VERSION; its reader then
turns the version before into the new one, step by step, so every earlier version still reads.
"""

from __future__ import annotations

from collections.abc import Mapping

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

PAGE_VERSION = 1

Json = dict[str, object]
Model = Project | Index
# Fields a file entry cannot do without; every other one has a default in Distribution.
_REQUIRED_DIST_KEYS = ("filename", "url")
_DEFAULT = Distribution(filename="", url="")


def encode_page(model: Model) -> Json:
    """The JSON-ready form of a page model, as SQLite and bundles hold it."""
    if isinstance(model, Project):
        return {"kind": "project", "model": project_to_dict(model)}
    return {"kind": "index", "model": index_to_dict(model)}


def decode_page(data: object) -> Model:
    """A stored page model from untrusted data (SQLite, a bundle); ValueError if not one."""
    if not isinstance(data, dict) or data.get("kind") not in ("project", "index"):
        raise ValueError("not a stored page model")
    if data["kind"] == "project":
        return project_from_dict(data.get("model"))
    return index_from_dict(data.get("model"))


def project_to_dict(project: Project) -> Json:
    """The project model, upstream URLs included, as JSON-ready data."""
    return {
        "v": PAGE_VERSION,
        "name": project.name,
        "files": [_dist_to_dict(dist) for dist in project.files],
    }


def project_from_dict(data: object) -> Project:
    """A stored project of any version; ValueError on anything else, as bundles are untrusted."""
    fields = _model_fields(data, ("name", "files"))
    files = fields["files"]
    if not isinstance(files, list):
        raise ValueError("files must be a list")
    return Project(_name(fields["name"]), tuple(_dist_from_dict(item) for item in files))


def index_to_dict(index: Index) -> Json:
    """The index model as JSON-ready data."""
    return {"v": PAGE_VERSION, "projects": list(index.projects)}


def index_from_dict(data: object) -> Index:
    """A stored index of any version; ValueError on anything else."""
    projects = _model_fields(data, ("projects",))["projects"]
    if not isinstance(projects, list):
        raise ValueError("projects must be a list")
    names = tuple(_name(name) for name in projects)
    if len({normalize(name) for name in names}) != len(names):
        raise ValueError("a project is listed twice")
    return Index(names)


def _dist_to_dict(dist: Distribution) -> Json:
    entry: Json = {
        "filename": dist.filename,
        "url": dist.url,
        "hashes": dict(dist.hashes),
        "requires_python": dist.requires_python,
        "yanked": dist.yanked,
        "core_metadata": dist.core_metadata,
        "size": dist.size,
        "upload_time": dist.upload_time,
    }
    # Only when set: most pages are GitLab's own, and big ones would grow by it per file.
    if dist.public:
        entry["public"] = True
    return entry


def _dist_from_dict(data: object) -> Distribution:
    if not isinstance(data, dict) or any(key not in data for key in _REQUIRED_DIST_KEYS):
        raise ValueError("a file entry must be an object with a filename and a url")
    return Distribution(
        filename=_filename(data["filename"]),
        url=_url(data["url"]),
        hashes=_hashes(data.get("hashes", _DEFAULT.hashes)),
        requires_python=_optional_str(
            data.get("requires_python", _DEFAULT.requires_python), "requires_python"
        ),
        yanked=_flag_or_str(data.get("yanked", _DEFAULT.yanked), "yanked"),
        core_metadata=_core_metadata(data.get("core_metadata", _DEFAULT.core_metadata)),
        size=_size(data.get("size", _DEFAULT.size)),
        upload_time=_optional_str(data.get("upload_time", _DEFAULT.upload_time), "upload_time"),
        public=_flag(data.get("public", _DEFAULT.public), "public"),
    )


def _model_fields(data: object, required: tuple[str, ...]) -> Mapping[str, object]:
    if not isinstance(data, dict) or any(key not in data for key in ("v", *required)):
        raise ValueError("a stored model must have the keys v, " + ", ".join(required))
    version = data["v"]
    # A later version is one an older reader would misread (see the module docstring).
    if type(version) is not int or not 1 <= version <= PAGE_VERSION:
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


def _flag(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be a boolean")
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
