"""The simple-repository model (`Project`, `Distribution`, `Index`) and PEP 503 name rules."""

from __future__ import annotations

import datetime
import functools
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

# PEP 508 names: ASCII letters, digits, and . _ - inside; the limit keeps paths and keys sane.
_NAME_RE = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
MAX_NAME_LENGTH = 200
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# Characters of PEP 427/625 filenames and PEP 440 versions; a slash, space or control character
# cannot be part of a real distribution and would be unsafe in the paths we build from it.
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]*$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
# Sdist archives a current installer unpacks (pip's unpacking.py; uv adds .tar.zst). GitLab
# accepts any filename, so all of them are on its pages; packaging parses only .tar.gz/.zip.
SDIST_SUFFIXES = (
    ".tar.gz",
    ".zip",
    ".tgz",
    ".tar",
    ".tar.bz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tlz",
    ".tar.lz",
    ".tar.lzma",
    ".tar.zst",
)
# Hex digest lengths of the fixed-size hashlib.algorithms_guaranteed, the names PEP 503 allows.
_HASH_HEX_LENGTHS = {
    "md5": 32,
    "sha1": 40,
    "sha224": 56,
    "sha256": 64,
    "sha384": 96,
    "sha512": 128,
    "sha3_224": 56,
    "sha3_256": 64,
    "sha3_384": 96,
    "sha3_512": 128,
    "blake2s": 64,
    "blake2b": 128,
}


class PageParseError(ValueError):
    """The upstream body is not a simple-repository page (HTML or JSON); the message says why."""


def is_valid_name(name: str) -> bool:
    """True when `name` is a PEP 508 project name of sane length."""
    return len(name) <= MAX_NAME_LENGTH and _NAME_RE.match(name) is not None


def normalize(name: str) -> NormalizedName:
    """PEP 503 normalized form of a project name."""
    return canonicalize_name(name)


def is_sha256(value: str) -> bool:
    """True for 64 lowercase hex digits."""
    return _SHA256_RE.match(value) is not None


# Every file request checks its filename: pip asks for the same few names over and over.
@functools.lru_cache(maxsize=4096)
def version_of(filename: str) -> Version | None:
    """The version a wheel or sdist filename carries, or None when the name is not one."""
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        suffix = next((s for s in SDIST_SUFFIXES if filename.endswith(s)), None)
        if suffix is None:
            return None
        # The name-version rules are the same whatever the archive: parse it as a .tar.gz.
        return parse_sdist_filename(filename.removesuffix(suffix) + ".tar.gz")[1]
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


def project_of(filename: str) -> NormalizedName | None:
    """The normalized project name a wheel or sdist filename carries, or None if not one."""
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[0]
        suffix = next((s for s in SDIST_SUFFIXES if filename.endswith(s)), None)
        if suffix is None:
            return None
        # As in version_of: every archive GitLab accepts names its project the same way.
        return parse_sdist_filename(filename.removesuffix(suffix) + ".tar.gz")[0]
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


def is_distribution_filename(filename: str) -> bool:
    """True for a wheel or sdist filename made only of characters such names use."""
    return _FILENAME_RE.match(filename) is not None and version_of(filename) is not None


def is_file_url(url: str) -> bool:
    """True for an absolute http(s) URL without a fragment: one the proxy can fetch a file from."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment


def pep700_time(raw: object) -> str | None:
    """An ISO 8601 time with a zone (GitLab's `2026-11-30T10:00:00.000Z`, PyPI's, an offset) as
    PEP 700 text in UTC, `2026-11-30T10:00:00.000000Z`, the one form stored and rendered; None
    if it is not one."""
    if not isinstance(raw, str):
        return None
    try:
        moment = datetime.datetime.fromisoformat(raw)
        if moment.tzinfo is None:
            return None
        utc = moment.astimezone(datetime.UTC)
    except (ValueError, OverflowError):
        return None
    # Not strftime: its %Y does not pad years before 1000 to four digits.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def is_hash(algo: str, value: str) -> bool:
    """True when `value` is a lowercase hex digest of the right length for `algo`."""
    length = _HASH_HEX_LENGTHS.get(algo)
    return length == len(value) and _HEX_RE.match(value) is not None


@dataclass(frozen=True, slots=True)
class Distribution:
    """One file of a project as a simple page lists it."""

    filename: str
    # Where upstream serves the file, absolute, without the #fragment.
    url: str
    hashes: dict[str, str] = field(default_factory=dict)
    requires_python: str | None = None
    # False: not yanked; True: yanked with no reason; str: yanked with that reason (PEP 592).
    yanked: bool | str = False
    # PEP 658/714. False: not advertised; True: available, hash unknown; or "sha256=<hex>".
    core_metadata: bool | str = False
    size: int | None = None
    upload_time: str | None = None
    # From the public index (a forwarded or Dependency Firewall page), not hosted in GitLab:
    # policy.min_age applies to it rather than min_age_internal.
    public: bool = False

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


@dataclass(frozen=True, slots=True)
class Project:
    """A package page: the project name and its files, in upstream order."""

    name: str
    files: tuple[Distribution, ...]
    # Parsing every filename costs 0.17 s on a 20,000-file page: done once, on first use.
    _versions: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)
    # The files by (sha256, filename), built on first use: the files route asks of every file.
    _by_file: dict[tuple[str | None, str], Distribution] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def versions(self) -> tuple[str, ...]:
        """Distinct versions of the files, sorted (PEP 700)."""
        versions = self._versions
        if versions is None:
            found = {v for f in self.files if (v := version_of(f.filename)) is not None}
            versions = tuple(str(v) for v in sorted(found))
            object.__setattr__(self, "_versions", versions)
        return versions

    def find(self, sha256: str, filename: str) -> Distribution | None:
        """The file with this sha256 and filename, if the page lists it."""
        by_file = self._by_file
        if by_file is None:
            # setdefault: the first listing of a filename twice wins, as in a resolver.
            by_file = {}
            for f in self.files:
                by_file.setdefault((f.sha256, f.filename), f)
            object.__setattr__(self, "_by_file", by_file)
        return by_file.get((sha256, filename))

    def with_files(self, files: tuple[Distribution, ...]) -> Project:
        """The project with other details on the same files, keeping the parsed versions."""
        if [f.filename for f in files] != [f.filename for f in self.files]:
            raise ValueError("with_files changes details, never which files there are")
        project = Project(self.name, files)
        object.__setattr__(project, "_versions", self.versions)
        return project


@dataclass(frozen=True, slots=True)
class Index:
    """An index page: each project once, by its first-seen display name."""

    projects: tuple[str, ...]
